"""Second-order gradients of mixture normalization (double backprop).

An ordinary ``backward()`` takes the analytic fast path (``MixtureNormalizationGrad``);
a backward that builds a graph (``enable_double_backprop=True``) takes a composite of
chainer.functions instead.  These tests check that composite: its second derivatives
against finite differences (``check_double_backward``) for both nodes and the ReLU form,
its first derivatives against the fast path's, its second derivatives against a naive
per-component chainer.functions formula, the gradients of the fixed node's means and
variances, and one use, a WGAN-GP gradient penalty through a small critic, on the CPU
and on the stand-in device of ``mixnorm.testing.opcount``.
"""
import mixnorm._compat  # noqa: F401  (before chainer)

import numpy as np
import pytest

import chainer
import chainer.functions as F
from chainer import gradient_check

from mixnorm import functions as MF
from mixnorm.testing import opcount as _opcount

from test_functions import naive_chainer

DTYPES = [np.float16, np.float32, np.float64]
SHAPES = [(10, 3), (2, 3, 2, 3)]
AFFINES = ['none', 'channel', 'component']
KINDS = ['mn', 'relu', 'fixed']


def _tolerance(dtype):
    """As Chainer's own batch-normalization tests: finite differences in float64 and
    1e-3 / 1e-2 (atol / rtol), 1e-2 / 1e-2 for float16 inputs."""
    if dtype == np.float16:
        return dict(dtype=np.float64, atol=1e-2, rtol=1e-2)
    return dict(dtype=np.float64, atol=1e-3, rtol=1e-2)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _points(a):
    """(N, C, *spatial) -> (n, C), the points in resp's row order."""
    return np.moveaxis(a, 1, -1).reshape(-1, a.shape[1])


def _pre_activations(case):
    """Every component's pre-activation under Eq. 40 (float64), for the kink margin."""
    x, resp = _points(case['x'].astype(np.float64)), case['resp'].astype(np.float64)
    gamma, beta = case['gamma'], case['beta']
    out = []
    for k in range(resp.shape[1]):
        nuh = resp[:, k] / resp[:, k].sum()
        mu = nuh @ x
        var = nuh @ (x - mu) ** 2
        if gamma is not None and gamma.ndim == 2:
            t = (x - mu - beta[k]) / np.sqrt(gamma[k] * var + 2e-5)
        else:
            t = (x - mu) / np.sqrt(var + 2e-5)
            if gamma is not None:
                t = gamma * t + beta
        out.append(t)
    return np.array(out)


def _case(kind, shape, K, affine, dtype, seed=0):
    """Well-conditioned data: x about unit scale with an offset per channel (component
    variances well above 0), soft posteriors; under Eq. 40 no pre-activation within
    0.005 of the ReLU's kink, where finite differences do not apply (the first seed
    from ``seed`` that gives such data)."""
    for s in range(seed, seed + 200):
        rng = np.random.default_rng(s)
        C = shape[1]
        n = shape[0] * int(np.prod(shape[2:], dtype=np.int64))
        offset = rng.uniform(-2, 2, (1, C) + (1,) * (len(shape) - 2))
        case = dict(x=rng.uniform(-1.5, 1.5, shape) + offset,
                    resp=_softmax(rng.standard_normal((n, K))), gamma=None, beta=None)
        if affine != 'none':
            pshape = (C,) if affine == 'channel' else (K, C)
            case['gamma'] = rng.uniform(0.5, 1.5, pshape)
            case['beta'] = rng.uniform(-0.5, 0.5, pshape)
        if kind == 'fixed':
            case['means'] = offset.reshape(1, C) + rng.uniform(-0.5, 0.5, (K, C))
            case['variances'] = rng.uniform(0.5, 1.5, (K, C))
            case['scale'] = rng.uniform(0.8, 1.2, K)
        if kind != 'relu' or np.abs(_pre_activations(case)).min() > 5e-3:
            break
    compute = np.float64 if dtype == np.float64 else np.float32
    out = {}
    for name, a in case.items():
        if a is not None:
            out[name] = a.astype(compute if name in ('resp', 'scale') else dtype)
        else:
            out[name] = None
    return out


