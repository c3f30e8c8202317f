"""Tests for mixnorm.functions (paper Sec. 3.2, Eq. 34-41)."""
import mixnorm._compat  # noqa: F401  (before chainer)

import numpy as np
import pytest

import chainer
import chainer.functions as F
from chainer import gradient_check

from mixnorm import functions as MF


def _cupy_ok():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


requires_gpu = pytest.mark.skipif(not _cupy_ok(), reason='needs CuPy and a CUDA device')

EPS = 2e-5
SHAPES = [(7, 4), (3, 4, 2, 3)]
AFFINES = ['none', 'channel', 'component']


# ---------------------------------------------------------------------------
# data helpers
# ---------------------------------------------------------------------------

def n_points(shape):
    return shape[0] * int(np.prod(shape[2:], dtype=np.int64))


def make_resp(rng, n, K, scale=1.0):
    z = rng.standard_normal((n, K)) * scale
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def make_affine(rng, affine, K, C):
    if affine == 'none':
        return None, None
    shape = (C,) if affine == 'channel' else (K, C)
    gamma = rng.uniform(0.5, 1.5, shape)     # positive (component mode scales var)
    beta = rng.uniform(-0.5, 0.5, shape)
    return gamma, beta


def make_case(seed, shape, K, affine, dtype=np.float64, resp_scale=1.0):
    rng = np.random.default_rng(seed)
    # non-Gaussian, offset data with channel-dependent scales
    x = rng.standard_normal(shape) * rng.uniform(0.5, 2.0, (1, shape[1]) + (1,) * (len(shape) - 2))
    x = x + rng.uniform(-3, 3, (1, shape[1]) + (1,) * (len(shape) - 2))
    resp = make_resp(rng, n_points(shape), K, resp_scale)
    gamma, beta = make_affine(rng, affine, K, shape[1])
    cast = (lambda a: None if a is None else a.astype(dtype))
    return cast(x), cast(gamma), cast(beta), cast(resp)


def params_of(gamma, beta):
    return [p for p in (gamma, beta) if p is not None]


def to_rows(x):
    return np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])


def from_rows(y, shape):
    return np.moveaxis(y.reshape((shape[0],) + tuple(shape[2:]) + (shape[1],)), -1, 1)


# ---------------------------------------------------------------------------
# naive references: Eq. 34-37/40 with explicit loops over components
# ---------------------------------------------------------------------------

def naive_moments(x, resp):
    X = to_rows(x.astype(np.float64))
    lam, mus, vs = [], [], []
    for k in range(resp.shape[1]):
        nu = resp[:, k].astype(np.float64)
        nuh = nu / nu.sum()                                   # Eq. 36
        mu = (nuh[:, None] * X).sum(0)                        # E[nu_hat x]
        var = (nuh[:, None] * (X - mu) ** 2).sum(0)           # E[nu_hat v^2], Eq. 35
        lam.append(nu.mean())
        mus.append(mu)
        vs.append(var)
    return np.array(lam), np.array(mus), np.array(vs)


def naive_forward(x, gamma, beta, resp, eps=EPS, lambda_scaling=True, relu=False,
                  stats=None):
    """float64 NumPy, per-component loops; stats=(means, vars, scale) -> Eq. 38."""
    X = to_rows(x.astype(np.float64))
    if stats is None:
        lam, mus, vs = naive_moments(x, resp)
        scale = 1 / np.sqrt(lam) if lambda_scaling else np.ones_like(lam)
    else:
        mus, vs, scale = stats
    mode = 'none' if gamma is None else ('channel' if gamma.ndim == 1 else 'component')
    y = np.zeros_like(X)
    for k in range(resp.shape[1]):
        if mode == 'component':
            t = (X - (mus[k] + beta[k])) / np.sqrt(vs[k] * gamma[k] + eps)   # Eq. 37
        else:
            t = (X - mus[k]) / np.sqrt(vs[k] + eps)
        if relu:
            if mode == 'channel':
                t = gamma * t + beta
            t = np.maximum(t, 0)
        y += (resp[:, k] * scale[k])[:, None] * t
    if mode == 'channel' and not relu:
        y = gamma * y + beta
    return from_rows(y, x.shape)


