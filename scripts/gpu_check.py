"""Run the first-GPU-session checklist in one call and leave every fact under one folder.

A lent GPU machine is held for minutes, so everything it should measure runs from one
command: the stack (GPU, CUDA, CuPy, Chainer), whether
Chainer 7.8.1 itself works on this CuPy (BatchNormalization, Convolution2D, an optimizer
step) and MN next to it, the whole test suite with the GPU tests, the benchmarks on the
GPU (``bench_gmm``, ``bench_layer --device gpu``, ``table7 --device gpu``) and a smoke run
of every experiment with ``--device 0`` on generated data.  Each step's output goes to
``<out>/<step>.log``; ``<out>/gpu_check.json`` records every step's exit status and wall
time with the environment; the benchmark records (``results/bench/*_gpu.*``) are copied
into ``<out>``.  A failing step is recorded and the next one runs.

Preparing the machine (here, once; the GPU machine reaches no network): build or fetch
wheels for its Python into ``.whl`` (ignored by git) and carry that folder::

    echo /.whl/ >> .git/info/exclude
    .venv/bin/pip wheel --no-deps --no-build-isolation -w .whl chainer==7.8.1
    .venv/bin/pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --platform manylinux2014_x86_64 -d .whl pyyaml matplotlib contourpy cycler \\
        fonttools kiwisolver pillow pyparsing python-dateutil packaging mpi4py mpich

(``--no-deps`` keeps the machine's own NumPy, which its CuPy was built for; about 30 MB,
under the 64 MiB a run may carry)

and run (``$OUT`` is the folder the device tool brings back)::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \\
    PYTHONPATH=/tmp/site:$PWD MIXNORM_GIT_COMMIT=<sha> python3 scripts/gpu_check.py --out $OUT

``--list`` prints the steps; ``--steps a,b`` runs some of them; ``--allow-cpu --device
cpu`` runs without a GPU (to check this script itself).
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from experiments import cli, environment  # noqa: E402

PY = sys.executable
REPRO = [PY, 'scripts/reproduce.py']
MPIEXEC = os.path.join(os.path.dirname(PY), 'mpiexec') \
    if os.path.exists(os.path.join(os.path.dirname(PY), 'mpiexec')) else 'mpiexec'


def _smoke(table, *extra):
    return REPRO + [table, '--preset', 'smoke', '--synthetic', '--device', '{device}',
                    '--force', '--runs-root', '{out}/runs'] + list(extra)


#: (name, command or in-process check, timeout in seconds); ``{out}`` and ``{device}``
#: are substituted.
STEPS = [
    ('environment', 'check_environment', 60),
    ('chainer_on_cupy', 'check_chainer_on_cupy', 300),
    ('pytest', [PY, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-rs'], 900),
    ('bench_gmm', [PY, 'bench/bench_gmm.py'], 600),
    ('bench_layer', [PY, 'bench/bench_layer.py', '--device', 'gpu'], 600),
    ('table7', [PY, 'bench/table7.py', '--device', 'gpu'], 900),
    ('smoke_table2', _smoke('table2', '--dataset', 'cifar10', '--rows', 'BN-2,MN-2'), 600),
    ('smoke_table4', _smoke('table4', '--dataset', 'cifar10', '--rows', 'MN-1'), 600),
    ('smoke_densenet', _smoke('densenet', '--depth', '40'), 600),
    ('smoke_dcgan', _smoke('dcgan', '--no-fid'), 600),
    # the data-parallel path on one GPU with ChainerMN's NCCL communicator (needs mpi4py,
    # an MPI and CuPy's NCCL; see the wheels above)
    ('nccl_table2', [MPIEXEC, '-n', '1'] + _smoke('table2', '--dataset', 'cifar10', '--rows',
                                                 'MN-2', '--communicator', 'pure_nccl'), 600),
]


# ------------------------------------------------------------------ in-process checks

def check_environment(log):
    info = environment.describe()
    try:
        info['nvidia_smi'] = subprocess.run(['nvidia-smi'], capture_output=True, text=True,
                                            timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        info['nvidia_smi'] = 'unavailable: %s' % e
    try:
        import chainer
        from chainer.backends import cuda
        info['chainer_cuda_available'] = bool(cuda.available)
        info['chainer_cudnn_enabled'] = bool(getattr(cuda, 'cudnn_enabled', False))
        info['chainer_version'] = chainer.__version__
    except Exception as e:
        info['chainer_import_error'] = repr(e)
    log(json.dumps(info, indent=2, default=str))
    return info['gpu'] is not None


def check_chainer_on_cupy(log):
    """Chainer's own layers and an optimizer step on this CuPy, then MN beside BN."""
    import numpy
    import chainer
    import chainer.functions as F
    import chainer.links as L
    import mixnorm
    ok = True
    try:
        device = chainer.get_device('@cupy:0')
    except Exception:
        log('chainer.get_device("@cupy:0") FAILED:\n%s' % traceback.format_exc())
        return False
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


