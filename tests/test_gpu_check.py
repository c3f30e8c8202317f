"""scripts/gpu_check.py, the one-call GPU session: its steps parse, it never loses a fact
(every failure, missing program and timeout recorded, the record rewritten after every
step, absent prerequisites skipped with the reason), and it fits the lease."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'scripts', 'gpu_check.py')
sys.path.insert(0, os.path.join(REPO, 'scripts'))

import gpu_check  # noqa: E402
import reproduce  # noqa: E402
from experiments import environment  # noqa: E402
from experiments import reproduce as flow  # noqa: E402

# on a GPU machine gpu_check itself is the check; these cover its CPU behaviour
cpu_only = pytest.mark.skipif(environment.gpu_description() is not None,
                              reason='a GPU is present: run scripts/gpu_check.py itself')


def steps():
    """gpu_check.STEPS by name."""
    return {s.name: s for s in gpu_check.STEPS}


def test_lists_every_step_in_the_order_of_the_lease():
    out = subprocess.run([sys.executable, SCRIPT, '--list'], capture_output=True, text=True,
                         check=True).stdout
    names = [line.split()[0] for line in out.splitlines()]
    assert names == gpu_check.STEP_NAMES
    # the most informative first: stack, Chainer on CuPy, MN beside BN on one layer, a
    # smoke row, Fashion-MNIST, NCCL, the GPU tests, the benchmarks
    order = ['environment', 'chainer_on_cupy', 'bench_layer', 'smoke_table2',
             'fmnist_table2', 'nccl_table2', 'pytest', 'bench_gmm', 'table7']
    assert [n for n in names if n in order] == order
    assert names.index('table7') < names.index('smoke_table4')


def test_the_step_limits_fit_seven_minutes():
    """Each step has its own limit; the default budget ends the whole list within 7
    minutes (the steps after the budget are recorded as skipped)."""
    assert all(0 < s.limit_s <= 150 for s in gpu_check.STEPS)
    assert gpu_check.parser().parse_args([]).budget <= 420 - 20
    order = ['environment', 'chainer_on_cupy', 'bench_layer', 'smoke_table2',
             'fmnist_table2', 'nccl_table2', 'pytest']
    assert sum(steps()[n].limit_s for n in order) <= 420 + 200   # the rest: the budget


def test_smoke_commands_are_valid_reproduce_command_lines(monkeypatch):
    """Each smoke step's arguments parse and reach the training entry point with
    device 0 and generated data (training itself is stubbed here)."""
    seen = []
    monkeypatch.setattr(flow, 'dcgan', lambda args: seen.append(args) or 0)
    monkeypatch.setattr(flow, 'run_rows', lambda args, experiment: seen.append(args))
    monkeypatch.setattr(flow, 'densenet_report', lambda args: 0)
    monkeypatch.setattr(flow.run_records, 'find_runs', lambda *a, **k: [])
    for s in gpu_check.STEPS:
        if not s.name.startswith('smoke_'):
            continue
        argv = [a.format(out='/tmp/x', device='0') for a in s.action[2:]]
        try:
            reproduce.main(argv)
        except SystemExit as e:                 # table2/4: "no runs" after the stub
            assert e.code != 2 and 'no runs' in str(e.code), (s.name, e.code)
    assert len(seen) == 4
    assert all(a.device == '0' and a.synthetic and a.preset == ['smoke'] for a in seen)


def _context(tmp_path, *argv):
    return gpu_check.Context(gpu_check.parser().parse_args(
        ['--out', str(tmp_path)] + list(argv)))


def test_the_nccl_step_is_a_valid_data_parallel_command_line(tmp_path):
    """pure_nccl under mpiexec on a GPU; the naive communicator on the CPU."""
    s = steps()['nccl_table2']
    ctx = _context(tmp_path, '--allow-cpu', '--device', 'cpu')
    ctx.mpiexec = '/opt/mpich/bin/mpiexec'
    cmd, _ = ctx.command(s.action)
    assert cmd[:3] == ['/opt/mpich/bin/mpiexec', '-n', '1']
    args = reproduce.parser().parse_args(cmd[5:])
    assert args.communicator == 'naive' and args.device == 'cpu' and args.synthetic
    ctx.cpu, ctx.device = False, '0'
    args = reproduce.parser().parse_args(ctx.command(s.action)[0][5:])
    assert args.communicator == 'pure_nccl' and args.device == '0'


def test_libmpi_beside_mpiexec_is_named_for_mpi4py(tmp_path, monkeypatch):
    (tmp_path / 'bin').mkdir()
    (tmp_path / 'lib').mkdir()
    (tmp_path / 'lib' / 'libmpi.so.12').write_text('')
    monkeypatch.delenv('MPI4PY_LIBMPI', raising=False)
    env = gpu_check.mpi_environment(str(tmp_path / 'bin' / 'mpiexec'))
    assert env['MPI4PY_LIBMPI'] == str(tmp_path / 'lib' / 'libmpi.so.12')
    monkeypatch.setenv('MPI4PY_LIBMPI', '/mine')
    assert gpu_check.mpi_environment(str(tmp_path / 'bin' / 'mpiexec'))['MPI4PY_LIBMPI'] \
        == '/mine'


def test_the_fmnist_step_trains_table2_on_fashion_mnist(tmp_path):
    s = steps()['fmnist_table2']
    ctx = _context(tmp_path, '--allow-cpu', '--device', '0')
    ctx.fmnist = '/data/fm'
    cmd, _ = ctx.command(s.action)
    i = cmd.index('table2')
    assert cmd[i + 1:i + 3] == ['--dataset', 'fashion-mnist']
    assert cmd[cmd.index('--rows') + 1] == 'BN-2,MN-2'
    assert cmd[cmd.index('--preset') + 1] == 'fmnist-gpu'
    assert cmd[cmd.index('--data-dir') + 1] == '/data/fm'
    assert 'data.subset=[256, 256]' not in cmd
    ctx.cpu = True
    assert 'data.subset=[256, 256]' in ctx.command(s.action)[0]
    assert os.path.exists(os.path.join(REPO, 'configs', 'presets', 'fmnist-gpu.yaml'))
    args = reproduce.parser().parse_args(cmd[i:])
    assert args.dataset == 'fashion-mnist' and args.device == '0'
    assert 'train.epochs=3' in args.overrides and args.preset == ['fmnist-gpu']
    from experiments import config as C
    cfg = C.load_config(os.path.join(C.CONFIG_ROOT, 'table2', 'fashion-mnist', 'MN-2.yaml'),
                        args.preset, args.overrides + ['data.data_dir=/data/fm'])
    assert cfg['train']['epochs'] == 3 and cfg['data']['subset'] is None


def test_absent_prerequisites_are_reasons(tmp_path):
    ctx = _context(tmp_path, '--allow-cpu', '--device', 'cpu',
                   '--fmnist-dir', str(tmp_path / 'none'))
    ctx.mpiexec, ctx.fmnist = None, None
    by = steps()
    assert 'CUDA device' in ctx.missing(by['chainer_on_cupy'])
    assert 'mpiexec' in ctx.missing(by['nccl_table2'])
    why = gpu_check.Context.missing(ctx, gpu_check.Step('x', [], 1, needs=('fmnist',)))
    assert 'train-images-idx3-ubyte.gz' in why and str(tmp_path / 'none') in why
    assert ctx.missing(by['smoke_table2']) is None
    assert 'no_such_module_x' in ctx.missing(gpu_check.Step('x', [], 1,
                                                            needs=('module:no_such_module_x',)))
    ctx.cpu, ctx.no_device, ctx.no_nccl, ctx.mpiexec = False, None, 'CuPy has no NCCL', 'm'
    assert 'NCCL' in ctx.missing(by['nccl_table2'])


def test_finds_the_fashion_mnist_files(tmp_path):
    assert gpu_check.find_fmnist(str(tmp_path)) in (None, *gpu_check.FMNIST_DIRS)
    for name in gpu_check.FMNIST_FILES:
        (tmp_path / name).write_bytes(b'')
    assert gpu_check.find_fmnist(str(tmp_path)) == str(tmp_path)


def test_gpu_test_files_leave_out_modules_this_python_cannot_import(tmp_path, monkeypatch):
    files, left_out = gpu_check.gpu_test_files()
    assert 'tests/test_kernels.py' in files + list(left_out)
    assert 'tests/test_gpu_kernels.py' in files + list(left_out)
    assert all(f.startswith('tests/test_') for f in files)
    bad = tmp_path / 'test_x.py'
    bad.write_text('import os\nimport no_such_module_y.sub\nfrom mixnorm import gmm\n')
    assert gpu_check._missing_imports(str(bad)) == ['no_such_module_y']


# ----------------------------------------------------- the driver, run for real (CPU)

def _fake_steps(tmp_path):
    """Steps that fail in every way: exit 1, a missing program, a timeout, an absent
    prerequisite, a pass."""
    return [
        gpu_check.Step('fails', [sys.executable, '-c', 'raise SystemExit(3)'], 30),
        gpu_check.Step('no_program', [str(tmp_path / 'no-such-program')], 30),
        gpu_check.Step('hangs', [sys.executable, '-c', 'import time; time.sleep(60)'], 2),
        gpu_check.Step('needs_gpu', [sys.executable, '-c', 'pass'], 30, needs=('device',)),
        gpu_check.Step('passes', [sys.executable, '-c', 'print("fine")'], 30),
    ]


def _run_main(tmp_path, monkeypatch, *argv):
    monkeypatch.setattr(gpu_check, 'STEPS', _fake_steps(tmp_path))
    monkeypatch.setattr(gpu_check, 'STEP_NAMES', [s.name for s in gpu_check.STEPS])
    monkeypatch.setattr(gpu_check, 'probe_device', lambda: (0, 'no usable CUDA device'))
    return gpu_check.main(['--out', str(tmp_path / 'out'), '--allow-cpu', '--device',
                           'cpu'] + list(argv))


def test_every_failure_is_recorded_and_the_next_step_runs(tmp_path, monkeypatch):
    rc = _run_main(tmp_path, monkeypatch)
    record = json.load(open(tmp_path / 'out' / 'gpu_check.json'))
    got = {s['step']: s for s in record['steps']}
    assert [s['step'] for s in record['steps']] == [s.name for s in gpu_check.STEPS]
    assert (got['fails']['status'], got['fails']['rc']) == ('failed', 3)
    assert got['no_program']['status'] == 'error'
    assert 'No such file' in got['no_program']['error']
    assert got['hangs']['status'] == 'timeout' and got['hangs']['wall_s'] < 20
    assert got['needs_gpu']['status'] == 'skipped' and 'CUDA device' in got['needs_gpu'][
        'reason']
    assert got['passes']['status'] == 'passed'
    assert 'fine' in open(got['passes']['log']).read()
    assert rc == 1
    assert record['context']['device'] == 'cpu' and 'environment' in record


def test_the_record_is_rewritten_after_every_step(tmp_path, monkeypatch):
    seen = []
    real = gpu_check.write_record

    def spy(out, record):
        real(out, record)
        seen.append(len(json.load(open(os.path.join(out, 'gpu_check.json')))['steps']))
    monkeypatch.setattr(gpu_check, 'write_record', spy)
    _run_main(tmp_path, monkeypatch)
    assert seen == [0, 1, 2, 3, 4, 5]


def test_steps_past_the_budget_are_skipped_with_the_reason(tmp_path, monkeypatch):
    _run_main(tmp_path, monkeypatch, '--budget', '1')
    record = json.load(open(tmp_path / 'out' / 'gpu_check.json'))
    assert all(s['status'] == 'skipped' for s in record['steps'])
    assert 'budget' in record['steps'][0]['reason']


@cpu_only
def test_refuses_without_a_gpu_unless_allowed(tmp_path):
    r = subprocess.run([sys.executable, SCRIPT, '--steps', 'environment', '--out',
                        str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith('error: ')
    assert 'CUDA device' in r.stderr and 'Traceback' not in r.stderr


@cpu_only
def test_in_process_checks_run_in_their_own_process(tmp_path):
    """The environment check passes on the CPU with --allow-cpu; the Chainer-on-CuPy
    check is skipped there (no device), with the reason."""
    r = subprocess.run([sys.executable, SCRIPT, '--allow-cpu', '--device', 'cpu', '--steps',
                        'environment,chainer_on_cupy', '--out', str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    record = json.load(open(tmp_path / 'gpu_check.json'))
    got = {s['step']: s for s in record['steps']}
    assert got['environment']['status'] == 'passed', open(got['environment']['log']).read()
    assert '"chainer_version": "7.8.1"' in open(tmp_path / 'environment.log').read()
    assert got['chainer_on_cupy']['status'] == 'skipped'
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_docstring_recipe_is_make_gpu_wheels():
    """The docstring, the README and the rehearsal name one recipe: make gpu-wheels."""
    doc = gpu_check.__doc__
    assert 'make gpu-wheels' in doc and '--target /tmp/site .whl/*.whl' in doc
    for name in gpu_check.FMNIST_FILES:
        assert name in doc
    with open(os.path.join(REPO, 'README.md')) as f:
        assert 'make gpu-wheels' in f.read()
    with open(os.path.join(REPO, 'Makefile')) as f:
        make = f.read()
    assert 'gpu-wheels:' in make and 'tests/gpu_rehearsal.py' in make
    with open(os.path.join(REPO, '.ci', 'run')) as f:
        assert 'gpu-rehearsal' in f.read()


def test_the_gpu_extras_install_cupy_with_its_cuda_libraries():
    import ast
    with open(os.path.join(REPO, 'setup.py')) as f:
        tree = ast.parse(f.read())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call)
                and getattr(n.func, 'id', None) == 'setup')
    extras = ast.literal_eval(next(k.value for k in call.keywords
                                   if k.arg == 'extras_require'))
    assert extras['gpu'] == ['cupy-cuda12x[ctk]>=14']
    assert extras['gpu-cuda13'] == ['cupy-cuda13x[ctk]>=14']
    with open(os.path.join(REPO, 'README.md')) as f:
        readme = f.read()
    assert "cupy-cuda12x[ctk]" in readme and "cupy-cuda13x[ctk]" in readme
