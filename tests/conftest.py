"""Shared test helpers.

* The GPU marker skips cleanly without CuPy or a CUDA device.
* Two tiers.  ``make test`` runs ``-m "not slow"``: every module, in 2.5 min on 2 cores
  busy with other work (load 5).  ``make test-all`` (.ci/run) runs everything, under every Python
  found, and rehearses the GPU machine.  The slow tier is :data:`SLOW`, marked here by
  node id rather than in the test files: the MPI fault suite, and the tests that train
  a run end to end, launch ``mpiexec`` or a script, or build the deep models, each
  taking over about a second on an idle core.
* ``--check-modules`` (on in ``make test``): every module of mixnorm/, experiments/ and
  scripts/ must have a function run by a test of the fast tier, in this process or, for
  the modules of :data:`RUN_IN_CHILDREN`, in the child processes of the fast test named
  there (its import is not enough: a module imported at collection for a slow test does
  not count).  A run of the whole fast tier (or of both tiers) fails, naming the modules
  that no fast test ran.  It needs Python 3.12+ (sys.monitoring, no slowdown); under
  3.10 and 3.11 it says that it did not check, and CI checks under 3.12 and 3.13.
"""
import mixnorm._compat  # noqa: F401  (NumPy-2 shim before any chainer import)

import ast
import inspect
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('mixnorm', 'experiments', 'scripts')

#: The slow tier: node ids, or files (every test in them), or a test's name (all of its
#: parameters).  Seconds: measured on 2 loaded cores (load 6-11), about 4 times an idle
#: machine's.  Where a module's main tests are here, the fast tests that still run it
#: are named in brackets.
SLOW = [
    # The MPI fault suite: kill -9, Ctrl-C, damaged snapshots, full disks under mpiexec
    # (138 s in all).  [experiments/parallel.py, experiments/cli.py under two processes:
    # test_parallel.py's one-process tests; tests/test_distributed.py's equivalences]
    'tests/test_faults.py',
    # A bad input on one rank of mpiexec, every kind, with and without the crash hook
    # (19 launches, 1.2-2.9 s each, 33 s).  [mixnorm/distributed.py: the rest of
    # test_distributed.py, its equivalences under mpiexec -n 2 and -n 3]
    'tests/test_distributed.py::test_a_bad_input_on_one_rank_raises_the_same_error_on_every_rank',
    'tests/test_distributed.py::test_a_bad_input_on_one_rank_ends_the_job_through_the_crash_hook',
    # Training runs beyond the shared BN-2/MN-2 pair (which stays fast: records, compare,
    # reproduce).  [experiments/train.py: test_records_are_complete and the tests on
    # bn_mn_runs, test_no_nan_accuracy_before_the_first_evaluation]
    'tests/test_train.py::test_a_bn_model_converted_mid_run_trains_on_as_mn_and_resumes',  # 68.5
    'tests/test_train.py::test_resume_continues_bit_for_bit',                   # 21.0 + 15.6
    'tests/test_train.py::test_rerunning_an_interrupted_run_resumes_it',        # 22.4
    'tests/test_train.py::test_save_mixtures_for_figure8',                      # 20.9
    'tests/test_train.py::test_force_starts_over_with_the_new_config',          # 19.5
    'tests/test_train.py::test_a_truncated_snapshot_falls_back_to_the_previous_one',  # 18.3
    'tests/test_train.py::test_piped_progress_has_no_escape_codes',             # 12.2
    'tests/test_train.py::test_train_accepts_synthetic_as_the_readme_says',     # 11.0
    # Inception-v3 runs and full-size passes.  [experiments/models/inception_v3.py:
    # test_parameter_counts_and_registry and the table tests]
    'tests/test_inception.py::test_smoke_run_of_an_mn_row',                     # 40.3
    'tests/test_inception.py::test_forward_backward_with_mn_at_inc2_0_and_inc3_0',  # 16.8
    'tests/test_inception.py::test_output_shape_100_classes',                   # 5.9
    'tests/test_inception.py::test_stage_sizes_and_final_3x3',                  # 4.1
    'tests/test_inception.py::test_dropout_masks_survive_serialization',        # 3.0
    # DenseNet runs.  [experiments/models/densenet.py:
    # test_forward_shapes_and_transitions_halve]
    'tests/test_densenet.py::test_smoke_run_mn_l40_writes_records',             # 20.2
    'tests/test_densenet.py::test_mn_at_three_sites_forward_backward',          # 4.1
    'tests/test_densenet.py::test_table7_row_selection',                        # 4.2
    'tests/test_densenet.py::test_table7_cli_prints_ratios_without_writing',    # 3.5
    'tests/test_densenet.py::test_table7_writes_record_to_out',                 # 3.1
    # Figures of whole result trees.  [experiments/figures/*, scripts/figures.py: the
    # other tests of test_figures.py and test_figures_deep.py]
    'tests/test_figures.py::test_all_renders_existing_figures',                 # 31.8
    'tests/test_figures.py::test_fig1_draws_the_last_snapshot_with_labelled_x_axes',  # 7.0
    'tests/test_figures.py::test_fig1_from_snapshot',                           # 4.7
    'tests/test_figures.py::test_fig1_from_saved_activations',                  # 3.1
    # (the last test on tiny_runs, whose two training runs take 28.6 s)
    'tests/test_figures.py::test_fig1_missing_inputs_fail_clearly',
    'tests/test_figures_deep.py::test_every_notice_comes_from_comparability',   # 26.7
    'tests/test_figures_deep.py::test_all_draws_the_deep_figures_of_existing_runs',  # 14.6
    'tests/test_figures_deep.py::test_fig8_mixture_components',                 # 5.4
    # Data-parallel runs under mpiexec.  [experiments/parallel.py: the one-process tests]
    'tests/test_parallel.py::test_mistakes_under_mpi_are_one_line',             # 18.5
    'tests/test_parallel.py::test_two_processes_rank0_writes_and_records_the_world',  # 12.9
    'tests/test_gmm_mpi.py::test_ranks_fit_the_union_to_one_mixture',           # 3.3 + 4.0
    # Fashion-MNIST runs.  [experiments/data: the parser and evaluator tests]
    'tests/test_fashion_mnist.py::test_a_run_on_idx_files_records_both_accuracies_and_its_data',
    'tests/test_fashion_mnist.py::test_smoke_row_on_the_real_files',            # 4.5
    # FID's Inception network at full size.  [experiments/fid.py,
    # scripts/convert_fid_weights.py: the name-mapping and weight-file tests]
    'tests/test_fid.py::test_converter_writes_loadable_npz',                    # 13.1
    'tests/test_fid.py::test_network_matches_pytorch_fid_reference',            # 9.7
    'tests/test_fid.py::test_random_weights_extractor_gives_2048_features',     # 6.3
    'tests/test_fid.py::test_real_statistics_are_cached_by_weights_and_images',  # 5.3
    # The command line's Ctrl-C.  [experiments/cli.py: the entry_point tests]
    'tests/test_cli.py::test_ctrl_c_says_where_the_run_stopped_and_how_to_resume',  # 9.0
    # gpu_check's steps as child processes.  [scripts/gpu_check.py: the other tests]
    'tests/test_gpu_check.py::test_every_failure_is_recorded_and_the_next_step_runs',  # 4.7
    'tests/test_gpu_check.py::test_the_record_is_rewritten_after_every_step',   # 4.6
    'tests/test_gpu_check.py::test_in_process_checks_run_in_their_own_process',  # 4.2
]