def naive_chainer(x, gamma, beta, resp, eps=EPS, lambda_scaling=True, relu=False):
    """Same formula from chainer.functions ops (resp constant) for gradients."""
    shape = x.shape
    C = shape[1]
    X = F.reshape(F.moveaxis(x, 1, -1), (-1, C))
    n = X.shape[0]
    mode = 'none' if gamma is None else ('channel' if gamma.ndim == 1 else 'component')
    y = None
    for k in range(resp.shape[1]):
        nu = resp[:, k]
        nuh = (nu / nu.sum())[None, :]
        mu = F.matmul(nuh, X)                                  # (1, C)
        v = X - F.broadcast_to(mu, (n, C))
        var = F.matmul(nuh, v * v)                             # (1, C)
        if mode == 'component':
            gk = F.reshape(gamma[k], (1, C))
            bk = F.reshape(beta[k], (1, C))
            t = (v - F.broadcast_to(bk, (n, C))) / F.broadcast_to(F.sqrt(var * gk + eps), (n, C))
        else:
            t = v / F.broadcast_to(F.sqrt(var + eps), (n, C))
        if relu:
            if mode == 'channel':
                t = F.broadcast_to(gamma, (n, C)) * t + F.broadcast_to(beta, (n, C))
            t = F.relu(t)
        w = nu / np.sqrt(nu.mean()) if lambda_scaling else nu
        term = F.broadcast_to(w[:, None], (n, C)) * t
        y = term if y is None else y + term
    if mode == 'channel' and not relu:
        y = F.broadcast_to(gamma, (n, C)) * y + F.broadcast_to(beta, (n, C))
    y = F.reshape(y, (shape[0],) + tuple(shape[2:]) + (C,))
    return F.moveaxis(y, -1, 1)


def grads_of(fn, arrays, gy):
    vs = [chainer.Variable(a.copy()) for a in arrays]
    y = fn(*vs)
    y.grad = gy.copy()
    y.backward()
    return y.array, [v.grad for v in vs]


def call(fn, x, gamma, beta, resp, **kw):
    """Wrap fn(x, gamma, beta, resp) so the variables are exactly the non-None args."""
    has_g, has_b = gamma is not None, beta is not None

    def f(*vs):
        vs = list(vs)
        xv = vs.pop(0)
        g = vs.pop(0) if has_g else None
        b = vs.pop(0) if has_b else None
        return fn(xv, g, b, resp, **kw)
    return f, [x] + params_of(gamma, beta)


# ---------------------------------------------------------------------------
# gradient checks (finite differences, float64)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('relu', [False, True])
@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('K', [1, 2, 3])
@pytest.mark.parametrize('affine', AFFINES)
def test_check_backward_training(relu, shape, K, affine):
    x, gamma, beta, resp = make_case(K * 10 + len(shape), shape, K, affine)
    fn = MF.mixture_normalization_relu if relu else MF.mixture_normalization
    f, inputs = call(fn, x, gamma, beta, resp)
    gy = np.random.default_rng(1).standard_normal(x.shape)
    gradient_check.check_backward(f, tuple(inputs), gy, eps=1e-6, atol=1e-6, rtol=1e-5,
                                  dtype=np.float64)


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('M', [1, 2, 3])
@pytest.mark.parametrize('affine', AFFINES)
def test_check_backward_inference(shape, M, affine):
    x, gamma, beta, resp = make_case(M + 5, shape, M, affine)
    rng = np.random.default_rng(2)
    means = rng.standard_normal((M, shape[1]))
    variances = rng.uniform(0.5, 2.0, (M, shape[1]))
    scale = rng.uniform(0.5, 2.0, M)
    f, inputs = call(MF.fixed_mixture_normalization, x, gamma, beta, resp,
                     means=means, variances=variances, scale=scale)
    gy = rng.standard_normal(x.shape)
    gradient_check.check_backward(f, tuple(inputs), gy, eps=1e-6, atol=1e-6, rtol=1e-5,
                                  dtype=np.float64)
    y = f(*[chainer.Variable(a) for a in inputs]).array
    ref = naive_forward(x, gamma, beta, resp, stats=(means, variances, scale))
    np.testing.assert_allclose(y, ref, rtol=1e-11, atol=1e-11)