def _function(kind, case):
    """``(f, inputs)``: ``f(*inputs)`` applies the public function of ``kind`` with
    the case's resp (and scale) as constants; ``inputs`` are the differentiable
    arguments given (x, gamma, beta where given, and the fixed node's means and
    variances)."""
    names = ['x'] + [p for p in ('gamma', 'beta') if case[p] is not None]
    if kind == 'fixed':
        names += ['means', 'variances']

    def f(*vs):
        a = dict(case, **dict(zip(names, vs)))
        if kind == 'fixed':
            return MF.fixed_mixture_normalization(a['x'], a['gamma'], a['beta'], a['resp'],
                                                  a['means'], a['variances'], a['scale'])
        fn = MF.mixture_normalization if kind == 'mn' else MF.mixture_normalization_relu
        return fn(a['x'], a['gamma'], a['beta'], a['resp'])
    return f, [case[name] for name in names]


def _random_like(rng, arrays):
    return [rng.uniform(-1, 1, a.shape).astype(a.dtype) for a in arrays]


# ---------------------------------------------------------------------------
# finite differences
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('K', [1, 3])
@pytest.mark.parametrize('affine', AFFINES)
@pytest.mark.parametrize('shape', SHAPES)
def test_check_double_backward(kind, dtype, K, affine, shape):
    case = _case(kind, shape, K, affine, dtype)
    f, inputs = _function(kind, case)
    rng = np.random.default_rng(1)
    gy, = _random_like(rng, [case['x']])
    ggs = _random_like(rng, inputs)

    def squared(*vs):              # y * y: nonlinear in every input, beta included
        y = f(*vs)
        return y * y
    np.random.seed(2)              # the directions check_backward draws
    gradient_check.check_double_backward(squared, inputs, gy, ggs, **_tolerance(dtype))


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('K', [1, 3])
@pytest.mark.parametrize('affine', AFFINES)
@pytest.mark.parametrize('shape', SHAPES)
def test_fixed_check_backward_with_statistics(dtype, K, affine, shape):
    """First order (the analytic fast path), means and variances included."""
    case = _case('fixed', shape, K, affine, dtype)
    f, inputs = _function('fixed', case)
    gy, = _random_like(np.random.default_rng(3), [case['x']])
    np.random.seed(4)
    gradient_check.check_backward(f, inputs, gy, **_tolerance(dtype))


def test_fixed_statistics_gradients_only_when_asked():
    case = _case('fixed', (10, 3), 3, 'channel', np.float64)
    means, variances = chainer.Variable(case['means']), chainer.Variable(case['variances'])
    x = chainer.Variable(case['x'])
    y = MF.fixed_mixture_normalization(x, case['gamma'], case['beta'], case['resp'],
                                       means, variances, case['scale'])
    F.sum(y * y).backward()
    assert means.grad.shape == (3, 3) and variances.grad.shape == (3, 3)
    assert means.grad.dtype == variances.grad.dtype == np.float64
    # arrays: constants, as before; the same output and x gradient
    x2 = chainer.Variable(case['x'])
    y2 = MF.fixed_mixture_normalization(x2, case['gamma'], case['beta'], case['resp'],
                                        case['means'], case['variances'], case['scale'])
    F.sum(y2 * y2).backward()
    np.testing.assert_array_equal(y2.array, y.array)
    np.testing.assert_array_equal(x2.grad, x.grad)


def test_fixed_statistics_gradient_dtypes():
    """float16 x with float32 statistics (as the link passes them): each gradient in
    its input's dtype, on both paths."""
    case = _case('fixed', (10, 3), 3, 'component', np.float16)
    for double in (False, True):
        x = chainer.Variable(case['x'])
        m = chainer.Variable(case['means'].astype(np.float32))
        v = chainer.Variable(case['variances'].astype(np.float64))
        y = MF.fixed_mixture_normalization(x, None, None, case['resp'], m, v,
                                           case['scale'])
        gx, gm, gv = chainer.grad([F.sum(y * y)], [x, m, v],
                                  enable_double_backprop=double)
        assert (gx.dtype, gm.dtype, gv.dtype) == (np.float16, np.float32, np.float64)
        assert all(np.isfinite(g.array).all() for g in (gx, gm, gv))