def _gpu_available():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


GPU_AVAILABLE = _gpu_available()


def pytest_addoption(parser):
    parser.addoption('--check-modules', action='store_true',
                     help='fail unless the fast tier (not slow) runs code of every module '
                          'of %s' % ', '.join(PACKAGES))


def _in_slow(nodeid):
    for entry in SLOW:
        if nodeid == entry or nodeid.startswith((entry + '::', entry + '[')):
            return entry
    return None


def _whole_suite(config):
    """Whether this run collected every test (no file, -k, --deselect or --lf)."""
    return (config.args_source == pytest.Config.ArgsSource.TESTPATHS
            and not config.option.keyword and not config.option.deselect
            and not config.getoption('lf', False))


def pytest_collection_modifyitems(config, items):
    slow = pytest.mark.slow
    used = set()
    for item in items:
        entry = _in_slow(item.nodeid)
        if entry is not None:
            used.add(entry)
            item.add_marker(slow)
    if _whole_suite(config):
        stale = [e for e in SLOW if e not in used]
        if stale:
            raise pytest.UsageError('tests/conftest.py: SLOW names tests that do not '
                                    'exist (renamed?): %s' % ', '.join(stale))
    if GPU_AVAILABLE:
        return
    skip = pytest.mark.skip(reason='needs CuPy and a CUDA device')
    for item in items:
        if item.get_closest_marker('gpu') is not None:   # (not item.keywords: those
            #                          hold the folder names too, e.g. of a checkout "gpu")
            item.add_marker(skip)