# ---------------------------------------------------------------------------
# K = 1 is batch normalization
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('shape', [(16, 5), (4, 5, 3, 2)])
def test_k1_equals_batch_normalization(shape):
    x, gamma, beta, _ = make_case(3, shape, 1, 'channel')
    resp = np.ones((n_points(shape), 1))
    gy = np.random.default_rng(4).standard_normal(shape)
    y, g = grads_of(lambda a, b, c: MF.mixture_normalization(a, b, c, resp, eps=EPS),
                    [x, gamma, beta], gy)
    y_bn, g_bn = grads_of(lambda a, b, c: F.batch_normalization(a, b, c, eps=EPS),
                          [x, gamma, beta], gy)
    np.testing.assert_allclose(y, y_bn, rtol=1e-10, atol=1e-10)
    for a, b in zip(g, g_bn):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------
# naive reference comparisons
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('relu', [False, True])
@pytest.mark.parametrize('shape', [(9, 3), (2, 3, 4), (3, 2, 3, 4), (2, 3, 2, 2, 3)])
@pytest.mark.parametrize('K', [1, 3])
@pytest.mark.parametrize('affine', AFFINES)
@pytest.mark.parametrize('lambda_scaling', [True, False])
def test_forward_matches_naive(relu, shape, K, affine, lambda_scaling):
    x, gamma, beta, resp = make_case(K + 20, shape, K, affine)
    fn = MF.mixture_normalization_relu if relu else MF.mixture_normalization
    y = fn(x, gamma, beta, resp, eps=EPS, lambda_scaling=lambda_scaling)
    assert y.shape == x.shape and y.dtype == x.dtype
    ref = naive_forward(x, gamma, beta, resp, lambda_scaling=lambda_scaling, relu=relu)
    np.testing.assert_allclose(y.array, ref, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize('relu', [False, True])
@pytest.mark.parametrize('shape', [(11, 3), (3, 3, 2, 4)])
@pytest.mark.parametrize('K', [2, 3])
@pytest.mark.parametrize('affine', AFFINES)
def test_grads_match_naive_chainer(relu, shape, K, affine):
    x, gamma, beta, resp = make_case(K + 30, shape, K, affine)
    fn = MF.mixture_normalization_relu if relu else MF.mixture_normalization
    gy = np.random.default_rng(5).standard_normal(shape)
    f1, inputs = call(fn, x, gamma, beta, resp)
    f2, _ = call(naive_chainer, x, gamma, beta, resp, relu=relu)
    y1, g1 = grads_of(f1, inputs, gy)
    y2, g2 = grads_of(f2, inputs, gy)
    np.testing.assert_allclose(y1, y2, rtol=1e-10, atol=1e-10)
    assert len(g1) == len(g2) == len(inputs)
    for a, b, inp in zip(g1, g2, inputs):
        assert a.shape == inp.shape and a.dtype == inp.dtype
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)


# shapes whose samples have many points (NumPy then works in x's layout, a block of
# samples at a time) and enough samples for several blocks, the last one partial
BLOCKED_SHAPES = [(6, 64, 16, 16), (5, 40, 20, 20)]


@pytest.mark.parametrize('shape', BLOCKED_SHAPES)
@pytest.mark.parametrize('K', [1, 3])
@pytest.mark.parametrize('affine', AFFINES)
def test_blocked_training_matches_naive_chainer(shape, K, affine):
    x, gamma, beta, resp = make_case(K + 40, shape, K, affine)
    gy = np.random.default_rng(6).standard_normal(shape)
    f1, inputs = call(MF.mixture_normalization, x, gamma, beta, resp)
    f2, _ = call(naive_chainer, x, gamma, beta, resp)
    y1, g1 = grads_of(f1, inputs, gy)
    y2, g2 = grads_of(f2, inputs, gy)
    np.testing.assert_allclose(y1, y2, rtol=1e-10, atol=1e-10)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
    # float32: the same up to float32 rounding
    y32, g32 = grads_of(f1, [a.astype(np.float32) for a in inputs], gy.astype(np.float32))
    np.testing.assert_allclose(y32, y2, rtol=1e-4, atol=1e-4)
    for a, b in zip(g32, g2):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * np.abs(b).max())


