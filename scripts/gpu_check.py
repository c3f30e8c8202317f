"""Run the first-GPU-session checklist in one call and leave every fact under one folder.

A lent GPU machine is held for minutes, so everything it should measure runs from one
command, the most informative steps first (``--list`` prints them):

1. ``environment``: the stack (GPU, driver, CUDA, CuPy, Chainer; NCCL, mpiexec);
2. ``chainer_on_cupy``: Chainer 7.8.1's own layers and an optimizer step on this CuPy,
   then MN beside BN;
3. ``bench_layer``: MN beside BN on one layer (``bench/bench_layer.py --device gpu``),
   training step and inference, with the device operations each row counts on the CPU
   (``mixnorm.testing.opcount``: launches, syncs, copies) beside its GPU times;
4. ``smoke_table2``: a smoke row (BN-2 and MN-2 of Table 2 on generated data);
5. ``fmnist_table2``: BN-2 and MN-2 of Table 2 on all of Fashion-MNIST (preset
   ``fmnist-gpu``; skipped when the IDX files are absent; on the CPU 256 images);
6. ``nccl_table2``: the data-parallel path under ``mpiexec`` with ChainerMN's
   ``pure_nccl`` communicator;
7. ``pytest``: the GPU tests, and the NVRTC compile of every CUDA kernel on our paths;
8. ``bench_gmm``, ``table7``: the benchmarks on the GPU;
9. ``smoke_table4``, ``smoke_densenet``, ``smoke_dcgan``: the other smoke runs, while
   time is left.

No fact is lost: each step runs in its own process under its own time limit, and the
whole checklist within ``--budget`` seconds (default 400: it ends within 7 minutes);
an exception of any kind, a missing program or a timeout is recorded and the next step
runs; a step whose prerequisites are absent (no device, no ``mpiexec``, no NCCL, no
Fashion-MNIST files, no time left) is recorded as skipped, with the reason; and
``<out>/gpu_check.json`` is rewritten after every step.  Each step's output goes to
``<out>/<step>.log``; the benchmark records (``results/bench/*_gpu.*``) are copied into
``<out>``.

What to carry (the GPU machine reaches no network; it has Python 3.12, NumPy, CuPy with
the CUDA libraries, NCCL and mpi4py): the repository; the wheel set that
``make gpu-wheels`` writes into ``.whl/`` (ignored by git: Chainer 7.8.1 built here, a
``setuptools<80`` for ``pkg_resources``, mpi4py, PyYAML, pytest, and in ``.whl/mpich/``
MPICH with ``mpiexec`` and ``libmpi``; ``--no-deps`` keeps the machine's own NumPy and
CuPy; about 19 MB); and, for the ``fmnist_table2`` step, the four Fashion-MNIST IDX files
(``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``; about 30 MB, e.g. from
``apt-get install dataset-fashion-mnist``, copied into ``.fmnist/``, which git ignores):
about 50 MiB in all, under the 64 MiB a run may carry.  ``make gpu-rehearsal`` (run by
CI) installs and runs this very recipe on the CPU.

The one command to run there (``$OUT`` is the folder the device tool brings back)::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \\
    python3 -m pip install -q --no-index --no-deps --prefix /tmp/mpich .whl/mpich/*.whl && \\
    PATH=/tmp/mpich/bin:$PATH PYTHONPATH=/tmp/site:$PWD MIXNORM_GIT_COMMIT=<sha> \\
    python3 scripts/gpu_check.py --out $OUT --fmnist-dir .fmnist

(MPICH goes in with ``--prefix``: a ``--target`` install would drop its ``lib/``; the
data-parallel step finds ``libmpi`` beside the ``mpiexec`` on PATH.)

``--steps a,b`` runs some of the steps; ``--allow-cpu --device cpu`` runs without a GPU
(the steps that need a device are then skipped; the smoke runs train on the CPU, the
Fashion-MNIST step on 256 of its images, and the data-parallel step uses the ``naive``
communicator), which is how the rehearsal checks this script and the wheel set.
"""
import argparse
import ast
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
SCRIPT = os.path.abspath(__file__)
PY = sys.executable
REPRO = [PY, 'scripts/reproduce.py']
FMNIST_FILES = ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
                't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')
FMNIST_DIRS = ('/usr/share/datasets/fashion-mnist', os.path.join(REPO, '.fmnist'))
#: the pytest step: the GPU tests, the CUDA compile checks and the stack checks
GPU_TEST_MARKERS = 'gpu or cuda_compile or gpu_stack'


