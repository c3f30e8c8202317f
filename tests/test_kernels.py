"""CuPy kernels against their xp twins (GPU only), the twins on the CPU, and the
kernels' CUDA sources through NVRTC where CuPy is installed (no GPU needed)."""
import os

import numpy as np
import pytest

from mixnorm import kernels


def test_log_softmax_columns_twin_on_cpu():
    rng = np.random.default_rng(0)
    logp = rng.normal(0, 30, size=(4, 1000))
    logp[2, :10] = -np.inf                      # an empty component
    resp, lse = kernels.log_softmax_columns(logp)
    ref = np.log(np.exp(logp - logp.max(0)).sum(0)) + logp.max(0)
    np.testing.assert_allclose(lse, ref, rtol=1e-12)
    np.testing.assert_allclose(resp, np.exp(logp - ref), rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(resp.sum(0), 1.0)
    assert (resp[2, :10] == 0).all()


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_log_softmax_columns_kernel_matches_twin(dtype):
    import cupy
    rng = np.random.default_rng(1)
    logp = cupy.asarray(rng.normal(0, 30, size=(5, 100003)).astype(dtype))
    r1, l1 = kernels.log_softmax_columns(logp)
    r2, l2 = kernels.log_softmax_columns_xp(logp)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    cupy.testing.assert_allclose(r1, r2, rtol=tol, atol=tol)
    cupy.testing.assert_allclose(l1, l2, rtol=tol)


def _nvrtc():
    try:
        from cupy_backends.cuda.libs import nvrtc
        nvrtc.getVersion()
        return nvrtc
    except Exception:
        return None


def _oldest_arch():
    """The oldest architecture this NVRTC compiles for: Volta up to CUDA 12, Turing
    from CUDA 13 (which dropped Volta)."""
    nvrtc = _nvrtc()
    return 'compute_70' if nvrtc is None or nvrtc.getVersion()[0] < 13 else 'compute_75'


@pytest.mark.cuda_compile
@pytest.mark.skipif(_nvrtc() is None, reason='needs CuPy with NVRTC (a GPU is not needed)')
@pytest.mark.parametrize('arch', [_oldest_arch(), 'compute_90'])
@pytest.mark.parametrize('name', sorted(kernels.SOURCES))
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_kernel_sources_compile(name, dtype, arch):
    """Each source on its own through NVRTC, for the oldest GPU this CUDA supports and
    the H200 (tests/test_gpu_kernels.py compiles them as CuPy does, with its headers)."""
    nvrtc = _nvrtc()
    prog = nvrtc.createProgram(kernels.kernel_source(name, dtype), name + '.cu', [], [])
    try:
        nvrtc.compileProgram(prog, ['-arch=' + arch])
    except Exception as e:
        raise AssertionError('%s (%s, %s): %s' % (name, np.dtype(dtype).name, arch,
                                                  nvrtc.getProgramLog(prog))) from e
    assert b'.entry ' + name.encode() in nvrtc.getPTX(prog)


# ------------------------------------------------- the CUDA sources, run on the CPU

import cuda_emulation  # noqa: E402  (tests/ is on sys.path under pytest)

needs_gxx = pytest.mark.skipif(not cuda_emulation.available(), reason='needs g++')


@needs_gxx
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_log_softmax_source_runs_like_its_twin(dtype):
    rng = np.random.default_rng(2)
    K, n = 4, 777                                   # n not a multiple of the block
    logp = rng.normal(0, 30, size=(K, n)).astype(dtype)
    logp[2, :10] = -1e30                            # an empty component
    resp, lse = np.empty_like(logp), np.empty(n, dtype)
    cuda_emulation.launch(kernels.kernel_source('log_softmax_columns', dtype),
                          'log_softmax_columns', (n + 255) // 256, 256,
                          (logp, resp, lse, np.int64(n), np.int32(K)))
    r2, l2 = kernels.log_softmax_columns_xp(logp)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(resp, r2, rtol=tol, atol=tol)
    np.testing.assert_allclose(lse, l2, rtol=tol)


def _kpp_case(rng, dtype, trials=3, n=1000):
    dist = rng.random((trials, n)).astype(dtype) * 4
    closest = rng.random(n).astype(dtype) * 4
    pot = np.minimum(dist, closest).sum(axis=1, dtype=np.float64)
    labels = rng.integers(0, 2, n).astype(np.int64)
    return dist, pot, closest, labels


@needs_gxx
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_kpp_update_source_runs_like_its_twin(dtype):
    rng = np.random.default_rng(3)
    dist, pot, closest, labels = _kpp_case(rng, dtype)
    pot[2] = pot[0] = pot.min()                     # a tie: the first trial wins
    want_c, want_l = kernels.kpp_update_xp(dist, pot, closest, labels, 2)
    c, lab = closest.copy(), labels.copy()
    cuda_emulation.launch(kernels.kernel_source('kpp_update', dtype), 'kpp_update',
                          (dist.shape[1] + 255) // 256, 256,
                          (dist, pot, np.int32(dist.shape[0]), np.int64(dist.shape[1]),
                           c, lab, np.int64(2)))
    np.testing.assert_array_equal(c, want_c)
    np.testing.assert_array_equal(lab, want_l)
    assert (want_l == 2).any() and (want_l != 2).any()


def test_kpp_update_twin_is_the_kmeanspp_step():
    rng = np.random.default_rng(4)
    dist, pot, closest, labels = _kpp_case(rng, np.float64)
    c, lab = kernels.kpp_update(dist, pot, closest, labels, 5)
    best = int(np.argmin(pot))
    np.testing.assert_array_equal(c, np.minimum(closest, dist[best]))
    np.testing.assert_array_equal(lab, np.where(dist[best] < closest, 5, labels))


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_kpp_update_kernel_matches_twin(dtype):
    import cupy
    rng = np.random.default_rng(5)
    dist, pot, closest, labels = [cupy.asarray(a) for a in _kpp_case(rng, dtype, n=100003)]
    want_c, want_l = kernels.kpp_update_xp(dist, pot, closest, labels, 3)
    c, lab = kernels.kpp_update(dist, pot, closest.copy(), labels.copy(), 3)
    cupy.testing.assert_array_equal(c, want_c)
    cupy.testing.assert_array_equal(lab, want_l)


def _combine_case(rng, dtype, C=5, n=300, K=3, rows=False):
    def cn():                       # a (C, n) array, or a transposed view of (n, C)
        a = rng.standard_normal((n, C) if rows else (C, n)).astype(dtype)
        return a.T if rows else a
    small = [rng.standard_normal((C, K)).astype(dtype) for _ in range(3)]
    rT = rng.random((K, n)).astype(dtype)
    beta = rng.standard_normal(C).astype(dtype)
    return cn(), cn(), small, rT, beta, cn()


@needs_gxx
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
@pytest.mark.parametrize('rows', [False, True])
@pytest.mark.parametrize('terms', ['forward', 'backward', 'direct', 'k1'])
def test_combine_source_runs_like_its_twin(dtype, rows, terms):
    rng = np.random.default_rng(6)
    u, v, (A, B, Cm), rT, beta, out = _combine_case(rng, dtype, rows=rows,
                                                    K=1 if terms == 'k1' else 3)
    kw = {'forward': dict(Cm=Cm, beta=beta), 'backward': dict(v=v, B=B, Cm=Cm),
          'direct': {}, 'k1': dict(v=v, B=B, Cm=Cm, beta=beta)}[terms]
    want = kernels.combine_xp(np.empty(out.shape, dtype), u, A, rT, **kw)
    ref = u * (A @ rT) + (v * (B @ rT) if 'v' in kw else 0) + (Cm @ rT if 'Cm' in kw else 0) \
        + (beta[:, None] if 'beta' in kw else 0)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(want, ref, rtol=tol, atol=tol)
    C, n = out.shape
    st = kernels._elem_strides
    vv = kw.get('v', u)
    cuda_emulation.launch(
        kernels.kernel_source('combine', dtype), 'combine', (C * n + 255) // 256, 256,
        (out,) + st(out) + (u,) + st(u)
        + (vv,) + (st(vv) if 'v' in kw else (np.int64(0), np.int64(0)))
        + (np.int32('v' in kw), A, kw.get('B', A), kw.get('Cm', A), np.int32('Cm' in kw),
           kw.get('beta', A), np.int32('beta' in kw), rT, np.int32(rT.shape[0]),
           np.int64(C), np.int64(n)))
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol)