def _naive_queue_posteriors(x, qw, qm, qv, decay, eps):
    """(n, T K) posteriors of the points of x under the queue's mixture (Eq. 39's
    weights tau_t lambda_k^t), float64."""
    T, K, C = qm.shape
    tau = decay ** np.arange(T - 1, -1, -1) * (1 - decay) / (1 - decay ** T)
    w = (tau[:, None] * qw).reshape(-1)
    mus, vs = qm.reshape(-1, C), qv.reshape(-1, C) + eps
    X = to_rows(x.astype(np.float64))
    logp = np.stack([np.log(w[m]) - 0.5 * (np.log(2 * np.pi * vs[m])
                                           + (X - mus[m]) ** 2 / vs[m]).sum(1)
                     for m in range(T * K)])
    r = np.exp(logp - logp.max(0))
    return (r / r.sum(0)).T


def _naive_queue_forward(x, gamma, beta, qw, qm, qv, decay, eps):
    """Eq. 38-39 in float64 with loops: the posteriors of the queue's mixture (weights
    tau_t lambda_k^t) and each component's standardization, a_m = 1/sqrt(lambda_m)."""
    T, K, C = qm.shape
    mus, vs, lam = qm.reshape(-1, C), qv.reshape(-1, C) + eps, qw.reshape(-1)
    X = to_rows(x.astype(np.float64))
    r = _naive_queue_posteriors(x, qw, qm, qv, decay, eps).T
    y = np.zeros_like(X)
    for m in range(T * K):
        k = m % K
        if gamma is not None and gamma.ndim == 2:
            t = (X - mus[m] - beta[k]) / np.sqrt(gamma[k] * qv.reshape(-1, C)[m] + eps)
        else:
            t = (X - mus[m]) / np.sqrt(vs[m])
        y += (r[m] / np.sqrt(lam[m]))[:, None] * t
    if gamma is not None and gamma.ndim == 1:
        y = gamma * y + beta
    return from_rows(y, x.shape)


@pytest.mark.parametrize('shape', BLOCKED_SHAPES + [(3, 4, 2, 3)])
@pytest.mark.parametrize('affine', AFFINES)
@pytest.mark.parametrize('dtype', [np.float64, np.float32])
def test_queue_inference_matches_naive(shape, affine, dtype):
    from mixnorm import kernels
    T, K, C = 4, 3, shape[1]
    rng = np.random.default_rng(7)
    x, gamma, beta, _ = make_case(50, shape, K, affine)
    qw = rng.dirichlet(np.ones(K), T)
    qm = rng.uniform(-3, 3, (T, K, C))
    qv = rng.uniform(0.5, 4.0, (T, K, C))
    buf = kernels.mn_queue_mixture_xp(qw, qm, qv, T, 0.9, EPS, True, dtype)
    cast = (lambda a: None if a is None else a.astype(dtype))
    xv = chainer.Variable(x.astype(dtype))
    y = MF.queue_mixture_normalization(xv, cast(gamma), cast(beta), buf, K, eps=EPS)
    ref = _naive_queue_forward(x, gamma, beta, qw, qm, qv, 0.9, EPS)
    tol = 1e-9 if dtype == np.float64 else 2e-3
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_allclose(y.array, ref, rtol=tol, atol=tol * np.abs(ref).max())
    # its backward: the fixed node's with the posteriors held constant
    gy = rng.standard_normal(shape)
    y.grad = gy.astype(dtype)
    y.backward()
    resp = _naive_queue_posteriors(x, qw, qm, qv, 0.9, EPS)
    lam = qw.reshape(-1)
    params = [p if affine != 'component' else np.tile(p, (T, 1))
              for p in (gamma, beta) if p is not None]
    f, inputs = call(MF.fixed_mixture_normalization, x, *(params or [None, None]), resp,
                     means=qm.reshape(-1, C), variances=qv.reshape(-1, C),
                     scale=1 / np.sqrt(lam))
    _, (gx_ref, *_) = grads_of(f, inputs, gy)
    np.testing.assert_allclose(xv.grad, gx_ref, rtol=tol, atol=tol * np.abs(gx_ref).max())


