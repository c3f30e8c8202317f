"""The GPU machine, rehearsed on the CPU: ``make gpu-rehearsal`` (run by ``.ci/run``).

It installs the wheel set of ``make gpu-wheels`` (``.whl/``) exactly as
``scripts/gpu_check.py``'s docstring says the GPU machine does, and runs every gpu_check
step that needs no device through it:

* Python 3.12 (``python3.12`` on PATH, else pyenv's), with no venv and no ``.pth``
  start-up hook of ours: the wheels go with ``pip install --target`` into an empty folder
  used only through ``PYTHONPATH``;
* beside it, standing for what the GPU machine has installed, a second ``--target``
  folder (``.gpu-rehearsal/machine``, kept between runs): NumPy 2.5, CuPy 14
  (``cupy-cuda13x``) with NVRTC and the CUDA headers, no NCCL, and a setuptools without
  ``pkg_resources`` (>= 82), which the carried ``setuptools<82`` must shadow;
* ``gpu_check.py --allow-cpu --device cpu`` (each step's limit times 6: a shared 2-core
  CPU, not a GPU): the stack, a smoke row, the data-parallel
  step under the carried MPICH's ``mpiexec`` (``naive`` communicator), the GPU test
  modules (their GPU tests skip; the NVRTC compile of every CUDA kernel on our paths for
  sm_90 runs), the other smoke runs; the steps that need a device are skipped (so is
  DCGAN's smoke run: its module needs SciPy, which is not carried).

Fails when a step fails or when one that must run here was skipped.  The logs stay in
``.gpu-rehearsal/out``.
"""
import glob
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOME = os.path.join(REPO, '.gpu-rehearsal')
MACHINE = os.path.join(HOME, 'machine')
SITE = os.path.join(HOME, 'site')
MPICH = os.path.join(HOME, 'mpich')
OUT = os.path.join(HOME, 'out')
#: the GPU machine's own stack (its CuPy is cupy-cuda13x 14.2 on NumPy 2.5)
MACHINE_PACKAGES = ['numpy>=2.5,<2.6', 'cupy-cuda13x==14.2.*',
                    'cuda-toolkit[nvrtc,cudart]==13.*', 'setuptools>=82']
#: the steps that must run (and pass) without a device
MUST_RUN = ['environment', 'smoke_table2', 'nccl_table2', 'pytest', 'smoke_table4',
            'smoke_densenet']


def find_python(version):
    cands = ['python' + version]
    root = os.environ.get('PYENV_ROOT', os.path.expanduser('~/.pyenv'))
    cands += sorted(glob.glob(os.path.join(root, 'versions', version + '.*', 'bin',
                                           'python' + version)), reverse=True)
    for c in cands:
        try:
            r = subprocess.run([c, '-c', 'import sys; print(sys.executable, '
                                '"%d.%d" % sys.version_info[:2])'],
                               capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        if r.returncode == 0 and r.stdout.split()[-1] == version:
            return r.stdout.split()[0]
    return None


def run(cmd, **kw):
    print('$ ' + ' '.join(cmd), flush=True)
    return subprocess.run(cmd, **kw)


def install_machine(py):
    """The stand-in for the GPU machine's own packages, once (pip's cache makes a
    fresh install take seconds)."""
    stamp = os.path.join(MACHINE, '.installed')
    want = '\n'.join(MACHINE_PACKAGES)
    if os.path.exists(stamp) and open(stamp).read() == want:
        return
    shutil.rmtree(MACHINE, ignore_errors=True)
    start = time.time()
    run([py, '-m', 'pip', 'install', '-q', '--target', MACHINE] + MACHINE_PACKAGES,
        check=True)
    with open(stamp, 'w') as f:
        f.write(want)
    print('machine stack installed in %.0f s (%d MB)' % (
        time.time() - start, _du_mb(MACHINE)), flush=True)


def _du_mb(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total // 2 ** 20


def environment():
    """What the GPU machine's shell has: the CUDA toolkit found at CUDA_PATH (here the
    NVRTC wheel's folder), our wheels' scripts (mpiexec) on PATH, and PYTHONPATH."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('PYTHON', 'VIRTUAL_ENV', 'PYTEST', 'OMP_', 'CUPY_'))}
    cuda = glob.glob(os.path.join(MACHINE, 'nvidia', 'cu*'))
    if cuda:
        env['CUDA_PATH'] = cuda[0]
    env['PATH'] = os.path.join(MPICH, 'bin') + os.pathsep + env.get('PATH', '')
    env['PYTHONPATH'] = os.pathsep.join([SITE, MACHINE, REPO])
    env['PYTHONNOUSERSITE'] = '1'
    env['OMP_NUM_THREADS'] = '1'
    env['CUPY_CACHE_DIR'] = os.path.join(HOME, 'kernel-cache')
    env['MIXNORM_GIT_COMMIT'] = subprocess.run(
        ['git', 'rev-parse', 'HEAD'], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return env


def main():
    start = time.time()
    py = find_python('3.12')
    if py is None:
        print('gpu rehearsal: FAILED: no Python 3.12 (python3.12 on PATH or pyenv)')
        return 1
    wheels = sorted(glob.glob(os.path.join(REPO, '.whl', '*.whl')))
    if not wheels:
        print('gpu rehearsal: FAILED: .whl/ is empty; run make gpu-wheels')
        return 1
    install_machine(py)
    for d in (SITE, MPICH, OUT):
        shutil.rmtree(d, ignore_errors=True)
    # gpu_check's docstring's install commands
    run([py, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps', '--target', SITE]
        + wheels, check=True)
    run([py, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps', '--prefix', MPICH]
        + glob.glob(os.path.join(REPO, '.whl', 'mpich', '*.whl')), check=True)
    env = environment()
    setup_s = time.time() - start
    r = run([py, os.path.join(REPO, 'scripts', 'gpu_check.py'), '--allow-cpu', '--device',
             'cpu', '--budget', '1800', '--limit-factor', '6', '--out', OUT],
            cwd=REPO, env=env)
    record = json.load(open(os.path.join(OUT, 'gpu_check.json')))
    steps = {s['step']: s for s in record['steps']}
    problems = ['%s %s' % (s['step'], s['status']) for s in record['steps']
                if s['status'] not in ('passed', 'skipped')]
    problems += ['%s skipped (%s)' % (n, steps[n].get('reason')) for n in MUST_RUN
                 if steps.get(n, {}).get('status') == 'skipped']
    problems += ['%s missing' % n for n in MUST_RUN if n not in steps]
    # the NVRTC compile checks must have run here, not skipped
    if 'pytest' in steps:
        with open(os.path.join(OUT, 'pytest.log')) as f:
            log = f.read()
        if 'needs CuPy with NVRTC' in log or 'test_gpu_kernels.py' not in log:
            problems.append('pytest: the NVRTC compile checks did not run')
    for name in problems and [s['step'] for s in record['steps']
                              if s['status'] not in ('passed', 'skipped')]:
        print('---- %s.log (last 60 lines)' % name)
        with open(os.path.join(OUT, name + '.log')) as f:
            print(''.join(f.readlines()[-60:]))
    print('gpu rehearsal: setup %.0f s, gpu_check %.0f s; steps: %s' % (
        setup_s, record.get('wall_s', 0), ', '.join(
            '%s %s' % (s['step'], s['status']) for s in record['steps'])))
    if problems or r.returncode != 0:
        print('gpu rehearsal: FAILED: %s' % ('; '.join(problems) or
                                            'gpu_check exit %d' % r.returncode))
        return 1
    print('gpu rehearsal: passed')
    return 0


if __name__ == '__main__':
    sys.exit(main())