def _smoke(table, *extra):
    return REPRO + [table, '--preset', 'smoke', '--synthetic', '--device', '{device}',
                    '--force', '--runs-root', '{out}/runs'] + list(extra)


class Step:
    """One checklist item: ``action`` is a command (``{out}``, ``{device}``,
    ``{communicator}``, ``{fmnist}``, ``{mpiexec}`` are substituted) or the name of an
    in-process check of this script; ``needs`` names its prerequisites."""

    def __init__(self, name, action, limit_s, needs=()):
        self.name, self.action, self.limit_s, self.needs = name, action, limit_s, needs


STEPS = [
    Step('environment', 'check_environment', 45),
    Step('chainer_on_cupy', 'check_chainer_on_cupy', 90, needs=('device',)),
    Step('bench_layer', [PY, 'bench/bench_layer.py', '--device', 'gpu', '--repeats', '5'],
         60, needs=('device',)),
    Step('smoke_table2', _smoke('table2', '--dataset', 'cifar10', '--rows', 'BN-2,MN-2'), 60),
    # epochs sized to the limit (estimated, not yet measured on a GPU: 235 updates per
    # epoch at batch 256, about 10-20 ms per MN update, about 15 s of start-up per row)
    Step('fmnist_table2', REPRO + ['table2', '--dataset', 'fashion-mnist', '--rows',
                                   'BN-2,MN-2', '--preset', 'fmnist-gpu', '--set',
                                   'train.epochs=3', '--set', 'train.snapshot_every=1',
                                   '--data-dir', '{fmnist}', '--device', '{device}',
                                   '--force', '--runs-root', '{out}/runs', '{cpu_subset}'],
         150, needs=('fmnist',)),
    # the data-parallel path with ChainerMN's NCCL communicator on one GPU (naive on CPU)
    Step('nccl_table2', ['{mpiexec}', '-n', '1'] + _smoke(
        'table2', '--dataset', 'cifar10', '--rows', 'MN-2', '--communicator',
        '{communicator}'), 60, needs=('mpiexec', 'nccl')),
    Step('pytest', [PY, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-rs', '-m',
                    GPU_TEST_MARKERS, '{gpu_tests}'], 120),
    Step('bench_gmm', [PY, 'bench/bench_gmm.py', '--repeats', '5'], 60, needs=('device',)),
    Step('table7', [PY, 'bench/table7.py', '--device', 'gpu', '--iters', '20', '--warmup',
                    '5'], 90, needs=('device',)),
    Step('smoke_table4', _smoke('table4', '--dataset', 'cifar10', '--rows', 'MN-1'), 90),
    Step('smoke_densenet', _smoke('densenet', '--depth', '40'), 60),
    # DCGAN's module imports SciPy (for FID), which the wheel set does not carry (35 MB)
    Step('smoke_dcgan', _smoke('dcgan', '--no-fid'), 60, needs=('module:scipy',)),
]
STEP_NAMES = [s.name for s in STEPS]
MIN_STEP_S = 15            # a step is not started with less time than this left


# ------------------------------------------------------------------ prerequisites

def find_mpiexec():
    """``mpiexec`` on PATH, beside this Python, or in a ``--target`` folder's ``bin/`` on
    PYTHONPATH; None when there is none."""
    dirs = os.environ.get('PATH', '').split(os.pathsep) + [os.path.dirname(PY)] + [
        os.path.join(p, 'bin') for p in os.environ.get('PYTHONPATH', '').split(os.pathsep)
        if p]
    for d in dirs:
        path = os.path.join(d, 'mpiexec')
        if d and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def mpi_environment(mpiexec):
    """The environment of an ``mpiexec`` step: mpi4py looks for ``libmpi`` under its
    Python's prefix, so name the one beside ``mpiexec`` (an MPICH installed with
    ``--prefix``) unless ``MPI4PY_LIBMPI`` already says which."""
    env = dict(os.environ)
    lib = os.path.join(os.path.dirname(os.path.dirname(mpiexec or '/')), 'lib')
    for name in ('libmpi.so.12', 'libmpi.so.40', 'libmpi.so'):
        if 'MPI4PY_LIBMPI' not in env and os.path.exists(os.path.join(lib, name)):
            env['MPI4PY_LIBMPI'] = os.path.join(lib, name)
    return env