# ------------------------------------------------------------- --check-modules

#: Modules whose code the fast tier runs in child processes only (under mpiexec, or a
#: fresh interpreter), which this process does not see: the fast test that runs it.
RUN_IN_CHILDREN = {
    'mixnorm': 'tests/test_distributed.py::test_import_mixnorm_needs_no_mpi4py',
    'mixnorm.distributed':
        'tests/test_distributed.py::test_k3_equals_one_process_on_the_concatenated_batch',
}

_monitor = None


class Monitor:
    """The files of which a function ran during the fast tier's tests, seen through
    sys.monitoring (Python 3.12+): each function's first start is recorded and then
    disabled, so the tests run at full speed."""

    def __init__(self):
        mon = sys.monitoring
        self.tool = next(i for i in (3, 4) if mon.get_tool(i) is None)
        mon.use_tool_id(self.tool, 'mixnorm --check-modules')
        mon.register_callback(self.tool, mon.events.PY_START, self._started)
        self.files = set()
        self.passed = set()

    def _started(self, code, offset):
        # a function or lambda; not a module's or a class's body, which run at import
        if code.co_flags & inspect.CO_NEWLOCALS and (
                code.co_name == '<lambda>' or not code.co_name.startswith('<')):
            self.files.add(code.co_filename)
        return sys.monitoring.DISABLE

    def watch(self, on):
        sys.monitoring.set_events(self.tool, sys.monitoring.events.PY_START if on else 0)

    def close(self):
        self.watch(False)
        sys.monitoring.register_callback(self.tool, sys.monitoring.events.PY_START, None)
        sys.monitoring.free_tool_id(self.tool)


def pytest_configure(config):
    global _monitor
    if config.getoption('check_modules') and hasattr(sys, 'monitoring'):
        _monitor = Monitor()


def _fast(item):
    return item.get_closest_marker('slow') is None


def _watched(item):
    """A hook wrapper's body: the monitor watches a fast test's setup or call."""
    if _monitor is None or not _fast(item):
        return (yield)
    _monitor.watch(True)
    try:
        return (yield)
    finally:
        _monitor.watch(False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    return (yield from _watched(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from _watched(item))


def pytest_runtest_logreport(report):
    if _monitor is not None and report.when == 'call' and report.passed:
        _monitor.passed.add(report.nodeid)


def project_modules():
    """{real path of each .py file of PACKAGES: its module name}."""
    found = {}
    for package in PACKAGES:
        for folder, dirs, files in os.walk(os.path.join(ROOT, package)):
            dirs[:] = [d for d in dirs if d != '__pycache__']
            for name in files:
                if name.endswith('.py'):
                    path = os.path.join(folder, name)
                    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                    if rel[-1] == '__init__':
                        rel = rel[:-1]
                    found[os.path.realpath(path)] = '.'.join(rel)
    return found


def defines_no_function(path):
    """A module with nothing to run but its import (a package's __init__.py, say)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    return not any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                   for node in ast.walk(tree))


def modules_not_run(files, passed):
    """The modules of PACKAGES of which no function ran (``files``) and that no passed
    test of RUN_IN_CHILDREN runs in a child process."""
    ran = {os.path.realpath(f) for f in files}
    missing = []
    for path, name in sorted(project_modules().items(), key=lambda kv: kv[1]):
        if path in ran or defines_no_function(path):
            continue
        child_test = RUN_IN_CHILDREN.get(name)
        if child_test and any(n == child_test or n.startswith(child_test + '[')
                              for n in passed):
            continue
        missing.append(name)
    return missing


_verdict = []


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if not (config.getoption('check_modules') and _whole_suite(config)
            and config.option.markexpr in ('', 'not slow') and not config.option.collectonly):
        return
    if _monitor is None:
        _verdict.append('--check-modules: not checked here: it needs Python 3.12 or later '
                        '(sys.monitoring); CI checks under 3.12 and 3.13')
        return
    _monitor.close()
    missing = modules_not_run(_monitor.files, _monitor.passed)
    if missing:
        _verdict.append('error: no test of the fast tier runs code of %s: add one (a slow '
                        'test does not count; see SLOW in tests/conftest.py)'
                        % ', '.join(missing))
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    else:
        _verdict.append('--check-modules: the fast tier runs code of every module of %s'
                        % ', '.join(PACKAGES))


def pytest_terminal_summary(terminalreporter):
    for line in _verdict:
        terminalreporter.write_line(line, red=line.startswith('error:'))