@pytest.mark.gpu
@pytest.mark.parametrize('rows', [False, True])
def test_combine_kernel_matches_twin(rows):
    import cupy
    rng = np.random.default_rng(7)
    u, v, (A, B, Cm), rT, beta, out = [
        [cupy.asarray(b) for b in a] if isinstance(a, list) else cupy.asarray(a)
        for a in _combine_case(rng, np.float32, C=64, n=4099, rows=rows)]
    if rows:
        u, v, out = (cupy.asarray(a.T).T for a in (u, v, out))      # transposed views
    want = kernels.combine_xp(cupy.empty(out.shape, out.dtype), u, A, rT, v, B, Cm, beta)
    got = kernels.combine(out, u, A, rT, v, B, Cm, beta)
    cupy.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@needs_gxx
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
@pytest.mark.parametrize('transposed', [False, True])
def test_augment_source_runs_like_its_twin(dtype, transposed):
    rng = np.random.default_rng(8)
    n, d = 301, 7
    x = rng.standard_normal((d, n) if transposed else (n, d)).astype(dtype) * 3 + 1
    x = x.T if transposed else x                    # a strided view of (n, d)
    shift = rng.standard_normal(d).astype(dtype)
    inv = dtype(0.7)
    want = kernels.augment_xp(x, shift, inv, np.empty((n, 2 * d + 2), dtype))
    z = (x - shift) * inv
    np.testing.assert_allclose(want, np.concatenate(
        [z * z, z, (z * z).sum(1, keepdims=True), np.ones((n, 1))], axis=1), rtol=1e-5)
    za = np.full((n, 2 * d + 2), np.nan, dtype)
    cuda_emulation.launch(kernels.kernel_source('augment', dtype), 'augment',
                          (n * d + 255) // 256, 256,
                          (x,) + kernels._elem_strides(x)
                          + (shift, inv, np.int64(n), np.int64(d), za))
    za[:, 2 * d] = za[:, :d].sum(axis=1)            # the launcher's row sum
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(za, want, rtol=tol, atol=tol)


@needs_gxx
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_centre_coef_source_runs_like_its_twin(dtype):
    rng = np.random.default_rng(9)
    n, d = 50, 6
    x = rng.standard_normal((n, d)).astype(dtype)
    za = kernels.augment_xp(x, np.zeros(d, dtype), dtype(1), np.empty((n, 2 * d + 2), dtype))
    rows = np.array([3, 17, 3, 49], np.int64)
    want = kernels.centre_coef_xp(za, rows)
    c = x[rows]                                     # the coefficients give |z - c|^2
    np.testing.assert_allclose(want @ za.T, ((x[None] - c[:, None]) ** 2).sum(-1),
                               rtol=1e-4, atol=1e-4)
    out = np.full(want.shape, np.nan, dtype)
    cuda_emulation.launch(kernels.kernel_source('centre_coef', dtype), 'centre_coef',
                          (out.size + 255) // 256, 256,
                          (za, rows, np.int64(len(rows)), np.int64(d), out))
    np.testing.assert_array_equal(out, want)


@pytest.mark.gpu
def test_augment_and_centre_coef_kernels_match_twins():
    import cupy
    rng = np.random.default_rng(10)
    x = cupy.asarray(rng.standard_normal((5000, 33)).astype(np.float32))
    shift = cupy.asarray(rng.standard_normal(33).astype(np.float32))
    got = kernels.augment(x, shift, np.float32(0.5), cupy.empty((5000, 68), np.float32))
    want = kernels.augment_xp(x, shift, np.float32(0.5), cupy.empty((5000, 68), np.float32))
    cupy.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    rows = cupy.asarray([0, 4999, 17])
    cupy.testing.assert_array_equal(kernels.centre_coef(got, rows),
                                    kernels.centre_coef_xp(got, rows))


@needs_gxx
def test_sample_candidates_source_runs_like_its_twin():
    rng = np.random.default_rng(11)
    closest = rng.random(1000) ** 4
    closest[[0, 500, 999]] = 0                      # zero-probability points
    cum = np.cumsum(closest)
    u = np.concatenate([rng.random(5), [0.0, 1 - 2 ** -53]])
    want = kernels.sample_candidates_xp(cum, u)
    assert ((0 <= want) & (want < 1000)).all() and not np.isin(want, [0, 500]).any()
    cand = np.full(u.shape, -1, np.int64)
    cuda_emulation.launch(kernels.kernel_source('sample_candidates', np.float64),
                          'sample_candidates', 1, 32,
                          (cum, u, np.int32(len(u)), np.int64(len(cum)), cand))
    np.testing.assert_array_equal(cand, want)


@needs_gxx
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_one_hot_source_runs_like_its_twin(dtype):
    labels = np.random.default_rng(12).integers(0, 4, 333).astype(np.int64)
    want = kernels.one_hot_xp(labels, 4, dtype)
    np.testing.assert_array_equal(want.sum(0), 1)
    out = np.full((4, 333), np.nan, dtype)
    cuda_emulation.launch(kernels.kernel_source('one_hot', dtype), 'one_hot',
                          (out.size + 255) // 256, 256,
                          (labels, np.int64(333), np.int64(4), out))
    np.testing.assert_array_equal(out, want)


def _mixture_and_averages(dtype, K=3, D=37):
    rng = np.random.default_rng(14)
    w = rng.random(K)
    w = (w / w.sum()).astype(dtype)
    mu, var = rng.normal(0, 2, (K, D)).astype(dtype), rng.random((K, D)).astype(dtype)
    return w, mu, var, rng.normal(0, 1, D).astype(dtype), rng.random(D).astype(dtype) + 1


def test_running_update_twin_is_bns_update_of_the_pooled_moments():
    w, mu, var, avg_mean, avg_var = _mixture_and_averages(np.float64)
    mean = w @ mu
    pooled = w @ (var + mu ** 2) - mean ** 2        # the mixture's total variance
    want_mean, want_var = avg_mean * 0.9 + mean * 0.1, avg_var * 0.9 + pooled * 0.1 * 1.5
    kernels.running_update(w, mu, var, avg_mean, avg_var, 0.9, 1.5)
    np.testing.assert_allclose(avg_mean, want_mean, rtol=1e-12)
    np.testing.assert_allclose(avg_var, want_var, rtol=1e-12)


@needs_gxx
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_running_update_source_runs_like_its_twin(dtype):
    w, mu, var, avg_mean, avg_var = _mixture_and_averages(dtype)
    want_mean, want_var = avg_mean.copy(), avg_var.copy()
    kernels.running_update_xp(w, mu, var, want_mean, want_var, 0.8, 1.01)
    cuda_emulation.launch(kernels.kernel_source('running_update', dtype), 'running_update',
                          1, 64, (w, mu, var, avg_mean, avg_var, np.int32(3), np.int64(37),
                                  np.float64(0.8), np.float64(1.01)))
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(avg_mean, want_mean, rtol=tol, atol=tol)
    np.testing.assert_allclose(avg_var, want_var, rtol=tol)