def test_naive_chainer_agrees_with_naive_numpy():
    # guards the two references against each other
    x, gamma, beta, resp = make_case(0, (3, 2, 2, 3), 3, 'component')
    np.testing.assert_allclose(naive_chainer(x, gamma, beta, resp, relu=True).array,
                               naive_forward(x, gamma, beta, resp, relu=True), rtol=1e-12)


# ---------------------------------------------------------------------------
# semantics
# ---------------------------------------------------------------------------

def test_lambda_scaling_false_drops_factor():
    shape, K = (4, 3, 2, 2), 3
    x, _, _, _ = make_case(6, shape, K, 'none')
    n = n_points(shape)
    labels = np.arange(n) % K
    resp = np.eye(K)[labels]
    lam = resp.mean(0)
    y1 = MF.mixture_normalization(x, None, None, resp).array
    y0 = MF.mixture_normalization(x, None, None, resp, lambda_scaling=False).array
    factor = from_rows(np.repeat(1 / np.sqrt(lam[labels])[:, None], shape[1], 1), shape)
    np.testing.assert_allclose(y1, y0 * factor, rtol=1e-12)
    assert not np.allclose(y1, y0)
    # soft resp: the factor is applied per component before mixing
    _, _, _, soft = make_case(6, shape, K, 'none')
    np.testing.assert_allclose(
        MF.mixture_normalization(x, None, None, soft, lambda_scaling=False).array,
        naive_forward(x, None, None, soft, lambda_scaling=False), rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize('relu', [False, True])
def test_component_identity_affine_equals_none(relu):
    shape, K = (3, 4, 3, 2), 3
    x, _, _, resp = make_case(7, shape, K, 'none')
    fn = MF.mixture_normalization_relu if relu else MF.mixture_normalization
    y_none = fn(x, None, None, resp).array
    y_id = fn(x, np.ones((K, 4)), np.zeros((K, 4)), resp).array
    np.testing.assert_allclose(y_id, y_none, rtol=1e-13, atol=1e-13)
    y_ch = fn(x, np.ones(4), np.zeros(4), resp).array
    np.testing.assert_allclose(y_ch, y_none, rtol=1e-13, atol=1e-13)
    # and a non-identity component affine does change the output
    y_aff = fn(x, np.full((K, 4), 2.0), np.full((K, 4), 0.1), resp).array
    assert not np.allclose(y_aff, y_none)


@pytest.mark.parametrize('affine,lambda_scaling', [('none', True), ('component', True),
                                                   ('channel', False)])
def test_relu_one_hot_equals_relu_of_mn(affine, lambda_scaling):
    """Eq. 41 holds exactly for one-hot posteriors (channel affine: beta inside the
    sum only matches outside it when the weights are exactly one)."""
    shape, K = (4, 3, 3, 3), 3
    x, gamma, beta, soft = make_case(8, shape, K, affine)
    hard = np.eye(K)[soft.argmax(1)]
    kw = dict(lambda_scaling=lambda_scaling)
    y_relu = MF.mixture_normalization_relu(x, gamma, beta, hard, **kw).array
    y_ref = F.relu(MF.mixture_normalization(x, gamma, beta, hard, **kw)).array
    np.testing.assert_allclose(y_relu, y_ref, rtol=1e-12, atol=1e-12)
    # overlapping components: the approximation of Eq. 41 is not exact
    y_relu = MF.mixture_normalization_relu(x, gamma, beta, soft, **kw).array
    y_ref = F.relu(MF.mixture_normalization(x, gamma, beta, soft, **kw)).array
    assert np.abs(y_relu - y_ref).max() > 1e-3


@pytest.mark.parametrize('affine', AFFINES)
@pytest.mark.parametrize('shape', [(10, 3), (3, 3, 2, 3)])
def test_inference_with_training_moments_reproduces_training(affine, shape):
    K = 3
    x, gamma, beta, resp = make_case(9, shape, K, affine)
    lam, mus, vs = naive_moments(x, resp)
    y_train = MF.mixture_normalization(x, gamma, beta, resp).array
    y_inf = MF.fixed_mixture_normalization(x, gamma, beta, resp, mus, vs, 1 / np.sqrt(lam)).array
    np.testing.assert_allclose(y_inf, y_train, rtol=1e-10, atol=1e-10)
    # mixture_moments and return_stats expose the same statistics
    _, stats = MF.mixture_normalization(x, gamma, beta, resp, return_stats=True)
    _, stats_relu = MF.mixture_normalization_relu(x, gamma, beta, resp, return_stats=True)
    for lam2, mus2, vs2 in (MF.mixture_moments(x, resp), stats, stats_relu):
        assert lam2.shape == (K,) and mus2.shape == vs2.shape == (K, shape[1])
        np.testing.assert_allclose(lam2, lam, rtol=1e-12)
        np.testing.assert_allclose(mus2, mus, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(vs2, vs, rtol=1e-10, atol=1e-12)
    # but the gradients differ: inference statistics are constants
    gy = np.ones(shape) + np.arange(x.size).reshape(shape) % 3
    _, (gx_tr,) = grads_of(lambda a: MF.mixture_normalization(a, None, None, resp), [x], gy)
    _, (gx_in,) = grads_of(lambda a: MF.fixed_mixture_normalization(
        a, None, None, resp, mus, vs, 1 / np.sqrt(lam)), [x], gy)
    assert not np.allclose(gx_tr, gx_in)


def test_zero_component_is_finite():
    shape, K = (4, 3, 2, 2), 3
    x, gamma, beta, resp = make_case(10, shape, K, 'channel')
    resp[:, 2] = 0
    resp /= resp.sum(1, keepdims=True)
    for fn in (MF.mixture_normalization, MF.mixture_normalization_relu):
        _, g = grads_of(lambda a, b, c: fn(a, b, c, resp), [x, gamma, beta], np.ones(shape))
        y = fn(x, gamma, beta, resp).array
        assert np.isfinite(y).all() and all(np.isfinite(a).all() for a in g)
        np.testing.assert_allclose(y, fn(x, gamma, beta, resp[:, :2]).array, rtol=1e-12)


def test_float32_large_offset_is_accurate():
    """Second moments are taken around the batch mean: no cancellation."""
    shape, K = (32, 4, 4, 4), 3
    x, _, _, resp = make_case(11, shape, K, 'none')
    x32 = (x + 1e4).astype(np.float32)          # offset 1e4 * std
    ref = naive_forward(x32.astype(np.float64), None, None, resp)
    y = MF.mixture_normalization(x32, None, None, resp.astype(np.float32)).array
    assert y.dtype == np.float32
    # E[x^2] - mu^2 in float32 would be off by O(100) here
    np.testing.assert_allclose(y, ref, atol=1e-4)
    _, mus, vs = MF.mixture_moments(x32, resp.astype(np.float32))
    _, mus_ref, vs_ref = naive_moments(x32, resp)
    np.testing.assert_allclose(vs, vs_ref, rtol=1e-4)
    np.testing.assert_allclose(mus, mus_ref, rtol=1e-6)


@pytest.mark.parametrize('fn_name', ['mn', 'relu', 'inference'])
@pytest.mark.parametrize('affine', AFFINES)
def test_float16(fn_name, affine):
    shape, K = (8, 4, 3, 3), 3
    x, gamma, beta, resp = make_case(12, shape, K, affine)
    if fn_name == 'inference':
        lam, mus, vs = naive_moments(x, resp)

        def fn(a, g, b, r):
            return MF.fixed_mixture_normalization(a, g, b, r, mus.astype(np.float32),
                                                vs.astype(np.float32),
                                                (1 / np.sqrt(lam)).astype(np.float32))
    else:
        fn = MF.mixture_normalization if fn_name == 'mn' else MF.mixture_normalization_relu
    h = [None if a is None else a.astype(np.float16) for a in (x, gamma, beta)]
    f, inputs = call(fn, h[0], h[1], h[2], resp.astype(np.float32))
    y, g = grads_of(f, inputs, np.ones(shape, np.float16))
    assert y.dtype == np.float16 and np.isfinite(y).all()
    for a, inp in zip(g, inputs):
        assert a.dtype == np.float16 and np.isfinite(a).all()
    f32, inputs32 = call(fn, *[None if a is None else a.astype(np.float32) for a in h],
                         resp.astype(np.float32))
    y32 = f32(*inputs32).array
    np.testing.assert_allclose(y.astype(np.float32), y32, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize('shape,affine', [((6, 3), 'none'), ((3, 4, 4, 5), 'channel')])
def test_double_backward_matches_naive_chainer(shape, affine):
    """The gradient is differentiable (tests/test_double_backward.py checks it in
    depth): its own gradient equals the naive formula's, built from chainer.functions
    (also for samples of many points, whose forward works in x's layout on NumPy)."""
    x, gamma, beta, resp = make_case(13, shape, 2, affine)
    got = []
    for fn in (MF.mixture_normalization, naive_chainer):
        xv = chainer.Variable(x)
        y = fn(xv, gamma, beta, resp)
        gx, = chainer.grad([F.sum(y * y)], [xv], enable_double_backprop=True)
        ggx, = chainer.grad([F.sum(gx * gx)], [xv])
        got.append(ggx.array)
    np.testing.assert_allclose(got[0], got[1], rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------

def test_bad_inputs_raise():
    rng = np.random.default_rng(14)
    x = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
    resp = make_resp(rng, 16, 2).astype(np.float32)
    mn = MF.mixture_normalization
    with pytest.raises(ValueError, match=r'got shape \(2,\)'):
        mn(x[0, 0, 0], None, None, resp)                     # 1-D x
    with pytest.raises(ValueError, match=r'16'):
        mn(x, None, None, resp[:15])                         # wrong n
    with pytest.raises(ValueError, match=r'\(16,\)'):
        mn(x, None, None, resp[:, 0])                        # resp not 2-D
    with pytest.raises(ValueError, match=r'\(4,\)'):
        mn(x, np.ones(4, np.float32), None, resp)            # gamma wrong C
    with pytest.raises(ValueError, match=r'\(3, 3\)'):
        mn(x, np.ones((3, 3), np.float32), None, resp)       # gamma wrong K
    with pytest.raises(ValueError, match='both'):
        mn(x, np.ones(3, np.float32), np.zeros((2, 3), np.float32), resp)
    with pytest.raises(ValueError, match='eps'):
        mn(x, None, None, resp, eps=0)
    with pytest.raises(ValueError, match='non-positive'):
        mn(x, -np.ones((2, 3), np.float32), None, resp)      # gamma_k var_k + eps < 0
    with pytest.raises(ValueError, match=r'\(4, 3\)'):
        MF.mixture_normalization_relu(x, None, np.zeros((4, 3), np.float32), resp)
    nwc = MF.fixed_mixture_normalization
    m, v, s = np.zeros((2, 3), np.float32), np.ones((2, 3), np.float32), np.ones(2, np.float32)
    with pytest.raises(ValueError, match='means'):
        nwc(x, None, None, resp, m[:1], v, s)
    with pytest.raises(ValueError, match='variances'):
        nwc(x, None, None, resp, m, v.T, s)
    with pytest.raises(ValueError, match='scale'):
        nwc(x, None, None, resp, m, v, s[:1])
    with pytest.raises(ValueError, match='non-positive'):
        nwc(x, None, None, resp, m, -v, s)
    with pytest.raises(ValueError, match=r'\(2, 3\)'):
        nwc(x, np.ones((3, 3), np.float32), None, resp, m, v, s)
    with pytest.raises(ValueError):
        mn(x.astype(np.int32), None, None, resp)


def test_works_with_variables_and_integrates_with_graph():
    x, gamma, beta, resp = make_case(15, (2, 3, 2, 2), 2, 'channel')
    xv, gv, bv = chainer.Variable(x), chainer.Variable(gamma), chainer.Variable(beta)
    h = F.tanh(xv)
    y = MF.mixture_normalization(h, gv, bv, resp)
    F.sum(y * y).backward()
    assert xv.grad is not None and gv.grad is not None and bv.grad is not None
    assert np.isfinite(xv.grad).all()


# ---------------------------------------------------------------------------
# GPU: same results as on the CPU for the same resp
# ---------------------------------------------------------------------------

@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize('kind', ['mn', 'relu', 'inference'])
@pytest.mark.parametrize('shape', [(16, 5), (4, 5, 3, 3)])
@pytest.mark.parametrize('affine', AFFINES)
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_gpu_matches_cpu(kind, shape, affine, dtype):
    import cupy
    K = 3
    x, gamma, beta, resp = make_case(16, shape, K, affine, dtype=dtype)
    lam, mus, vs = naive_moments(x, resp)
    stats = (mus.astype(dtype), vs.astype(dtype), (1 / np.sqrt(lam)).astype(dtype))

    def fn(a, g, b, r):
        xp = chainer.backend.get_array_module(r)
        if kind == 'mn':
            return MF.mixture_normalization(a, g, b, r)
        if kind == 'relu':
            return MF.mixture_normalization_relu(a, g, b, r)
        return MF.fixed_mixture_normalization(a, g, b, r, *[xp.asarray(s) for s in stats])

    gy = np.random.default_rng(17).standard_normal(shape).astype(dtype)
    f, inputs = call(fn, x, gamma, beta, resp)
    y, g = grads_of(f, inputs, gy)
    fg, inputs_g = call(fn, *[None if a is None else cupy.asarray(a)
                              for a in (x, gamma, beta, resp)])
    vs_g = [chainer.Variable(a) for a in inputs_g]
    yg = fg(*vs_g)
    yg.grad = cupy.asarray(gy)
    yg.backward()
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(cupy.asnumpy(yg.array), y, **tol)
    for v, a in zip(vs_g, g):
        assert v.grad.dtype == a.dtype
        np.testing.assert_allclose(cupy.asnumpy(v.grad), a, **tol)


@pytest.mark.gpu
@requires_gpu
def test_gpu_float16_and_moments():
    import cupy
    x, gamma, beta, resp = make_case(18, (8, 4, 3, 3), 3, 'channel')
    y_cpu = MF.mixture_normalization(x.astype(np.float16), gamma.astype(np.float16),
                                     beta.astype(np.float16), resp.astype(np.float32)).array
    y_gpu = MF.mixture_normalization(*[cupy.asarray(a) for a in (
        x.astype(np.float16), gamma.astype(np.float16), beta.astype(np.float16),
        resp.astype(np.float32))]).array
    assert y_gpu.dtype == cupy.float16
    np.testing.assert_allclose(cupy.asnumpy(y_gpu).astype(np.float32),
                               y_cpu.astype(np.float32), rtol=1e-2, atol=1e-2)
    for a, b in zip(MF.mixture_moments(cupy.asarray(x), cupy.asarray(resp)),
                    MF.mixture_moments(x, resp)):
        np.testing.assert_allclose(cupy.asnumpy(a), b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('shape,K', [((1, 3, 4, 4), 2), ((5, 1), 2), ((6, 1, 3), 3),
                                     ((2, 2), 3), ((3, 2, 1, 1), 1)])
@pytest.mark.parametrize('relu', [False, True])
def test_edge_shapes_and_strided_inputs(shape, K, relu):
    x, gamma, beta, resp = make_case(19, shape, K, 'channel')
    fn = MF.mixture_normalization_relu if relu else MF.mixture_normalization
    # a non-contiguous x and gy
    xs = np.repeat(x, 2, axis=1)[:, ::2]
    gy = np.repeat(np.random.default_rng(20).standard_normal(shape), 2, axis=1)[:, ::2]
    y1, g1 = grads_of(lambda a, b, c: fn(a, b, c, resp), [xs, gamma, beta], gy)
    y2, g2 = grads_of(lambda a, b, c: naive_chainer(a, b, c, resp, relu=relu),
                      [x, gamma, beta], np.ascontiguousarray(gy))
    np.testing.assert_allclose(y1, y2, rtol=1e-10, atol=1e-10)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_constant_channel_is_finite(dtype):
    x, gamma, beta, resp = make_case(21, (4, 3, 3, 3), 3, 'channel', dtype=dtype)
    x[:, 1] = 2.5                                   # zero variance in every component
    for fn in (MF.mixture_normalization, MF.mixture_normalization_relu):
        y, g = grads_of(lambda a, b, c: fn(a, b, c, resp), [x, gamma, beta],
                        np.ones(x.shape, dtype))
        assert np.isfinite(y).all() and all(np.isfinite(a).all() for a in g)
    # xhat = 0 on that channel, so y = beta there
    y = MF.mixture_normalization(x, gamma, beta, resp).array
    np.testing.assert_allclose(y[:, 1], beta[1], atol=1e-4)
