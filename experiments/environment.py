"""What a run ran on: hardware, backend, library versions, git commit.

Every record under ``results/`` (runs and benchmarks) embeds :func:`describe`.
"""
import datetime
import os
import platform
import subprocess
import sys

import mixnorm_numpy_hook

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_commit():
    """``<sha>`` of HEAD, with ``+dirty`` when tracked files outside ``results/`` have
    changes.  Outside a git checkout (e.g. a copy of the tree on a lent GPU machine) the
    value of the environment variable ``MIXNORM_GIT_COMMIT`` (marked ``(declared)``),
    else None."""
    declared = os.environ.get('MIXNORM_GIT_COMMIT')
    declared = declared + ' (declared)' if declared else None
    if not os.path.isdir(os.path.join(REPO_ROOT, '.git')) and declared:
        return declared
    try:
        sha = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        # records rewritten under results/ (e.g. by an earlier benchmark of the same
        # batch) do not change the code that ran, so they do not make it dirty
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no',
                                '--', '.', ':(exclude)results'],
                               cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return declared
    return (sha + ('+dirty' if dirty else '')) if sha else declared


def cpu_name():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_description():
    """Name, memory and runtime versions of CUDA device 0, or None without CuPy/GPU."""
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props['name']
        return {'name': name.decode() if isinstance(name, bytes) else name,
                'memory_gib': round(props['totalGlobalMem'] / 2 ** 30, 1),
                'cupy': cupy.__version__,
                'cuda_runtime': cupy.cuda.runtime.runtimeGetVersion()}
    except Exception:
        return None


def _version(module):
    try:
        if module == 'chainer':
            # without the start-up hook (a --target install used through PYTHONPATH)
            # nothing else has run the NumPy-2 shim yet
            mixnorm_numpy_hook.prepare_chainer()
        return __import__(module).__version__
    except Exception:
        return None


def describe():
    """A JSON-able description of this machine and software stack."""
    info = {
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'git_commit': git_commit(),
        'command': ' '.join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
        'python': platform.python_version(),
        'platform': platform.platform(),
        'cpu': cpu_name(),
        'cpu_count': os.cpu_count(),
        'numpy': _version('numpy'),
        'chainer': _version('chainer'),
        'gpu': gpu_description(),
    }
    try:
        import threadpoolctl
        info['blas'] = [{k: d.get(k) for k in ('internal_api', 'version', 'num_threads',
                                               'architecture')}
                        for d in threadpoolctl.threadpool_info() if d.get('user_api') == 'blas']
    except Exception:
        pass
    return info