def find_fmnist(explicit=None):
    """The first folder holding the four Fashion-MNIST IDX files (gzipped or not), or
    None."""
    for d in ([explicit] if explicit else []) + list(FMNIST_DIRS):
        if all(os.path.isfile(os.path.join(d, f)) or os.path.isfile(os.path.join(d, f[:-3]))
               for f in FMNIST_FILES):
            return d
    return None


def _missing_imports(path):
    """The top-level modules that test module ``path`` imports and this Python lacks."""
    local = {os.path.splitext(os.path.basename(p))[0]
             for p in glob.glob(os.path.join(REPO, 'tests', '*.py'))}
    with open(path) as f:
        tree = ast.parse(f.read())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(a.name.split('.')[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split('.')[0])
    missing = []
    for name in sorted(names - local):
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def gpu_test_files():
    """The test modules that hold GPU tests or CUDA compile checks, and those of them
    left out because this Python lacks a module they import ``{file: [modules]}``."""
    files, left_out = [], {}
    for path in sorted(glob.glob(os.path.join(REPO, 'tests', 'test_*.py'))):
        with open(path) as f:
            text = f.read()
        if not any(m in text for m in ('mark.gpu', 'mark.cuda_compile')):
            continue
        rel = os.path.relpath(path, REPO)
        missing = _missing_imports(path)
        if missing:
            left_out[rel] = missing
        else:
            files.append(rel)
    return files, left_out


def _probe(code, timeout=60):
    """Run ``code`` in a fresh interpreter; its last stdout line, or an error text."""
    try:
        r = subprocess.run([PY, '-c', code], cwd=REPO, capture_output=True, text=True,
                           timeout=timeout)
    except (OSError, subprocess.SubprocessError) as e:
        return 'error: %r' % e
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines:
        return 'error: %s' % (r.stderr.strip().splitlines() or ['exit %d' % r.returncode])[-1]
    return lines[-1]


def probe_device():
    """The number of usable CUDA devices (0 without CuPy or a driver) and why not."""
    out = _probe('import cupy; print(cupy.cuda.runtime.getDeviceCount())')
    if out.isdigit() and int(out) > 0:
        return int(out), None
    return 0, 'no usable CUDA device (%s)' % (out if not out.isdigit() else '0 devices')


def probe_nccl():
    out = _probe('from cupy.cuda import nccl; print(bool(nccl.available))')
    return None if out == 'True' else 'CuPy has no NCCL (%s)' % out


class Context:
    """What the steps need, found once: the device, mpiexec, NCCL, the IDX files."""

    def __init__(self, args):
        self.out, self.cpu = args.out, args.device == 'cpu'
        self.device = args.device
        self.n_devices, self.no_device = probe_device()
        self.mpiexec = find_mpiexec()
        self.fmnist = find_fmnist(args.fmnist_dir)
        self.no_nccl = None if self.cpu or self.no_device else probe_nccl()
        self.fmnist_arg = args.fmnist_dir

    def facts(self):
        return {'device': self.device, 'cuda_devices': self.n_devices,
                'no_device_reason': self.no_device, 'mpiexec': self.mpiexec,
                'fmnist_dir': self.fmnist, 'nccl_missing': self.no_nccl}

    def missing(self, step):
        """Why ``step`` cannot run here, or None."""
        for need in step.needs:
            if need == 'device' and (self.cpu or self.no_device):
                return ('needs a CUDA device (--device cpu)' if self.cpu else
                        'needs a CUDA device: %s' % self.no_device)
            if need == 'fmnist' and not self.fmnist:
                return ('needs the Fashion-MNIST IDX files (%s) in %s' % (
                    ', '.join(FMNIST_FILES),
                    ' or '.join(([self.fmnist_arg] if self.fmnist_arg else [])
                                + list(FMNIST_DIRS))))
            if need == 'mpiexec' and not self.mpiexec:
                return 'needs mpiexec (the MPICH wheel of make gpu-wheels brings it)'
            if need == 'nccl' and not self.cpu and self.no_device:
                return 'pure_nccl needs a CUDA device: %s' % self.no_device
            if need == 'nccl' and self.no_nccl:
                return 'pure_nccl needs NCCL: %s' % self.no_nccl
            if need.startswith('module:') and importlib.util.find_spec(need[7:]) is None:
                return 'needs the Python module %s, which this machine lacks' % need[7:]
        return None

    def command(self, action):
        subs = {'out': self.out, 'device': self.device, 'fmnist': self.fmnist or '',
                'mpiexec': self.mpiexec or 'mpiexec',
                'communicator': 'naive' if self.cpu else 'pure_nccl'}
        cmd, notes = [], []
        for a in action:
            if a == '{cpu_subset}':          # on the CPU: the same path on 256 images
                cmd += ['--set', 'data.subset=[256, 256]', '--set', 'train.epochs=1'] \
                    if self.cpu else []
            elif a == '{gpu_tests}':
                files, left_out = gpu_test_files()
                cmd += files
                notes += ['%s left out: this Python has no %s' % (f, ', '.join(m))
                          for f, m in left_out.items()]
            else:
                cmd.append(a.format(**subs))
        return cmd, notes


# ------------------------------------------------------------------ in-process checks

def check_environment(log, allow_cpu=False):
    """The stack: fails when Chainer does not import, when CuPy is installed but Chainer
    cannot use it, or (unless ``allow_cpu``) when there is no CUDA device."""
    from experiments import environment
    info = environment.describe()
    ok = True
    try:
        info['nvidia_smi'] = subprocess.run(['nvidia-smi'], capture_output=True, text=True,
                                            timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        info['nvidia_smi'] = 'unavailable: %s' % e
    try:
        import chainer
        from chainer.backends import cuda
        info['chainer_version'] = chainer.__version__
        info['chainer_cuda_available'] = bool(cuda.available)
        info['chainer_cudnn_enabled'] = bool(getattr(cuda, 'cudnn_enabled', False))
    except Exception as e:
        info['chainer_import_error'] = repr(e)
        ok = False
    try:
        import cupy
        info['cupy'] = cupy.__version__
        from cupy_backends.cuda.libs import nvrtc
        info['nvrtc'] = '%d.%d' % nvrtc.getVersion()
        if not info.get('chainer_cuda_available'):
            err = info['chainer_cuda_error'] = repr(getattr(cuda, '_resolution_error',
                                                            None))
            # without a GPU, a CUDA library this machine lacks (the rehearsal carries no
            # cuBLAS) is recorded; any other reason Chainer cannot use CuPy fails
            missing_library = 'Failure finding' in err or 'cannot open shared' in err
            ok = ok and allow_cpu and missing_library
    except Exception as e:
        info['cupy_error'] = repr(e)
        ok = ok and allow_cpu
    try:
        from cupy.cuda import nccl
        info['nccl'] = nccl.get_version() if nccl.available else None
    except Exception as e:
        info['nccl'] = 'unavailable: %r' % e
    info['mpiexec'] = find_mpiexec()
    log(json.dumps(info, indent=2, default=str))
    return ok and (allow_cpu or info['gpu'] is not None)


def check_chainer_on_cupy(log, allow_cpu=False):
    """Chainer's own layers and an optimizer step on this CuPy, then MN beside BN."""
    import numpy
    import mixnorm  # noqa: F401  (NumPy-2 shim before chainer)
    import chainer
    import chainer.functions as F
    import chainer.links as L
    ok = True
    device = chainer.get_device('@cupy:0')
    rng = numpy.random.default_rng(0)
    x_host = rng.standard_normal((8, 3, 16, 16)).astype(numpy.float32)

    def attempt(name, fn):
        nonlocal ok
        try:
            log('%s: %s' % (name, fn()))
        except Exception:
            ok = False
            log('%s FAILED:\n%s' % (name, traceback.format_exc()))

    def bn_conv_step():
        model = chainer.Sequential(L.Convolution2D(3, 8, 3, pad=1), L.BatchNormalization(8),
                                   F.relu)
        model.to_device(device)
        opt = chainer.optimizers.MomentumSGD(0.1)
        opt.setup(model)
        x = device.send(x_host)
        loss = F.sum(model(x) ** 2)
        model.cleargrads()
        loss.backward()
        opt.update()
        return 'loss %.4f, grad of conv W finite: %s' % (
            float(loss.array), bool(device.xp.isfinite(model[0].W.grad).all()))
    attempt('Convolution2D + BatchNormalization + MomentumSGD step', bn_conv_step)

    def mn_vs_bn():
        bn, mn = L.BatchNormalization(3), mixnorm.MixtureNormalization(3, n_components=1)
        bn.to_device(device)
        mn.to_device(device)
        xb, xm = chainer.Variable(device.send(x_host)), chainer.Variable(device.send(x_host))
        yb, ym = bn(xb), mn(xm)
        (F.sum(yb * yb)).backward()
        (F.sum(ym * ym)).backward()
        err = max(float(abs(yb.array - ym.array).max()),
                  float(abs(xb.grad - xm.grad).max()))
        return 'MN(K=1) vs BN on the GPU: max |diff| of output and input grad %.2e' % err
    attempt('MixtureNormalization K=1 vs BatchNormalization', mn_vs_bn)

    def mn_running_is_bn():
        bn = L.BatchNormalization(3)
        mn = mixnorm.MixtureNormalization(3, n_components=1, inference='running')
        mn3 = mixnorm.MixtureNormalization(3, n_components=3, seed=0)
        for link in (bn, mn, mn3):
            link.to_device(device)
            link(chainer.Variable(device.send(x_host)))
        with chainer.using_config('train', False):
            same = bool((bn(device.send(x_host)).array == mn(device.send(x_host)).array).all())
        err = float(abs(mn3.avg_mean - bn.avg_mean).max())
        return ('K=1 with BN\'s inference equals BN bit for bit: %s; K=3 running mean vs '
                'BN\'s (running-average kernel): max |diff| %.2e' % (same, err))
    attempt('MixtureNormalization K=1 with BN\'s inference, running averages', mn_running_is_bn)

    def mn_k3():
        mn = mixnorm.MixtureNormalization(3, n_components=3, seed=0)
        mn.to_device(device)
        y = mn(chainer.Variable(device.send(x_host)))
        F.sum(y * y).backward()
        with chainer.using_config('train', False):
            t = mn(chainer.Variable(device.send(x_host)))
        return 'MN K=3 train/test on the GPU: K\'=%d, output finite %s/%s' % (
            mn.effective_components, bool(device.xp.isfinite(y.array).all()),
            bool(device.xp.isfinite(t.array).all()))
    attempt('MixtureNormalization K=3 forward/backward/inference', mn_k3)
    return ok


CHECKS = {'check_environment': check_environment,
          'check_chainer_on_cupy': check_chainer_on_cupy}


def run_check(name, allow_cpu):
    """``--run-check NAME``: one in-process check in this process (exit status 0/1)."""
    try:
        return 0 if CHECKS[name](lambda msg: print(msg, flush=True), allow_cpu) else 1
    except Exception:
        traceback.print_exc(file=sys.stdout)
        return 1


# ------------------------------------------------------------------------- driver

def run_step(step, ctx, limit_s):
    """Run one step in its own process within ``limit_s`` seconds; never raises.

    Returns its record: ``status`` is passed, failed, timeout or error (the step could
    not be started: a missing program, a bad command)."""
    path = os.path.join(ctx.out, step.name + '.log')
    record = {'step': step.name, 'limit_s': limit_s, 'log': path}
    start, proc = time.time(), None
    try:
        notes = []
        if isinstance(step.action, str):
            cmd = [PY, SCRIPT, '--run-check', step.action] + (
                ['--allow-cpu'] if ctx.cpu else [])
        else:
            cmd, notes = ctx.command(step.action)
        env = mpi_environment(ctx.mpiexec)   # (ChainerMN's modules load libmpi too)
        record['command'] = ' '.join(cmd)
        if notes:
            record['notes'] = notes
        with open(path, 'w') as f:
            f.write('== %s\n$ %s\n%s' % (step.name, record['command'],
                                          ''.join('# %s\n' % n for n in notes)))
            f.flush()
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    env=env)
            try:
                rc = proc.wait(timeout=limit_s)
                record.update(rc=rc, status='passed' if rc == 0 else 'failed')
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                record.update(rc=124, status='timeout',
                              error='timed out after %d s' % limit_s)
                f.write('\n[timed out after %d s]\n' % limit_s)
    except BaseException as e:          # a missing program, a full disk, Ctrl-C: recorded
        record.update(rc=None, status='error', error=''.join(
            traceback.format_exception_only(type(e), e)).strip())
        if proc is not None and proc.poll() is None:
            _kill_group(proc)
        if isinstance(e, KeyboardInterrupt):
            record['interrupted'] = True
    record['wall_s'] = round(time.time() - start, 1)
    return record


def _kill_group(proc):
    """End a timed-out step and everything it started (mpiexec's ranks too)."""
    import signal
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except OSError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            pass


def write_record(out, record):
    """Rewrite ``<out>/gpu_check.json`` (whole, atomically)."""
    path = os.path.join(out, 'gpu_check.json')
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(record, f, indent=2, default=str)
    os.replace(tmp, path)


def describe_environment():
    """experiments.environment.describe() of this stack, in its own process (a CUDA
    call that hangs cannot hold up the checklist)."""
    out = _probe('import json; from experiments import environment; '
                 'print(json.dumps(environment.describe(), default=str))')
    try:
        return json.loads(out)
    except ValueError:
        return {'error': out}


def parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', default=os.environ.get('OUT') or os.path.join(
        REPO, 'results', 'gpu_check'), help='folder for the logs and records')
    p.add_argument('--steps', help='comma-separated step names (default: all)')
    p.add_argument('--list', action='store_true', help='print the steps and exit')
    p.add_argument('--allow-cpu', action='store_true', help='run even without a GPU')
    p.add_argument('--device', default='0',
                   help="device of the smoke runs (default 0; 'cpu' to check the steps)")
    p.add_argument('--budget', type=float, default=400,
                   help='seconds for the whole checklist (default %(default)s)')
    p.add_argument('--limit-factor', type=float, default=1.0,
                   help='multiply every step\'s time limit (the CPU rehearsal: slower '
                        'than a GPU, on a shared machine)')
    p.add_argument('--fmnist-dir', metavar='DIR',
                   help='folder of the Fashion-MNIST IDX files (default: %s)'
                        % ' or '.join(FMNIST_DIRS))
    p.add_argument('--run-check', choices=sorted(CHECKS), help=argparse.SUPPRESS)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    if args.run_check:
        return run_check(args.run_check, args.allow_cpu)
    if args.list:
        for s in STEPS:
            action = s.action if isinstance(s.action, str) else ' '.join(
                'python' if a == PY else a for a in s.action)
            print('%-16s %4d s  %s%s' % (s.name, s.limit_s, action,
                                         '  [needs %s]' % ', '.join(s.needs)
                                         if s.needs else ''))
        return 0
    wanted = args.steps.split(',') if args.steps else STEP_NAMES
    unknown = sorted(set(wanted) - set(STEP_NAMES))
    if unknown:
        print('error: unknown step(s) %s; steps: %s' % (', '.join(unknown),
                                                        ', '.join(STEP_NAMES)),
              file=sys.stderr)
        return 2
    start = time.time()
    os.makedirs(args.out, exist_ok=True)
    ctx = Context(args)
    if ctx.no_device and not args.allow_cpu:
        print('error: gpu_check: %s (use --allow-cpu --device cpu to run the steps that '
              'need none)' % ctx.no_device, file=sys.stderr)
        return 1
    record = {'environment': describe_environment(), 'context': ctx.facts(),
              'budget_s': args.budget, 'steps': []}
    write_record(args.out, record)
    for step in (s for s in STEPS if s.name in wanted):
        left = args.budget - (time.time() - start)
        limit = step.limit_s * args.limit_factor
        reason = ctx.missing(step)
        if reason is None and left < MIN_STEP_S:
            reason = 'no time left in the %d s budget' % args.budget
        if reason is not None:
            result = {'step': step.name, 'status': 'skipped', 'reason': reason}
            print('== %s: skipped (%s)' % (step.name, reason), flush=True)
        else:
            print('== %s (limit %d s)' % (step.name, min(limit, left)), flush=True)
            result = run_step(step, ctx, int(min(limit, left)))
            print('== %s: %s%s, %.0f s' % (step.name, result['status'],
                                          ' (%s)' % result['error'] if 'error' in result
                                          else '', result['wall_s']), flush=True)
        record['steps'].append(result)
        try:
            for path in glob.glob(os.path.join(REPO, 'results', 'bench', '*_gpu.*')):
                shutil.copy(path, args.out)
        except OSError as e:
            result['copy_error'] = repr(e)
        record['wall_s'] = round(time.time() - start, 1)
        write_record(args.out, record)
        if result.get('interrupted'):
            break
    failed = [r['step'] for r in record['steps'] if r['status'] not in ('passed', 'skipped')]
    skipped = [r['step'] for r in record['steps'] if r['status'] == 'skipped']
    print('gpu_check: %d steps in %.0f s, failed: %s; skipped: %s' % (
        len(record['steps']), record['wall_s'], ', '.join(failed) or 'none',
        ', '.join(skipped) or 'none'))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