@pytest.mark.gpu
def test_running_update_kernel_matches_twin():
    import cupy
    for dtype in (np.float32, np.float64):
        host = _mixture_and_averages(dtype, D=1000)
        a, b = [cupy.asarray(v) for v in host], [cupy.asarray(v) for v in host]
        kernels.running_update(*a, 0.9, 1.01)
        kernels.running_update_xp(*b, 0.9, 1.01)
        for u, v in zip(a[3:], b[3:]):
            cupy.testing.assert_allclose(u, v, rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.gpu
def test_sample_candidates_and_one_hot_kernels_match_twins():
    import cupy
    rng = np.random.default_rng(13)
    cum = cupy.asarray(np.cumsum(rng.random(100003)))
    u = cupy.asarray(rng.random(4))
    cupy.testing.assert_array_equal(kernels.sample_candidates(cum, u),
                                    kernels.sample_candidates_xp(cum, u))
    labels = cupy.asarray(rng.integers(0, 5, 100003))
    cupy.testing.assert_array_equal(kernels.one_hot(labels, 5, np.float32),
                                    kernels.one_hot_xp(labels, 5, np.float32))


@needs_gxx
def test_the_emulation_leaves_nothing_in_tmp(monkeypatch):
    import tempfile
    made = []
    real = tempfile.mkdtemp
    monkeypatch.setattr(cuda_emulation.tempfile, 'mkdtemp',
                        lambda **kw: made.append(real(**kw)) or made[-1])
    source = 'extern "C" __global__ void twice(double* x) { x[threadIdx.x] *= 2; } // %d' \
        % os.getpid()
    x = np.arange(4.0)
    cuda_emulation.launch(source, 'twice', 1, 4, (x,))
    np.testing.assert_array_equal(x, [0, 2, 4, 6])
    assert len(made) == 1 and os.path.basename(made[0]).startswith('mixnorm-emu-')
    assert not os.path.exists(made[0])


# ------------------------------------------------ the device GMM fit's kernels

def _fit_frame(rng, dtype, n=200, d=5):
    x = (rng.standard_normal((d, n)) * 2 + 1).astype(dtype).T     # a strided view
    stats = kernels.fit_frame_stats_xp(x, 3)
    za, _, scale = kernels.fit_augment_xp(x, stats, (n + 2) // 3, 1e-3, -1,
                                          np.empty((n, 2 * d + 2), dtype), None)
    return x, stats, za


@needs_gxx
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_fit_frame_stats_source_runs_like_its_twin(dtype):
    rng = np.random.default_rng(30)
    n, d, step = 301, 6, 7
    x = (rng.standard_normal((d, n)) * 3 + 5).astype(dtype).T
    want = kernels.fit_frame_stats_xp(x, step)
    sub = x[::step].astype(np.float64)
    np.testing.assert_allclose(want, np.concatenate([sub.mean(0), sub.var(0) * len(sub)]),
                               rtol=1e-10)
    out = np.full(2 * d, np.nan)
    cuda_emulation.launch(kernels.kernel_source('fit_frame_stats', dtype), 'fit_frame_stats',
                          1, 32, (x,) + kernels._elem_strides(x)
                          + (np.int64(step), np.int64(len(sub)), np.int64(d), out))
    np.testing.assert_allclose(out, want, rtol=1e-12)


@needs_gxx
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
@pytest.mark.parametrize('spread', ['data', 'floor'])
@pytest.mark.parametrize('sub', [False, True])
def test_fit_augment_source_runs_like_its_twin(dtype, spread, sub):
    rng = np.random.default_rng(31)
    n, d, first = 57, 40, 17                        # d not a multiple of the lanes
    x = (rng.standard_normal((d, n)) * (3 if spread == 'data' else 1e-4) + 2).astype(dtype).T
    stats = kernels.fit_frame_stats_xp(x, 2)
    args = (stats, (n + 1) // 2, 1e-2, first)
    L = kernels.LANES
    # with a subsample: its rows first (K-means++ seeds on them), then every point's
    rows = np.array([3.0, 17, 18, 56]) if sub else None
    m = 0 if rows is None else rows.size
    za, part, scale = kernels.fit_augment_xp(x, *args, np.empty((m + n, 2 * d + 2), dtype),
                                             np.empty((m + n, L), dtype), rows)
    if sub:
        want = kernels.fit_augment_xp(x, *args, np.empty((n, 2 * d + 2), dtype),
                                      np.empty((n, L), dtype))
        idx = rows.astype(int)
        np.testing.assert_array_equal(za[:m], want[0][idx])
        np.testing.assert_array_equal(za[m:], want[0])
        np.testing.assert_array_equal(part, np.concatenate([want[1][idx], want[1]]))
        za, part = za[m:], part[m:]
    want_scale = max(np.sqrt(stats[d:].sum() / (((n + 1) // 2) * d)), 1e-2)
    assert scale[0] == pytest.approx(want_scale, rel=1e-12)
    z = (x.astype(np.float64) - stats[:d]) / want_scale
    # float32: x and the shift are rounded to float32 before the scaling
    ref_tol = 1e-5 if dtype == np.float64 else 2e-7 * np.abs(x).max() / want_scale
    np.testing.assert_allclose(za[:, d:2 * d], z, rtol=1e-5, atol=ref_tol)
    np.testing.assert_array_equal(za[:, 2 * d:], np.tile([0, 1], (n, 1)))
    np.testing.assert_allclose(part.sum(1), ((z - z[first]) ** 2).sum(1), rtol=1e-4, atol=1e-4)
    za2 = np.full((m + n, 2 * d + 2), np.nan, dtype)
    part2, scale2 = np.full((m + n, L), np.nan, dtype), np.zeros(1)
    cuda_emulation.launch(kernels.kernel_source('fit_augment', dtype), 'fit_augment',
                          ((m + n) * L + 255) // 256, 256, (x,) + kernels._elem_strides(x)
                          + (stats, np.int64(m + n), np.int64(d), np.float64((n + 1) // 2),
                             np.float64(1e-2), np.int64(first), za2, part2, scale2,
                             stats if rows is None else rows, np.int64(m)))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    if sub:
        np.testing.assert_array_equal(za2[:m], za2[m:][rows.astype(int)])
        np.testing.assert_array_equal(part2[:m], part2[m:][rows.astype(int)])
    np.testing.assert_allclose(za2[m:], za, rtol=tol, atol=tol)
    np.testing.assert_allclose(part2[m:], part, rtol=tol, atol=tol)
    assert scale2[0] == pytest.approx(scale[0], rel=1e-14)     # the M2 summed in order


@needs_gxx
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
@pytest.mark.parametrize('rows_prev,lanes', [(1, 1), (3, 1), (1, 4)])
def test_kpp_round_source_runs_like_its_twin(dtype, rows_prev, lanes):
    rng = np.random.default_rng(32)
    x, stats, za = _fit_frame(rng, dtype)
    n = za.shape[0]
    mins_prev = (rng.random((rows_prev, n * lanes)) * 4).astype(dtype)
    mins_prev.reshape(rows_prev, n, lanes)[:, ::9] = 0      # points no draw may pick
    cum_prev = np.cumsum(mins_prev, axis=1, dtype=np.float64)
    if rows_prev == 3:
        cum_prev[2, -1] = cum_prev[0, -1] = cum_prev[:, -1].min()   # a tie: the first wins
    u = np.array([0.0, 0.37, 1 - 2 ** -53])
    mins, best = kernels.kpp_round_xp(za, mins_prev, cum_prev, u, np.empty((3, n), dtype),
                                      np.full(1, -1, np.int64), lanes)
    b = int(np.argmin(cum_prev[:, -1]))
    assert best[0] == b
    closest = mins_prev[b].reshape(n, lanes).sum(1)
    point_cum = cum_prev[b][lanes - 1::lanes]          # the running sums per point
    cand = np.minimum(np.searchsorted(point_cum, u * point_cum[-1], side='right'), n - 1)
    assert not np.isin(cand, np.arange(0, n, 9)).any()
    z = za[:, 5:10].astype(np.float64)
    want = np.minimum(((z[None] - z[cand][:, None]) ** 2).sum(-1), closest)
    np.testing.assert_allclose(mins, want, rtol=1e-4, atol=1e-4)
    got, got_best = np.full_like(mins, np.nan), np.full(1, -1, np.int64)
    cuda_emulation.launch(kernels.kernel_source('kpp_round', dtype), 'kpp_round',
                          (3 * n + 255) // 256, 256,
                          (za, np.int64(n), np.int64(5), mins_prev, cum_prev,
                           np.int32(rows_prev), np.int32(lanes), u, np.int32(3), got,
                           got_best, got, np.int32(1), got, got_best, np.int32(0),
                           np.int32(0), got, np.int64(cum_prev.shape[1]), np.int64(0)))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, mins, rtol=tol, atol=tol)
    assert got_best[0] == b


@needs_gxx
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
@pytest.mark.parametrize('k', [1, 3])
@pytest.mark.parametrize('sub', [0, 50])
def test_kpp_last_round_writes_each_candidates_partition_like_its_twin(dtype, k, sub):
    """``sub``: the draws run over the first ``sub`` points (a subsample's rows) and the
    partitions cover the points after them."""
    rng = np.random.default_rng(33)
    x, stats, za = _fit_frame(rng, dtype)
    n, trials, lanes0, K = za.shape[0], 3, 2, k + 1
    first = rng.integers(0, 3, n * lanes0).astype(dtype)
    mins_all = rng.integers(0, 3, (k * trials, n)).astype(dtype)    # many ties
    best_all = np.array([-7, 2, 0, -7], np.int64)       # rounds 1, 2 (the rest unused)
    prev_rows = slice(0, 1) if k == 1 else slice((k - 2) * trials, (k - 1) * trials)
    mins_prev = first.reshape(1, -1) if k == 1 else mins_all[prev_rows]
    lanes = lanes0 if k == 1 else 1
    cum_prev = np.cumsum(mins_prev[:, :(sub or n) * lanes], axis=1, dtype=np.float64)
    if k == 3:
        cum_prev[1, -1] = cum_prev[:, -1].min()         # the previous round's winner: 1
    u = np.array([0.1, 0.5, 0.9])
    rows = mins_all[(k - 1) * trials:]
    out = np.full((trials * K, n - sub), np.nan, dtype)
    chain = (first, lanes0, mins_all, best_all, k, out)
    want, b = kernels.kpp_round_xp(za, mins_prev, cum_prev, u, rows.copy(),
                                   np.full(1, -1, np.int64), lanes, chain)
    want_out = out.copy()
    # by hand: the chain of the earlier winners, then each candidate's
    prev_closest = first.reshape(n, lanes0).sum(1)
    labels = np.zeros(n, int)
    for r, row in enumerate([2, 3 + int(b[0])][:k - 1], start=1):
        labels[mins_all[row] < prev_closest] = r
        prev_closest = mins_all[row]
    for j in range(trials):
        lab = np.where(want[j] < prev_closest, k, labels)
        np.testing.assert_array_equal(want_out[j * K:(j + 1) * K].argmax(0), lab[sub:])
        np.testing.assert_array_equal(want_out[j * K:(j + 1) * K].sum(0), 1)
    # the candidates: drawn among the first points only
    point_cum = cum_prev[int(b[0])][lanes - 1::lanes]
    cand = np.minimum(np.searchsorted(point_cum, u * point_cum[-1], side='right'),
                      point_cum.size - 1)
    z = za[:, 5:10].astype(np.float64)
    closest = mins_prev[int(b[0])].reshape(n, lanes).sum(1)
    np.testing.assert_allclose(
        want, np.minimum(((z[None] - z[cand][:, None]) ** 2).sum(-1), closest),
        rtol=1e-4, atol=1e-4)
    got, got_out = np.full_like(rows, np.nan), np.full_like(out, np.nan)
    cuda_emulation.launch(kernels.kernel_source('kpp_round', dtype), 'kpp_round',
                          (trials * n + 255) // 256, 256,
                          (za, np.int64(n), np.int64(5), mins_prev, cum_prev,
                           np.int32(mins_prev.shape[0]), np.int32(lanes), u,
                           np.int32(trials), got, np.full(1, -1, np.int64), first,
                           np.int32(lanes0), mins_all, best_all, np.int32(k), np.int32(K),
                           got_out, np.int64(cum_prev.shape[1]), np.int64(sub)))
    np.testing.assert_array_equal(got_out, want_out)


def _fit_moments(rng, dtype, K=3, d=5):
    x, stats, za = _fit_frame(rng, dtype, d=d)
    resp = rng.random((K, za.shape[0]))
    resp /= resp.sum(0)
    return (resp.astype(dtype) @ za), stats


@needs_gxx
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
@pytest.mark.parametrize('mode', [0, 1])
def test_fit_coef_source_runs_like_its_twin(dtype, mode):
    rng = np.random.default_rng(34)
    d, L = 37, kernels.LANES                            # more features than lanes
    mom, _ = _fit_moments(rng, dtype, K=4, d=d)
    mom[3, 2] = np.inf                                  # a non-finite value: its lane
    mom[2, -1] = 0                                      # an empty component: weight 0
    scale = np.array([1.7])
    args = (mom, 200, scale, 1e-5, 1e-6, np.log(2 * np.pi), mode)
    bad0 = np.zeros((4, L))
    bad0[1, 5] = 1                                      # flagged by an earlier pass
    with np.errstate(invalid='ignore', over='ignore', divide='ignore'):
        coef, part, bad = kernels.fit_coef_xp(*args, np.empty_like(mom), np.empty((4, L)),
                                              bad0.copy(), False)
    want_bad = bad0.copy()
    want_bad[3, 2] = 1
    np.testing.assert_array_equal(bad, want_bad)        # accumulated, row 3 lane 2
    nk = mom[:3, -1].astype(np.float64)
    m = mom[:3, d:2 * d] / np.maximum(nk, 1e-6)[:, None]
    v = np.maximum(mom[:3, :d] / np.maximum(nk, 1e-6)[:, None] - m * m, 0) + 1e-5 / 1.7 ** 2
    z = rng.standard_normal((6, d))
    za = np.concatenate([z * z, z, np.zeros((6, 1)), np.ones((6, 1))], 1)
    got = za @ coef[:3].astype(np.float64).T + part[:3].sum(1)
    if mode == 0:                                       # weighted log-densities
        want = np.log(np.where(nk > 0, nk / 200, 1))[None] - 0.5 * (
            ((z[:, None] - m[None]) ** 2 / v[None]).sum(-1) + np.log(v).sum(1)
            + d * np.log(2 * np.pi))
        want[:, 2] = -1e30
    else:                                               # squared distances to the means
        want = ((z[:, None] - m[None]) ** 2).sum(-1)
    np.testing.assert_allclose(got, want, rtol=1e-4 if dtype == np.float32 else 1e-9)
    out, out_part, flags = np.full_like(mom, np.nan), np.full((4, L), np.nan), bad0.copy()
    cuda_emulation.launch(kernels.kernel_source('fit_coef', dtype), 'fit_coef', 1, 256,
                          (mom, np.int64(d), np.int32(4), np.float64(200), scale,
                           np.float64(1e-5), np.float64(1e-6), np.float64(np.log(2 * np.pi)),
                           np.int32(mode), out, out_part, flags, np.int32(0), scale,
                           np.int32(1), np.int64(1)))
    np.testing.assert_array_equal(flags, bad)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out[:3], coef[:3], rtol=tol, atol=tol)
    np.testing.assert_allclose(out_part[:3], part[:3], rtol=1e-12, atol=1e-12)


@needs_gxx
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_fit_log_softmax_source_runs_like_its_twin(dtype):
    rng = np.random.default_rng(38)
    K, n, L = 3, 300, kernels.LANES
    lp = rng.normal(0, 20, (K, n)).astype(dtype)
    part = rng.normal(0, 5, (K, L))
    part[2] = -1e30 / L                                 # an empty component
    want = kernels.fit_log_softmax_xp(lp, part, np.empty_like(lp))
    full = lp + part.sum(1)[:, None]
    ref = np.exp(full - full.max(0)) / np.exp(full - full.max(0)).sum(0)
    np.testing.assert_allclose(want, ref, rtol=1e-4 if dtype == np.float32 else 1e-10,
                               atol=1e-30)
    assert (want[2] == 0).all()
    out = np.full_like(lp, np.nan)
    cuda_emulation.launch(kernels.kernel_source('fit_log_softmax', dtype), 'fit_log_softmax',
                          2, 256, (lp, part, np.int64(n), np.int32(K), out))
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol)


@needs_gxx
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_argmin_onehot_source_runs_like_its_twin(dtype):
    rng = np.random.default_rng(35)
    dist = rng.integers(0, 3, (4, 333)).astype(dtype)   # ties
    part = np.zeros((4, kernels.LANES))
    part[1, 7] = -1.0                                   # row 1 one lower
    want = kernels.argmin_onehot_xp(dist, part, np.empty_like(dist))
    np.testing.assert_array_equal(want.argmax(0), (dist - (np.arange(4) == 1)[:, None]
                                                   ).argmin(0))
    out = np.full_like(dist, np.nan)
    cuda_emulation.launch(kernels.kernel_source('argmin_onehot', dtype), 'argmin_onehot',
                          2, 256, (dist, part, np.int64(333), np.int32(4), out))
    np.testing.assert_array_equal(out, want)


@needs_gxx
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
@pytest.mark.parametrize('K', [1, 4])
def test_fit_finish_source_runs_like_its_twin(dtype, K):
    rng = np.random.default_rng(36)
    d, L = 37, kernels.LANES
    mom, stats = _fit_moments(rng, dtype, K=K, d=d)
    if K == 4:
        mom[2] = mom[0]                                 # tied weights: stable order
        mom[3] *= 0.02                                  # fails min_count
    n, scale = 200, np.array([1.7])
    args = (mom, n, scale, stats, 1e-5, 1e-6, np.log(2 * np.pi), 0.01, 16)
    outs = (np.empty_like(mom), np.empty((K, L)), np.empty(K, dtype), np.empty((K, d), dtype),
            np.empty((K, d), dtype))
    coef, part, w, m, v, status = kernels.fit_finish_xp(*args, *outs,
                                                        np.zeros(2 * K * L + 2 * K), True)
    nk = mom[:, -1].astype(np.float64)
    order = np.argsort(-nk, kind='stable')
    kept = nk[order] * ([1, 1, 1, 0] if K == 4 else 1)  # the light one dropped: weight 0
    np.testing.assert_allclose(w, kept / kept.sum(), rtol=1e-6)
    mean_z = mom[order, d:2 * d] / nk[order, None]
    np.testing.assert_allclose(m, stats[:d] + mean_z * 1.7, rtol=1e-5)
    np.testing.assert_array_equal(status[:K * L], 0)
    np.testing.assert_allclose(status[K * L:2 * K * L].reshape(K, L).max(1),
                               np.maximum(np.abs(m), np.abs(v)).max(1) * (kept > 0),
                               rtol=1e-6)               # the kept components' magnitudes
    np.testing.assert_array_equal(status[2 * K * L:2 * K * L + K],
                                  [1, 1, 1, 0] if K == 4 else [1])
    got = [np.full_like(a, np.nan) for a in outs] + [np.full(2 * K * L + 2 * K, np.nan)]
    _emulate_finish(dtype, mom, n, scale, stats, got, True)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a, b in zip(got, (coef, part, w, m, v, status)):
        np.testing.assert_allclose(a[:2 * K * L + K], b[:2 * K * L + K], rtol=tol, atol=tol)


def _emulate_finish(dtype, mom, n, scale, stats, outs, reset, select=None, merge=False):
    """fit_finish's CUDA source in the emulation, with the constants of these tests."""
    K, W = outs[0].shape
    sel = (scale, np.int32(1), np.int64(1)) if select is None else \
        (select, np.int32(select.shape[0]), np.int64(select.shape[1]))
    cuda_emulation.launch(kernels.kernel_source('fit_finish', dtype), 'fit_finish', 1, 256,
                          (mom, np.int64((W - 2) // 2), np.int32(K), np.float64(n), scale,
                           stats, np.float64(1e-5), np.float64(1e-6),
                           np.float64(np.log(2 * np.pi)), np.float64(0.01), np.float64(16),
                           *outs, np.int32(reset), *sel, np.int32(merge)))


@needs_gxx
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_fit_finish_merging_round_runs_like_its_twin(dtype):
    """The count rule's merging round: a no-op when the first round kept every
    component; else the kept slots re-estimated and sorted, the dropped one last with
    weight 0, and the verdict of the rule on the kept ones."""
    rng = np.random.default_rng(40)
    K, d, L, n = 4, 37, kernels.LANES, 200
    mom, stats = _fit_moments(rng, dtype, K=K, d=d)
    mom[3] *= 0.02                                      # slot 3 fails min_count
    scale = np.array([1.7])

    def outs():
        return [np.zeros_like(mom), np.zeros((K, L)), np.zeros(K, dtype),
                np.zeros((K, d), dtype), np.zeros((K, d), dtype), np.zeros(2 * K * L + 2 * K)]
    first = kernels.fit_finish_xp(mom, n, scale, stats, 1e-5, 1e-6, np.log(2 * np.pi),
                                  0.01, 16, *outs(), True)
    np.testing.assert_array_equal(first[5][2 * K * L:2 * K * L + K], [1, 1, 1, 0])
    assert first[2][3] == 0 and first[0][3, -1] == -np.inf    # dropped: no posterior
    merged = mom.copy()
    merged[3] = 0                                       # its points moved to the others
    merged[1] *= 0.05                                   # slot 1 now fails min_count
    merged[:3, -1] *= n / merged[:3, -1].sum()
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for case, status0 in (('dropped', first[5]), ('all kept', np.r_[first[5][:-2 * K],
                                                                    np.ones(K), first[5][-K:]])):
        want = [a.copy() for a in first[:5]] + [status0.copy()]
        kernels.fit_finish_xp(merged, n, scale, stats, 1e-5, 1e-6, np.log(2 * np.pi), 0.01,
                              16, *want, False, None, True)
        got = [a.copy() for a in first[:5]] + [status0.copy()]
        _emulate_finish(dtype, merged, n, scale, stats, got, False, merge=True)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
        if case == 'all kept':                          # nothing changed
            for a, b in zip(want, first[:5]):
                np.testing.assert_array_equal(a, b)
        else:
            w = want[2]
            nk = merged[:3, -1].astype(np.float64)
            np.testing.assert_allclose(w[:3], np.sort(nk)[::-1] / nk.sum(), rtol=1e-6)
            assert w[3] == 0
            # the light slot fails again; the dropped slot and the others pass
            np.testing.assert_array_equal(want[5][-K:], [1, 1, 0, 1])


@needs_gxx
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_fit_coef_and_finish_sources_take_the_winning_candidates_moments(dtype):
    rng = np.random.default_rng(39)
    K, d, L, trials = 2, 9, kernels.LANES, 3
    stacked = np.concatenate([_fit_moments(rng, dtype, K=K, d=d)[0] for _ in range(trials)])
    stats = _fit_moments(rng, dtype, K=K, d=d)[1]
    select = np.cumsum(rng.random((trials, 50)), axis=1)
    select[2, -1] = select[:, -1].min()                 # candidate 2 wins
    scale, consts = np.array([1.3]), (1e-5, 1e-6, np.log(2 * np.pi))
    want = kernels.fit_coef_xp(stacked[2 * K:], 200, scale, *consts, 0,
                               np.empty((K, 2 * d + 2), dtype), np.empty((K, L)),
                               np.zeros((K, L)), True)
    got = kernels.fit_coef_xp(stacked, 200, scale, *consts, 0,
                              np.empty((K, 2 * d + 2), dtype), np.empty((K, L)),
                              np.zeros((K, L)), True, select)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    out, part, bad = np.full((K, 2 * d + 2), np.nan, dtype), np.full((K, L), np.nan), \
        np.zeros((K, L))
    cuda_emulation.launch(kernels.kernel_source('fit_coef', dtype), 'fit_coef', 1, 256,
                          (stacked, np.int64(d), np.int32(K), np.float64(200), scale,
                           *[np.float64(c) for c in consts], np.int32(0), out, part, bad,
                           np.int32(1), select, np.int32(trials), np.int64(50)))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, want[0], rtol=tol, atol=tol)
    np.testing.assert_allclose(part, want[1], rtol=1e-12, atol=1e-12)
    outs = lambda: (np.full((K, 2 * d + 2), np.nan, dtype), np.full((K, L), np.nan),  # noqa
                    np.full(K, np.nan, dtype), np.full((K, d), np.nan, dtype),
                    np.full((K, d), np.nan, dtype), np.zeros(2 * K * L + 2 * K))
    args = (200, scale, stats, *consts, 0.01, 16)
    want = kernels.fit_finish_xp(stacked[2 * K:], *args, *outs(), True)
    got = outs()
    _emulate_finish(dtype, stacked, 200, scale, stats, got, True, select)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@pytest.mark.gpu
def test_device_fit_kernels_match_twins():
    import cupy
    rng = np.random.default_rng(37)
    L = kernels.LANES
    x = cupy.asarray(rng.standard_normal((5000, 33)).astype(np.float32) * 2 + 1)
    stats = kernels.fit_frame_stats(x, 9)
    cupy.testing.assert_allclose(stats, kernels.fit_frame_stats_xp(x, 9), rtol=1e-10)
    part = (5000, L)
    got = kernels.fit_augment(x, stats, 556, 1e-3, 7, cupy.empty((5000, 68), np.float32),
                              cupy.empty(part, np.float32))
    want = kernels.fit_augment_xp(x, stats, 556, 1e-3, 7, cupy.empty((5000, 68), np.float32),
                                  cupy.empty(part, np.float32))
    for a, b in zip(got, want):
        cupy.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
    za = want[0]
    mins_prev = want[1].reshape(1, -1).copy()
    cum = cupy.cumsum(mins_prev, axis=1, dtype=np.float64)
    u = cupy.asarray(rng.random(3))
    a = kernels.kpp_round(za, mins_prev, cum, u, cupy.empty((3, 5000), np.float32),
                          cupy.empty(1, np.int64), L)
    b = kernels.kpp_round_xp(za, mins_prev, cum, u, cupy.empty((3, 5000), np.float32),
                             cupy.empty(1, np.int64), L)
    cupy.testing.assert_allclose(a[0], b[0], rtol=1e-4, atol=1e-3)
    mom = cupy.asarray(rng.random((3, 5000)).astype(np.float32)) @ za
    scale = cupy.asarray([1.3])
    for mode in (0, 1):
        c1 = kernels.fit_coef(mom, 5000, scale, 1e-5, 1e-6, 1.8, mode, cupy.empty_like(mom),
                              cupy.empty((3, L)), cupy.zeros((3, L)), True)
        c2 = kernels.fit_coef_xp(mom, 5000, scale, 1e-5, 1e-6, 1.8, mode,
                                 cupy.empty_like(mom), cupy.empty((3, L)),
                                 cupy.zeros((3, L)), True)
        for u1, u2 in zip(c1, c2):
            cupy.testing.assert_allclose(u1, u2, rtol=1e-5, atol=1e-5)
        lp = c1[0] @ za.T
        s1 = (kernels.argmin_onehot if mode else kernels.fit_log_softmax)(
            lp, c1[1], cupy.empty_like(lp))
        s2 = (kernels.argmin_onehot_xp if mode else kernels.fit_log_softmax_xp)(
            lp, c1[1], cupy.empty_like(lp))
        cupy.testing.assert_allclose(s1, s2, rtol=1e-4, atol=1e-5)

    def outs():
        return (cupy.empty_like(mom), cupy.empty((3, L)), cupy.empty(3, np.float32),
                cupy.empty((3, 33), np.float32), cupy.empty((3, 33), np.float32),
                cupy.zeros(2 * 3 * L + 2 * 3))
    f1 = kernels.fit_finish(mom, 5000, scale, stats, 1e-5, 1e-6, 1.8, 0.01, 16, *outs(), True)
    f2 = kernels.fit_finish_xp(mom, 5000, scale, stats, 1e-5, 1e-6, 1.8, 0.01, 16, *outs(),
                               True)
    for a, b in zip(f1, f2):
        cupy.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # the merging round, after a first round that dropped the last slot
    merged = mom.copy()
    merged[2] = 0
    for f in (f1, f2):
        f[5][2 * 3 * L + 2] = 0
    m1 = kernels.fit_finish(merged, 5000, scale, stats, 1e-5, 1e-6, 1.8, 0.01, 16, *f1,
                            False, None, True)
    m2 = kernels.fit_finish_xp(merged, 5000, scale, stats, 1e-5, 1e-6, 1.8, 0.01, 16, *f2,
                               False, None, True)
    for a, b in zip(m1, m2):
        cupy.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert float(m1[2][2]) == 0


# ------------------------------------------------------------------ mixture normalization's kernels
def _emulate(name, dtype, items_args):
    items, args = items_args
    cuda_emulation.launch(kernels.kernel_source(name, dtype), name, (items + 255) // 256,
                          256, args)


def _tol(dtype):
    return 2e-5 if dtype == np.float32 else 1e-12


def _mn_case(dtype, N=3, C=4, L=5, K=3, seed=0, rows=False):
    """x as the (N, C, L) view the kernels take (a strided view for (N, C) input), resp."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((N, C) if rows else (N, C, L)) * 2 + 5).astype(dtype)
    x3 = x[:, :, None] if rows else x
    n = x3.shape[0] * x3.shape[2]
    resp = rng.random((n, K)).astype(dtype)
    resp /= resp.sum(axis=1, keepdims=True)
    return x3, resp


def _mn_forward(dtype, mode, K=3, rows=False, lambda_scaling=True, seed=0):
    x3, resp = _mn_case(dtype, K=K, rows=rows, seed=seed)
    N, C, L = x3.shape
    rng = np.random.default_rng(seed + 1)
    gamma = beta = None
    if mode == kernels.MN_CHANNEL:
        gamma, beta = (rng.random(C) + 0.5).astype(dtype), rng.standard_normal(C).astype(dtype)
    elif mode == kernels.MN_COMPONENT:
        gamma = (rng.random((K, C)) + 0.5).astype(dtype)
        beta = rng.standard_normal((K, C)).astype(dtype)
    shift = kernels.mn_shift_xp(x3, kernels.mn_shift_steps(N, L, rows))
    work, resp1 = kernels.mn_stack_xp(x3, shift, resp, np.empty((2 * C + 1, N * L), dtype),
                                      np.empty((N * L, K + 1), dtype))
    M = work @ resp1
    buf = kernels.mn_coef_xp(M, N * L, shift, gamma, beta, mode, 1e-3, lambda_scaling)
    return x3, resp, gamma, beta, shift, work, resp1, M, buf


@pytest.mark.parametrize('rows', [False, True])
def test_mn_stack_and_coef_twins_give_the_batch_statistics(rows):
    from mixnorm import functions as MF
    x3, resp, _, _, shift, work, resp1, M, buf = _mn_forward(np.float64, kernels.MN_NONE,
                                                             rows=rows)
    N, C, L = x3.shape
    xc = np.moveaxis(x3, 1, 0).reshape(C, -1) - shift[:, None]
    np.testing.assert_allclose(work, np.concatenate([xc, xc ** 2, np.ones((1, N * L))]))
    np.testing.assert_allclose(resp1, np.concatenate([resp, np.ones((N * L, 1))], axis=1))
    views = kernels.mn_coef_views(buf, C, 3)
    x = x3[:, :, 0] if rows else x3
    ref = MF.mixture_moments(x, resp)
    np.testing.assert_allclose(views['weights'], ref.weights, rtol=1e-12)
    np.testing.assert_allclose(views['mu'], ref.means, rtol=1e-10)
    np.testing.assert_allclose(views['var_t'], ref.variances, rtol=1e-9)
    np.testing.assert_allclose(views['inv_std'], 1 / np.sqrt(ref.variances.T + 1e-3),
                               rtol=1e-9)
    assert (views['status'] == 0).all()


@needs_gxx
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
@pytest.mark.parametrize('rows', [False, True])
def test_mn_shift_and_stack_sources_run_like_their_twins(dtype, rows):
    for K, with_resp, with_resp1 in ((3, True, True), (1, False, True), (1, False, False)):
        x3, resp = _mn_case(dtype, K=K, rows=rows)
        N, C, L = x3.shape
        steps = kernels.mn_shift_steps(N, L, rows)
        want_shift = kernels.mn_shift_xp(x3, steps)
        shift = np.empty(C, dtype)
        _emulate('mn_shift', dtype, kernels.mn_shift_args(x3, steps, shift))
        np.testing.assert_allclose(shift, want_shift, rtol=_tol(dtype))
        r = resp if with_resp else None
        want_work, want_r1 = kernels.mn_stack_xp(
            x3, shift, r, np.empty((2 * C + 1, N * L), dtype),
            np.empty((N * L, K + 1), dtype) if with_resp1 else None)
        work = np.full((2 * C + 1, N * L), np.nan, dtype)
        r1 = np.full((N * L, K + 1), np.nan, dtype) if with_resp1 else None
        _emulate('mn_stack', dtype, kernels.mn_stack_args(x3, shift, r, work, r1))
        np.testing.assert_allclose(work, want_work, rtol=_tol(dtype))
        if with_resp1:
            np.testing.assert_allclose(r1, want_r1, rtol=_tol(dtype))


@needs_gxx
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
@pytest.mark.parametrize('mode', [kernels.MN_NONE, kernels.MN_CHANNEL, kernels.MN_COMPONENT])
def test_mn_coef_and_grad_coef_sources_run_like_their_twins(dtype, mode):
    for lambda_scaling in (True, False):
        x3, resp, gamma, beta, shift, work, resp1, M, want = _mn_forward(
            dtype, mode, lambda_scaling=lambda_scaling)
        N, C, L = x3.shape
        got = np.empty_like(want)
        _emulate('mn_coef', dtype, kernels.mn_coef_args(M, N * L, shift, gamma, beta, mode,
                                                        1e-3, lambda_scaling, got))
        np.testing.assert_allclose(got, want, rtol=_tol(dtype), atol=_tol(dtype))
        rng = np.random.default_rng(3)
        S = rng.standard_normal((2 * C, 4)).astype(dtype)
        for has_gamma, has_beta in ((True, True), (False, True), (True, False)):
            g = gamma if has_gamma else None
            want_g = kernels.mn_grad_coef_xp(S, want, g, mode, has_gamma, has_beta)
            out = np.zeros_like(want_g)
            _emulate('mn_grad_coef', dtype, kernels.mn_grad_coef_args(
                S, want, g, mode, has_gamma, has_beta, out))
            views, ref = kernels.mn_grad_coef_views(out, C, 3), \
                kernels.mn_grad_coef_views(want_g, C, 3)
            used = ['x_var', 'x_mean'] + ['gamma'] * (has_gamma and mode > 0) \
                + ['beta'] * (has_beta and mode > 0)
            for name in used:
                size = C if mode == kernels.MN_CHANNEL and name in ('gamma', 'beta') else None
                np.testing.assert_allclose(views[name].ravel()[:size],
                                           ref[name].ravel()[:size], rtol=1e-4, atol=1e-5)


def test_mn_coef_twin_flags_non_finite_moments_and_non_positive_normalizers():
    x3, resp, gamma, beta, shift, work, resp1, M, _ = _mn_forward(np.float32,
                                                                  kernels.MN_COMPONENT)
    C = x3.shape[1]
    gamma = gamma.copy()
    gamma[1, 2] = -5
    M = M.copy()
    M[0, 0] = np.nan
    status = kernels.mn_coef_views(kernels.mn_coef_xp(M, 15, shift, gamma, beta, 2, 1e-3,
                                                      True), C, 3)['status']
    assert status[0, 0] == 2 and status[2, 1] == 1 and status.sum() == 3


@needs_gxx
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
@pytest.mark.parametrize('rows', [False, True])
def test_mn_combine_and_grad_stack_sources_run_like_their_twins(dtype, rows):
    x3, resp, gamma, beta, shift, work, resp1, M, buf = _mn_forward(
        dtype, kernels.MN_CHANNEL, rows=rows)
    N, C, L = x3.shape
    n, K = N * L, 3
    views = kernels.mn_coef_views(buf, C, K)
    rng = np.random.default_rng(4)
    u, xc = work[:C], work[:C]
    B = rng.standard_normal((C, K)).astype(dtype)
    r = resp1[:, :K]
    for kw in (dict(Cm=views['offset_weight'], beta=beta), dict(v=xc, B=B, Cm=B), {}):
        want = kernels.mn_combine_xp(np.empty(x3.shape, dtype), u, views['x_weight'],
                                     resp1, **kw)
        ref = u * (views['x_weight'] @ r.T)
        if 'v' in kw:
            ref = ref + kw['v'] * (kw['B'] @ r.T)
        if 'Cm' in kw:
            ref = ref + kw['Cm'] @ r.T
        if 'beta' in kw:
            ref = ref + kw['beta'][:, None]
        np.testing.assert_allclose(want, np.moveaxis(ref.reshape(C, N, L), 0, 1),
                                   rtol=1e-4, atol=1e-4)
        got = np.full(x3.shape, np.nan, dtype)
        if rows:
            got = np.full((N, C), np.nan, dtype)[:, :, None]
        _emulate('mn_combine', dtype, kernels.mn_combine_args(got, u, views['x_weight'],
                                                              resp1, **kw))
        np.testing.assert_allclose(got, want, rtol=_tol(dtype), atol=_tol(dtype))
    gy3 = rng.standard_normal(x3.shape).astype(dtype)
    want = kernels.mn_grad_stack_xp(gy3, xc, np.empty((2 * C, n), dtype))
    got = np.full((2 * C, n), np.nan, dtype)
    _emulate('mn_grad_stack', dtype, kernels.mn_grad_stack_args(gy3, xc, got))
    np.testing.assert_allclose(got, want, rtol=_tol(dtype))


def _queue(rng, T=4, K=3, D=5, n_fits=6):
    qw = rng.random((T, K))
    qw[1, 2] = 0                                        # a pruned component
    qw /= qw.sum(axis=1, keepdims=True)
    qm = rng.standard_normal((T, K, D)) + 3
    qv = rng.random((T, K, D)) + 0.2
    qv[1, 2], qm[1, 2] = 1, 0
    return qw, qm, qv, n_fits


@needs_gxx
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_mn_push_and_queue_mixture_sources_run_like_their_twins(dtype):
    rng = np.random.default_rng(8)
    qw, qm, qv, n_fits = _queue(rng)
    for kp in (3, 2):
        w = rng.random(kp).astype(dtype)
        mu, var = (rng.standard_normal((kp, 5)).astype(dtype) for _ in range(2))
        want = [a.copy() for a in (qw, qm, qv)]
        got = [a.copy() for a in (qw, qm, qv)]
        kernels.mn_push_xp(w, mu, var, *want, 2)
        _emulate('mn_push', dtype, kernels.mn_push_args(w, mu, var, *got, 2))
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
        assert (want[0][2, kp:] == 0).all() and (want[2][2, kp:] == 1).all()
    for fits, lscale in ((n_fits, True), (2, False)):
        want = kernels.mn_queue_mixture_xp(qw, qm, qv, fits, 0.9, 1e-3, lscale, dtype)
        got = np.empty_like(want)
        _emulate('mn_queue_mixture', dtype, kernels.mn_queue_mixture_args(
            qw, qm, qv, fits, 0.9, 1e-3, lscale, got))
        np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == np.float32 else 1e-11,
                                   atol=1e-6)


@needs_gxx
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_mn_record_source_runs_like_its_twin_and_is_push_and_running_update(dtype):
    rng = np.random.default_rng(12)
    qw, qm, qv, _ = _queue(rng)
    for kp in (3, 1):
        w = rng.random(kp).astype(dtype)
        w /= w.sum()
        mu, var = rng.standard_normal((kp, 5)).astype(dtype), rng.random((kp, 5)).astype(dtype)
        avg = [rng.standard_normal(5).astype(dtype), rng.random(5).astype(dtype) + 1]
        ref = [a.copy() for a in (qw, qm, qv)] + [a.copy() for a in avg]
        kernels.mn_push_xp(w, mu, var, *ref[:3], 1)
        kernels.running_update_xp(w, mu, var, ref[3], ref[4], 0.9, 1.01)
        want = [a.copy() for a in (qw, qm, qv)] + [a.copy() for a in avg]
        kernels.mn_record_xp(w, mu, var, *want[:3], 1, want[3], want[4], 0.9, 1.01)
        for a, b in zip(want, ref):
            np.testing.assert_array_equal(a, b)
        got = [a.copy() for a in (qw, qm, qv)] + [a.copy() for a in avg]
        _emulate('mn_record', dtype, kernels.mn_record_args(w, mu, var, *got[:3], 1, got[3],
                                                            got[4], 0.9, 1.01))
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=_tol(dtype))


def test_mn_queue_mixture_twin_gives_the_log_densities_of_eq_38():
    rng = np.random.default_rng(9)
    qw, qm, qv, n_fits = _queue(rng)
    T, K, D = qm.shape
    buf = kernels.mn_queue_mixture_xp(qw, qm, qv, n_fits, 0.9, 1e-3, True, np.float64)
    M = T * K
    mix = kernels.mn_queue_views(buf, M, D)
    x = rng.standard_normal((7, D)) + 3
    xs = (x - mix['shift']).T
    logp = mix['logp_weight'] @ np.concatenate([xs, xs ** 2, np.ones((1, 7))])
    slots = [(n_fits - T + t) % T for t in range(T)]          # oldest first
    tau = 0.9 ** np.arange(T - 1, -1, -1) * 0.1 / (1 - 0.9 ** T)
    w = (tau[:, None] * qw[slots]).ravel()
    mu, v = qm[slots].reshape(M, D), qv[slots].reshape(M, D) + 1e-3
    with np.errstate(divide='ignore'):
        ref = np.log(w)[:, None] - 0.5 * (np.log(2 * np.pi * v)[:, :, None]
                                          + (x.T[None] - mu[:, :, None]) ** 2
                                          / v[:, :, None]).sum(axis=1)
    np.testing.assert_allclose(logp, ref, rtol=1e-9)
    lam = qw[slots].ravel()
    np.testing.assert_allclose(mix['scale'], np.where(lam > 0, 1 / np.sqrt(lam + 1e-300), 0))


@needs_gxx
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
@pytest.mark.parametrize('mode', [kernels.MN_NONE, kernels.MN_CHANNEL, kernels.MN_COMPONENT])
def test_mn_queue_normalize_source_runs_like_its_twin_and_is_eq_38(dtype, mode):
    rng = np.random.default_rng(10)
    qw, qm, qv, n_fits = _queue(rng, D=4)
    T, K, C = qm.shape
    M = T * K
    mix = kernels.mn_queue_views(
        kernels.mn_queue_mixture_xp(qw, qm, qv, n_fits, 0.9, 1e-3, True, dtype), M, C)
    x3 = (rng.standard_normal((3, C, 5)) + 3).astype(dtype)
    xs = np.moveaxis(x3, 1, 0).reshape(C, -1) - mix['shift'][:, None]
    resp = rng.random((M, 15)).astype(dtype)
    resp /= resp.sum(axis=0)
    gamma = beta = None
    if mode == kernels.MN_CHANNEL:
        gamma, beta = (rng.random(C) + 0.5).astype(dtype), rng.standard_normal(C).astype(dtype)
    if mode == kernels.MN_COMPONENT:
        gamma = (rng.random((K, C)) + 0.5).astype(dtype)
        beta = rng.standard_normal((K, C)).astype(dtype)
    want = kernels.mn_queue_normalize_xp(np.empty(x3.shape, dtype), xs, resp, mix, gamma,
                                         beta, mode, K, 1e-3)
    # Eq. 38 term by term
    ref = np.zeros((C, 15))
    for m in range(M):
        g = gamma[m % K][:, None] if mode == kernels.MN_COMPONENT else 1
        b = beta[m % K][:, None] if mode == kernels.MN_COMPONENT else 0
        dev, var = mix['mean'][:, m:m + 1], mix['var'][:, m:m + 1]
        ref += resp[m] * mix['scale'][m] * (xs - dev - b) / np.sqrt(g * var + 1e-3)
    if mode == kernels.MN_CHANNEL:
        ref = ref * gamma[:, None] + beta[:, None]
    np.testing.assert_allclose(want, np.moveaxis(ref.reshape(C, 3, 5), 0, 1),
                               rtol=1e-4, atol=1e-4)
    got = np.full(x3.shape, np.nan, dtype)
    _emulate('mn_queue_normalize', dtype, kernels.mn_queue_normalize_args(
        got, xs, resp, mix, gamma, beta, mode, K, 1e-3))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_mn_kernels_match_their_twins():
    import cupy
    dtype = np.float32
    for mode in (kernels.MN_NONE, kernels.MN_CHANNEL, kernels.MN_COMPONENT):
        host = _mn_forward(dtype, mode, seed=mode)
        x3, resp, gamma, beta, shift, work, resp1, M, buf = [
            None if a is None else cupy.asarray(a) for a in host]
        N, C, L = x3.shape
        steps = kernels.mn_shift_steps(N, L, False)
        cupy.testing.assert_allclose(kernels.mn_shift(x3, steps), shift, rtol=1e-6)
        w2, r2 = kernels.mn_stack(x3, shift, resp, cupy.empty_like(work),
                                  cupy.empty_like(resp1))
        cupy.testing.assert_allclose(w2, work, rtol=1e-6)
        cupy.testing.assert_allclose(r2, resp1, rtol=1e-6)
        got = kernels.mn_coef(M, N * L, shift, gamma, beta, mode, 1e-3, True)
        cupy.testing.assert_allclose(got, buf, rtol=1e-5, atol=1e-6)
        views = kernels.mn_coef_views(buf, C, 3)
        y = kernels.mn_combine(cupy.empty(x3.shape, dtype), work[:C], views['x_weight'],
                               resp1, Cm=views['offset_weight'])
        cupy.testing.assert_allclose(y, kernels.mn_combine_xp(
            cupy.empty(x3.shape, dtype), work[:C], views['x_weight'], resp1,
            Cm=views['offset_weight']), rtol=1e-5, atol=1e-5)
    rng = np.random.default_rng(11)
    qw, qm, qv, n_fits = [cupy.asarray(a) for a in _queue(rng)[:3]] + [6]
    got = kernels.mn_queue_mixture(qw, qm, qv, n_fits, 0.9, 1e-3, True, dtype)
    cupy.testing.assert_allclose(got, kernels.mn_queue_mixture_xp(
        qw, qm, qv, n_fits, 0.9, 1e-3, True, dtype), rtol=1e-5, atol=1e-5)
# ---- end of mixture normalization's kernels ----