# ------------------------------------------------------------------------- driver

def run_step(name, action, timeout, out, device='0'):
    path = os.path.join(out, name + '.log')
    start = time.time()
    with open(path, 'w') as f:
        def log(msg):
            print(msg, flush=True)
            f.write(msg + '\n')
            f.flush()
        log('== %s' % name)
        if isinstance(action, str):
            try:
                rc = 0 if globals()[action](log) else 1
            except Exception:
                log(traceback.format_exc())
                rc = 1
        else:
            cmd = [a.format(out=out, device=device) for a in action]
            log('$ ' + ' '.join(cmd))
            try:
                proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, timeout=timeout)
                rc, text = proc.returncode, proc.stdout
            except subprocess.TimeoutExpired as e:
                rc, text = 124, (e.stdout or b'').decode() if isinstance(
                    e.stdout, bytes) else (e.stdout or '')
                text += '\n[timed out after %d s]' % timeout
            log(text)
    wall = time.time() - start
    print('== %s: rc %d, %.0f s' % (name, rc, wall), flush=True)
    return {'step': name, 'rc': rc, 'wall_s': round(wall, 1), 'log': path}


@cli.entry_point
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', default=os.environ.get('OUT') or os.path.join(
        REPO, 'results', 'gpu_check'), help='folder for the logs and records')
    p.add_argument('--steps', help='comma-separated step names (default: all)')
    p.add_argument('--list', action='store_true', help='print the steps and exit')
    p.add_argument('--allow-cpu', action='store_true', help='run even without a GPU')
    p.add_argument('--device', default='0',
                   help="device of the smoke runs (default 0; 'cpu' to check the steps)")
    args = p.parse_args(argv)
    names = [s[0] for s in STEPS]
    if args.list:
        for name, action, timeout in STEPS:
            print('%-16s %s' % (name, action if isinstance(action, str)
                                else ' '.join('python' if a == PY else a for a in action)))
        return 0
    wanted = args.steps.split(',') if args.steps else names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        raise cli.UsageError('unknown step(s) %s; steps: %s' % (', '.join(unknown),
                                                                ', '.join(names)))
    env = environment.describe()
    if env['gpu'] is None and not args.allow_cpu:
        raise cli.UsageError('gpu_check: CuPy sees no CUDA device (use --allow-cpu to run '
                             'the steps anyway)')
    os.makedirs(args.out, exist_ok=True)
    results = [run_step(name, action, timeout, args.out, args.device)
               for name, action, timeout in STEPS if name in wanted]
    for path in glob.glob(os.path.join(REPO, 'results', 'bench', '*_gpu.*')):
        shutil.copy(path, args.out)
    with open(os.path.join(args.out, 'gpu_check.json'), 'w') as f:
        json.dump({'environment': env, 'steps': results}, f, indent=2, default=str)
    failed = [r['step'] for r in results if r['rc'] != 0]
    print('gpu_check: %d steps, failed: %s' % (len(results), ', '.join(failed) or 'none'))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
