"""Every CUDA kernel on our GPU paths compiles for the H200 (sm_90) as CuPy 14 generates
it: our RawKernels, Chainer's kernels on our paths (convolution's im2col/col2im, BN,
pooling, softmax cross entropy, activations, dropout, the optimizers and weight decay,
our RMSprop rule) and ChainerMN's pure_nccl kernels as experiments/parallel.py makes the
communicator.  No GPU: only the module load is left out (tests/gpu_kernels.py says how).
Runs where CuPy with NVRTC is installed (CI: in the GPU rehearsal, make gpu-rehearsal)."""
import json
import os
import subprocess
import sys

import pytest

import gpu_kernels  # tests/ is on sys.path under pytest
from mixnorm import kernels

HERE = os.path.dirname(os.path.abspath(__file__))


def _nvrtc_reason():
    try:
        from cupy_backends.cuda.libs import nvrtc
        nvrtc.getVersion()
        return None
    except Exception as e:
        return 'needs CuPy with NVRTC (a GPU is not needed): %s' % type(e).__name__


pytestmark = [pytest.mark.cuda_compile,
              pytest.mark.skipif(_nvrtc_reason() is not None, reason=str(_nvrtc_reason()))]
DTYPES = ['float32', 'float64']


@pytest.fixture(scope='module')
def compiled():
    """The lines of one run of tests/gpu_kernels.py: {(path, dtype): {'done', 'error',
    'kernels': [...]}}."""
    r = subprocess.run([sys.executable, os.path.join(HERE, 'gpu_kernels.py')],
                       capture_output=True, text=True, timeout=600)
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.startswith('{')]
    assert r.returncode == 0 and lines and lines[0].get('setup'), r.stdout + r.stderr[-3000:]
    assert lines[0]['arch'] == '90'
    out = {}
    for d in lines[1:]:
        entry = out.setdefault((d['group'], d['dtype']), {'kernels': []})
        if 'kernel' in d:
            entry['kernels'].append(d)
        else:
            entry.update(done=d['done'], error=d.get('error'))
    return out


def _expected(group):
    return sorted(kernels.SOURCES) if group == 'our_raw_kernels' else gpu_kernels.GROUPS[group]


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('group', sorted(gpu_kernels.GROUPS))
def test_every_kernel_on_the_path_compiles_for_sm90(compiled, group, dtype):
    entry = compiled.get((group, dtype))
    assert entry is not None, 'the path %s (%s) did not run' % (group, dtype)
    assert entry.get('done'), 'the path %s (%s) failed before its kernels:\n%s' % (
        group, dtype, entry.get('error'))
    failed = ['%s (%s %s): %s' % (k['kernel'], k['kind'], ', '.join(k['args']),
                                  k.get('error')) for k in entry['kernels'] if not k['ok']]
    assert not failed, 'kernels that NVRTC cannot compile for sm_90:\n' + '\n'.join(failed)
    reached = {k['kernel'] for k in entry['kernels']}
    missing = sorted(set(_expected(group)) - reached)
    assert not missing, 'the path %s no longer reaches %s' % (group, missing)
    assert all(k['bytes'] > 0 for k in entry['kernels'])


@pytest.mark.parametrize('dtype', DTYPES)
def test_the_batched_copy_that_parallel_turns_off_does_not_compile(compiled, dtype):
    """Why experiments/parallel.py passes batched_copy=False: with CuPy 14's headers
    ChainerMN's batched copy kernels do not compile (they declare ``half``).  Should a
    CuPy compile them again, this fails and the batched copy may come back."""
    entry = compiled[('chainermn_batched_copy', dtype)]
    assert entry.get('done'), entry.get('error')
    got = {k['kernel']: k for k in entry['kernels']}
    assert sorted(got) == gpu_kernels.OFF_PATH['chainermn_batched_copy']
    assert all(not k['ok'] and 'half' in k['error'] for k in got.values())


def test_the_compile_check_catches_a_kernel_that_does_not_compile():
    """The harness itself: a broken source fails, named, through the same compile path."""
    code = ('import sys; sys.path.insert(0, %r)\n' % HERE +
            'import gpu_kernels as g, mixnorm_numpy_hook as h\n'
            'h.prepare_chainer(); g._stub_cublas_if_missing()\n'
            'c = g._compile_without_device()\n'
            'print(len(c("extern \\"C\\" __global__ void ok(float* x) { x[0] = 1; }",'
            ' prepend_cupy_headers=False)) > 0)\n'
            'try:\n'
            '    c("extern \\"C\\" __global__ void broken(float* x) { x[0] = y; }",'
            ' prepend_cupy_headers=False)\n'
            'except Exception as e:\n'
            '    print(type(e).__name__, "identifier \\"y\\" is undefined" in str(e))\n')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ['True', 'CompileException', 'True']