# ---------------------------------------------------------------------------
# the composite against the fast path and against a naive formula
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('K', [1, 3])
@pytest.mark.parametrize('affine', AFFINES)
@pytest.mark.parametrize('shape', SHAPES)
def test_composite_first_order_equals_fast_path(kind, dtype, K, affine, shape):
    case = _case(kind, shape, K, affine, dtype)
    f, inputs = _function(kind, case)
    gy, = _random_like(np.random.default_rng(5), [case['x']])
    got = []
    for double in (False, True):
        vs = [chainer.Variable(a.copy()) for a in inputs]
        grads = chainer.grad([f(*vs)], vs, grad_outputs=[chainer.Variable(gy)],
                             enable_double_backprop=double)
        assert all(g.dtype == a.dtype and g.shape == a.shape
                   for g, a in zip(grads, inputs))
        # the fast path's gradients are not differentiable, the composite's are
        assert all((g.creator is not None) == double for g in grads)
        got.append([g.array.astype(np.float64) for g in grads])
    tol = {np.float16: 1e-2, np.float32: 1e-4, np.float64: 1e-9}[dtype]
    for fast, composite in zip(*got):
        np.testing.assert_allclose(composite, fast, rtol=tol,
                                   atol=tol * max(1.0, np.abs(fast).max()))


@pytest.mark.parametrize('relu', [False, True])
@pytest.mark.parametrize('K', [1, 3])
@pytest.mark.parametrize('affine', AFFINES)
@pytest.mark.parametrize('shape', SHAPES)
def test_second_order_equals_naive_formula(relu, K, affine, shape):
    """d/d(x, gamma, beta) of <gx, w> against the per-component chainer.functions
    formula of tests/test_functions.py, whose double backprop is Chainer's own."""
    case = _case('relu' if relu else 'mn', shape, K, affine, np.float64)
    got = []
    for fn in (MF.mixture_normalization_relu if relu else MF.mixture_normalization,
               lambda *a: naive_chainer(*a, relu=relu)):
        vs = [None if case[k] is None else chainer.Variable(case[k].copy())
              for k in ('x', 'gamma', 'beta')]
        y = fn(vs[0], vs[1], vs[2], case['resp'])
        w = np.random.default_rng(6).uniform(-1, 1, y.shape)
        gx, = chainer.grad([F.sum(y * y * w)], [vs[0]], enable_double_backprop=True)
        u = np.random.default_rng(7).uniform(-1, 1, gx.shape)
        given = [v for v in vs if v is not None]
        got.append([g.array for g in chainer.grad([F.sum(gx * u)], given)])
    for ours, naive in zip(*got):
        np.testing.assert_allclose(ours, naive, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize('kind', ['mn', 'relu'])
@pytest.mark.parametrize('x_is_variable', [False, True])
def test_gradient_of_gamma_differentiated_again(kind, x_is_variable):
    """Only gamma's gradient asked for first, then differentiated w.r.t. gamma, beta
    and (where it is a Variable) x; an x given as an array stays a constant."""
    case = _case(kind, (2, 3, 2, 3), 3, 'channel', np.float64)
    got = []
    for fn in (MF.mixture_normalization if kind == 'mn' else MF.mixture_normalization_relu,
               lambda *a: naive_chainer(*a, relu=kind == 'relu')):
        x = chainer.Variable(case['x'].copy()) if x_is_variable else case['x']
        gamma, beta = chainer.Variable(case['gamma']), chainer.Variable(case['beta'])
        y = fn(x, gamma, beta, case['resp'])
        w = np.random.default_rng(9).uniform(-1, 1, y.shape)
        gg, = chainer.grad([F.sum(y * y * w)], [gamma], enable_double_backprop=True)
        wrt = [gamma, beta] + ([x] if x_is_variable else [])
        got.append([g.array for g in chainer.grad([F.sum(gg * gg)], wrt)])
    for ours, naive in zip(*got):
        np.testing.assert_allclose(ours, naive, rtol=1e-7, atol=1e-9)


def test_ordinary_backward_retains_no_input():
    """The fast path keeps what it kept: no input array is retained by the forward (the
    composite reads the forward's shifted copy of x and host copies of the rest)."""
    case = _case('fixed', (2, 3, 2, 3), 3, 'channel', np.float32)
    for kind in KINDS:
        f, inputs = _function(kind, case)
        vs = [chainer.Variable(a) for a in inputs]
        y = f(*vs)
        assert y.creator._input_indexes_to_retain is None
        assert all(v.node.data is None for v in vs)


def test_double_backward_with_a_reducer_is_refused():
    class OneRank:
        rank, size = 0, 1

        def allgather(self, a):
            return np.asarray(a, np.float64)[None]

        def sum(self, a):
            return np.asarray(a, np.float64)
    case = _case('mn', (10, 3), 3, 'channel', np.float64)
    x = chainer.Variable(case['x'])
    y = MF.mixture_normalization(x, case['gamma'], case['beta'], case['resp'],
                                 reducer=OneRank())
    gx, = chainer.grad([F.sum(y * y)], [x])            # first order: the fast path
    assert gx.creator is None and np.isfinite(gx.array).all()
    with pytest.raises(NotImplementedError, match='reducer'):
        chainer.grad([F.sum(y * y)], [x], enable_double_backprop=True)


# ---------------------------------------------------------------------------
# a use: WGAN-GP's gradient penalty through a critic with an MN layer
# ---------------------------------------------------------------------------

def _critic_params(rng, D, C, K, fixed):
    params = dict(W1=rng.uniform(-1, 1, (C, D)), b1=rng.uniform(-0.5, 0.5, C),
                  W2=rng.uniform(-1, 1, (1, C)))
    if fixed:      # component affine and statistics that are learned as well
        params.update(gamma=rng.uniform(0.5, 1.5, (K, C)),
                      beta=rng.uniform(-0.5, 0.5, (K, C)),
                      means=rng.uniform(-0.5, 0.5, (K, C)),
                      variances=rng.uniform(1, 2, (K, C)))
    else:
        params.update(gamma=rng.uniform(0.5, 1.5, C), beta=rng.uniform(-0.5, 0.5, C))
    return params


def _penalty(x, p, resp, scale):
    """sum_i (||d D / d x_i|| - 1)^2 for D(x) = W2 tanh(MN(W1 x + b1)), summed over the
    batch (MN's statistics couple the samples)."""
    xv = chainer.Variable(x)
    h = F.matmul(xv, p['W1'], transb=True) + p['b1']    # (F.linear's output is NumPy's
    #                                                     on the stand-in device)
    if 'means' in p:
        h = MF.fixed_mixture_normalization(h, p['gamma'], p['beta'], resp, p['means'],
                                           p['variances'], scale)
    else:
        h = MF.mixture_normalization(h, p['gamma'], p['beta'], resp)
    d = F.sum(F.matmul(F.tanh(h), p['W2'], transb=True))
    gx, = chainer.grad([d], [xv], enable_double_backprop=True)
    norm = F.sqrt(F.sum(gx * gx, axis=1))
    return F.sum((norm - 1) ** 2)


@pytest.mark.parametrize('fixed', [False, True])
def test_gradient_penalty_on_cpu_and_stand_in_device(fixed):
    N, D, C, K = 12, 4, 3, 3
    rng = np.random.default_rng(8)
    x = rng.standard_normal((N, D))
    resp = _softmax(2 * rng.standard_normal((N, K)))
    scale = rng.uniform(0.8, 1.2, K)
    arrays = _critic_params(rng, D, C, K, fixed)

    def penalty_and_grads(to_device):
        p = {k: chainer.Variable(to_device(a)) for k, a in arrays.items()}
        gp = _penalty(to_device(x), p, to_device(resp), to_device(scale))
        gp.backward()
        assert all(isinstance(v.grad, type(p['W1'].array)) for v in p.values())
        return float(gp.array), {k: np.asarray(v.grad) for k, v in p.items()}

    value, grads = penalty_and_grads(np.array)
    # central differences of the penalty in each parameter
    for name, a in arrays.items():
        numeric = np.empty_like(a)
        for i in np.ndindex(a.shape):
            plus, minus = dict(arrays), dict(arrays)
            plus[name], minus[name] = a.copy(), a.copy()
            plus[name][i] += 1e-6
            minus[name][i] -= 1e-6
            fp = _penalty(x, plus, resp, scale).array
            fm = _penalty(x, minus, resp, scale).array
            numeric[i] = (fp - fm) / 2e-6
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-5, atol=1e-7,
                                   err_msg=name)
    # the same on the stand-in device: the CuPy branches, on the CPU
    with _opcount.counting():
        dev_value, dev_grads = penalty_and_grads(_opcount.to_device)
    assert dev_value == pytest.approx(value, rel=1e-12)
    for name in arrays:
        np.testing.assert_allclose(dev_grads[name], grads[name], rtol=1e-10, atol=1e-12)
