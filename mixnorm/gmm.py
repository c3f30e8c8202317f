"""Per-batch Gaussian mixture fitting for Mixture Normalization (paper Sec. 3.2, 4.2, 5.1, 5.3).

One xp-generic code path (NumPy or CuPy, chosen by the input's array module):

1. :func:`kmeans_plusplus` -- greedy K-means++ seeding with ``2 + int(log K)`` local
   trials per new centre (the paper's "2 + log(K) trials");
2. ``kmeans_iters`` Lloyd iterations (:func:`_lloyd_step`);
3. the mixture is initialised from the K-means partition (:func:`_m_step` on one-hot
   responsibilities) and refined by ``em_iters`` EM iterations of a diagonal-covariance
   GMM (:func:`_e_step`, :func:`_m_step`);
4. components whose weight falls below ``min_weight`` (paper Sec. 5.3: 0.01) are
   dropped and the remaining weights renormalised, so their points are merged into the
   components that remain (the returned GMM has K' <= K components).

The paper's "EM iter." value E maps to ``kmeans_iters = em_iters = E / 2``
(:func:`split_em_iters`).

Numerics.  The data are fitted in a shifted and scaled frame ``z = (x - shift) / scale``
(``shift``, ``scale`` estimated on a row subsample; ``scale >= sqrt(eps)``), so float32
is safe for huge or tiny magnitudes and for data far from the origin; parameters are
returned in the original units.  ``z`` and ``z**2`` are built once (contiguous) and every
pass over the data is a matrix product: distances ``|z|^2 - 2 c z^T + |c|^2``,
log-densities ``-2 (m / v) z^T + (1 / v) (z**2)^T`` and moments ``R z``, ``R z**2``.
Per-point quantities are kept component-major, (K, n), so that the row-wise work
(log-sum-exp, argmin) runs over contiguous memory.  float16 input is fitted in float32,
float64 in float64.  Degenerate data never yields NaN: duplicate seeds (all-identical
points, fewer distinct points than K, n < K) leave components empty, which get weight 0
and are pruned, so such data simply yield fewer components (at least one).
``eps`` is an absolute variance floor added to every variance (as scikit-learn's
``reg_covar``).  Parameters are returned in the dtype the fit ran in, so float32
input must have variances representable in float32 (|x| up to about 1e18).

On the GPU the fit draws from CuPy's device RNG and keeps every array on the device;
the host synchronises only to check the input for NaN/Inf and to read K' after pruning.
"""
import math
from typing import NamedTuple

import numpy

#: Rows used to estimate the shift and scale of the fitting frame.
_FRAME_ROWS = 512
#: ``fit_fraction`` never subsamples below this many points per component.
MIN_POINTS_PER_COMPONENT = 32


class GMM(NamedTuple):
    """Diagonal-covariance Gaussian mixture: ``weights (K,)``, ``means (K, d)``,
    ``variances (K, d)``, arrays on the device of the data they were fitted to."""
    weights: object
    means: object
    variances: object

    @property
    def n_components(self):
        return int(self.weights.shape[0])


def get_array_module(x):
    """``cupy`` for CuPy arrays, else ``numpy`` (no Chainer import needed)."""
    mod = type(x).__module__
    if mod.startswith('cupy'):
        import cupy
        return cupy
    return numpy


def split_em_iters(em_iters):
    """Map the paper's "EM iter." E to ``(kmeans_iters, em_iters)`` = (ceil(E/2), floor(E/2)).

    The paper counts K-means and EM iterations together and splits them evenly.
    """
    if int(em_iters) != em_iters or em_iters < 0:
        raise ValueError('EM iter. must be a non-negative integer, got %r' % (em_iters,))
    em_iters = int(em_iters)
    return (em_iters + 1) // 2, em_iters // 2


def default_local_trials(n_components):
    """The paper's ``2 + log(K)`` local trials of greedy K-means++ (natural log)."""
    return 2 + int(math.log(n_components))


# --------------------------------------------------------------------------- validation

def _check_points(x, name='x'):
    """Validate an (n, d) real array; return (xp, work dtype)."""
    xp = get_array_module(x)
    if not hasattr(x, 'ndim') or not hasattr(x, 'dtype'):
        raise TypeError('%s must be a numpy or cupy array, got %s' % (name, type(x).__name__))
    if x.ndim != 2:
        raise ValueError('%s must be an (n_points, n_features) array, got shape %s; '
                         'for activations of shape (N, C, H, W) move channels last and '
                         'flatten to (N*H*W, C)' % (name, tuple(x.shape)))
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError('%s has no points or no features: shape %s' % (name, tuple(x.shape)))
    if x.dtype.kind not in 'fiub':
        raise TypeError('%s must be real-valued, got dtype %s' % (name, x.dtype))
    work = xp.float64 if x.dtype == xp.float64 or x.dtype.kind in 'iub' else xp.float32
    return xp, xp.dtype(work)


def _raise_not_finite(x, name='x'):
    xp = get_array_module(x)
    bad = ~xp.isfinite(x)
    n_nan = int(xp.isnan(x).sum())
    n_inf = int(bad.sum()) - n_nan
    rows = int(bad.any(axis=1).sum())
    raise ValueError('%s contains %d NaN and %d Inf values (in %d of %d points); '
                     'a Gaussian mixture cannot be fitted to non-finite data: check the '
                     'layer input (learning rate too high? a division by zero upstream?)'
                     % (name, n_nan, n_inf, rows, x.shape[0]))


# ------------------------------------------------------------------------ fitting frame

class _Frame(NamedTuple):
    """Data in the fitting frame: ``z`` (n, d), ``z2 = z**2`` and ``rownorm = |z|^2`` (n,),
    plus the transform ``z = (x - shift) / scale`` (shift (d,), scale 0-d; float64)."""
    z: object
    z2: object
    rownorm: object
    shift: object
    scale: object


def _make_frame(x, work, eps):
    xp = get_array_module(x)
    n, d = x.shape
    stride = max(1, n // _FRAME_ROWS)
    sub = x[::stride].astype(xp.float64)
    shift = sub.mean(axis=0)
    scale = xp.maximum(xp.sqrt(((sub - shift) ** 2).mean()), math.sqrt(eps))
    scale = xp.where(xp.isfinite(scale), scale, 1.0)
    z = xp.empty((n, d), dtype=work)
    xp.subtract(x, shift.astype(work), out=z)      # promotes f16/int to the work dtype
    z *= (1.0 / scale).astype(work)
    z2 = z * z
    rownorm = z2 @ xp.ones((d,), dtype=work)
    return _Frame(z, z2, rownorm, shift, scale)


def _frame_for(x, eps):
    """Validate ``x`` (finite values) and build its fitting frame."""
    xp, work = _check_points(x)
    with numpy.errstate(invalid='ignore', over='ignore'):  # NaN/Inf are reported below
        frame = _make_frame(x, work, eps)
    if not bool(xp.isfinite(frame.rownorm.sum())):       # the one host sync of the check
        if not bool(xp.isfinite(x).all()):
            _raise_not_finite(x)
        # finite, but a far outlier missed by the subsample overflows z**2: refit the
        # frame in float64 (the returned parameters keep the input's dtype).
        frame = _make_frame(x, xp.dtype(xp.float64), eps)
    return frame


def _to_frame(gmm, frame, work):
    """Express a GMM given in data units in the fitting frame."""
    s = frame.scale
    means = ((gmm.means - frame.shift) / s).astype(work)
    variances = (gmm.variances / (s * s)).astype(work)
    return GMM(gmm.weights.astype(work), means, variances)


def _from_frame(gmm, frame, dtype):
    s = frame.scale
    means = (frame.shift + gmm.means.astype(frame.shift.dtype) * s).astype(dtype)
    variances = (gmm.variances.astype(frame.shift.dtype) * (s * s)).astype(dtype)
    return GMM(gmm.weights.astype(dtype), means, variances)


# ---------------------------------------------------------------------------- seeding

def _sq_dist(frame, centres):
    """Squared distances (m, n) of ``centres`` (m, d) to all points, clipped at 0."""
    xp = get_array_module(centres)
    D = (-2.0 * centres) @ frame.z.T
    D += frame.rownorm[None, :]
    D += (centres * centres).sum(axis=1)[:, None]
    return xp.maximum(D, 0, out=D)


def _kmeans_plusplus(frame, n_components, n_local_trials, rs):
    """Greedy K-means++ on the frame.

    Returns the indices (K,) of the chosen points and the nearest-seed labels (n,) of
    every point (ties go to the earlier seed, as ``argmin``), tracked on the way so that
    the first Lloyd assignment costs no extra pass over the data.
    """
    xp = get_array_module(frame.z)
    n = frame.z.shape[0]
    indices = [rs.randint(0, n, size=1)]
    closest = _sq_dist(frame, frame.z[indices[0]])[0]
    labels = xp.zeros((n,), dtype=xp.int64)
    for k in range(1, n_components):
        cum = xp.cumsum(closest, dtype=xp.float64)
        u = rs.random_sample(n_local_trials) * cum[-1]
        cand = xp.minimum(xp.searchsorted(cum, u, side='right'), n - 1)
        dist = _sq_dist(frame, frame.z[cand])                     # (trials, n)
        best = xp.argmin(xp.minimum(dist, closest[None, :]).sum(axis=1, dtype=xp.float64))
        d_best = dist[best]                                       # device index, no sync
        labels = xp.where(d_best < closest, k, labels)            # no boolean scatter
        closest = xp.minimum(closest, d_best)
        indices.append(xp.reshape(cand[best], (1,)))
    return xp.concatenate(indices), labels


def kmeans_plusplus(x, n_components, n_local_trials=None, seed=None):
    """Greedy K-means++ seeding of ``x`` (n, d); returns the indices (K,) of the seeds.

    Each new centre is the best (lowest potential) of ``n_local_trials`` candidates
    drawn with probability proportional to the squared distance to the nearest chosen
    centre (default ``2 + int(log K)``).
    """
    frame = _frame_for(x, 1e-5)
    xp = get_array_module(x)
    n_local_trials = _check_trials(n_components, n_local_trials)
    return _kmeans_plusplus(frame, n_components, n_local_trials, xp.random.RandomState(seed))[0]


def _check_trials(n_components, n_local_trials):
    if n_local_trials is None:
        return default_local_trials(n_components)
    if int(n_local_trials) != n_local_trials or n_local_trials < 1:
        raise ValueError('n_local_trials must be a positive integer, got %r' % (n_local_trials,))
    return int(n_local_trials)


# ------------------------------------------------------------------------ Lloyd, E, M

def _lloyd_labels(frame, centres):
    """Nearest-centre labels (n,) of every point (the assignment half of a Lloyd step)."""
    D = (-2.0 * centres) @ frame.z.T
    D += (centres * centres).sum(axis=1)[:, None]
    return D.argmin(axis=0)


def _one_hot(labels, n_components, dtype):
    """Hard responsibilities (K, n) of a partition."""
    xp = get_array_module(labels)
    return (labels[None, :] == xp.arange(n_components)[:, None]).astype(dtype)


def _m_step(frame, resp, eps_z):
    """M-step: weights, means and variances (+ eps floor) from responsibilities (K, n)."""
    xp = get_array_module(resp)
    nk = resp.sum(axis=1)
    inv = 1.0 / xp.maximum(nk, 10 * xp.finfo(resp.dtype).eps)
    means = (resp @ frame.z) * inv[:, None]
    sq = (resp @ frame.z2) * inv[:, None]
    variances = xp.maximum(sq - means * means, 0) + eps_z
    return GMM(nk / resp.shape[1], means, variances)


def _log_prob(frame, gmm):
    """Weighted log-densities log(w_k N(z_i | m_k, v_k)), shape (K, n)."""
    xp = get_array_module(gmm.means)
    d = gmm.means.shape[1]
    prec = 1.0 / gmm.variances
    const = ((gmm.means * gmm.means * prec).sum(axis=1)
             + xp.log(gmm.variances).sum(axis=1) + d * math.log(2 * math.pi))
    lp = (-2.0 * gmm.means * prec) @ frame.z.T
    lp += prec @ frame.z2.T
    lp += const[:, None]
    lp *= -0.5
    with numpy.errstate(divide='ignore'):
        lp += xp.log(gmm.weights)[:, None]          # empty components: -inf, never NaN
    return lp


def _e_step(frame, gmm):
    """E-step: posteriors (K, n) and per-point log-likelihood (n,) (log-sum-exp)."""
    from mixnorm import kernels
    return kernels.log_softmax_columns(_log_prob(frame, gmm))


def _fit_in_frame(frame, n_components, kmeans_iters, em_iters, n_local_trials, eps_z, rs):
    dtype = frame.z.dtype
    _, labels = _kmeans_plusplus(frame, n_components, n_local_trials, rs)
    for it in range(max(kmeans_iters, 1)):
        if it:
            labels = _lloyd_labels(frame, gmm.means)
        gmm = _m_step(frame, _one_hot(labels, n_components, dtype), eps_z)
    for _ in range(em_iters):
        resp, _ = _e_step(frame, gmm)
        gmm = _m_step(frame, resp, eps_z)
    return gmm


def prune(gmm, min_weight):
    """Drop components with weight < ``min_weight`` and renormalise (paper Sec. 5.3).

    The heaviest component is always kept.  Reads K' on the host (one sync on GPU).
    """
    xp = get_array_module(gmm.weights)
    keep = gmm.weights >= min_weight
    keep[xp.argmax(gmm.weights)] = True
    idx = xp.nonzero(keep)[0]
    if int(idx.shape[0]) == gmm.weights.shape[0]:
        return gmm
    w = gmm.weights[idx]
    return GMM(w / w.sum(), gmm.means[idx], gmm.variances[idx])


def fit_gmm(x, n_components, kmeans_iters=1, em_iters=1, *, n_local_trials=None,
            fit_fraction=1.0, min_weight=0.01, eps=1e-5, seed=None,
            return_responsibilities=False):
    """Fit a diagonal-covariance GMM to the rows of ``x`` (n, d) (paper Sec. 3.2).

    K-means++ seeding (``n_local_trials``, default ``2 + int(log K)``), ``kmeans_iters``
    Lloyd iterations (at least one: it gives the partition that initialises EM), then
    ``em_iters`` EM iterations; components lighter than ``min_weight`` are pruned.
    ``fit_fraction`` < 1 fits a random subset of that fraction of the points (never
    fewer than ``MIN_POINTS_PER_COMPONENT * K`` or all of them).  Returns a :class:`GMM`
    in float64 for float64 input, else float32, on the device of ``x``.
    Raises ``ValueError`` for NaN/Inf input, bad shapes or bad arguments.

    With ``return_responsibilities`` it returns ``(gmm, nu)``, ``nu`` (n, K') the
    posteriors of all n points under the returned mixture, as :func:`responsibilities`
    gives them, reusing the fit's pass over the data when every point was fitted.
    """
    xp, work = _check_points(x)
    if int(n_components) != n_components or n_components < 1:
        raise ValueError('n_components must be a positive integer, got %r' % (n_components,))
    n_components = int(n_components)
    for name, v in (('kmeans_iters', kmeans_iters), ('em_iters', em_iters)):
        if int(v) != v or v < 0:
            raise ValueError('%s must be a non-negative integer, got %r' % (name, v))
    if not 0.0 < fit_fraction <= 1.0:
        raise ValueError('fit_fraction must be in (0, 1], got %r' % (fit_fraction,))
    if not 0.0 <= min_weight < 1.0:
        raise ValueError('min_weight must be in [0, 1), got %r' % (min_weight,))
    if not eps > 0:
        raise ValueError('eps must be positive, got %r' % (eps,))
    n_local_trials = _check_trials(n_components, n_local_trials)
    rs = xp.random.RandomState(seed)

    n = x.shape[0]
    points = x
    if fit_fraction < 1.0:
        m = min(n, max(int(math.ceil(fit_fraction * n)), MIN_POINTS_PER_COMPONENT * n_components))
        if m < n:
            points = x[rs.permutation(n)[:m]]
    frame = _frame_for(points, eps)
    eps_z = (eps / (frame.scale * frame.scale)).astype(frame.z.dtype)
    gmm_z = prune(_fit_in_frame(frame, n_components, int(kmeans_iters), int(em_iters),
                                n_local_trials, eps_z, rs), min_weight)
    gmm = _from_frame(gmm_z, frame, work)
    if not return_responsibilities:
        return gmm
    if points is not x:                     # fitted on a subset: score every point
        return gmm, responsibilities(x, gmm)
    return gmm, _e_step(frame, gmm_z)[0].T


# ------------------------------------------------------------------ scoring a mixture

def _check_gmm(x, gmm):
    xp, work = _check_points(x)
    d = x.shape[1]
    K = gmm.weights.shape[0]
    if gmm.means.shape != (K, d) or gmm.variances.shape != (K, d):
        raise ValueError('GMM shapes do not match data with %d features: weights %s, '
                         'means %s, variances %s' % (d, gmm.weights.shape, gmm.means.shape,
                                                     gmm.variances.shape))
    return xp, work


def _score_frame(x, gmm):
    """Frame centred on the mixture's mean and scaled by its widest spread, and the GMM
    expressed in it (so that float32 scoring neither overflows nor cancels)."""
    xp, work = _check_gmm(x, gmm)
    means = gmm.means.astype(xp.float64)
    shift = (gmm.weights.astype(xp.float64)[:, None] * means).sum(axis=0)
    scale = xp.sqrt((gmm.variances + (means - shift) ** 2).max())
    scale = xp.where(scale > 0, scale, 1.0)
    z = xp.subtract(x, shift.astype(work), dtype=work)
    z *= (1.0 / scale).astype(work)
    frame = _Frame(z, z * z, None, shift, scale)
    return frame, _to_frame(gmm, frame, work)


def responsibilities(x, gmm):
    """Posterior probabilities nu (n, K) of the components given each row of ``x``
    (Eq. 31), computed in log-space with log-sum-exp; rows sum to 1."""
    frame, g = _score_frame(x, gmm)
    return _e_step(frame, g)[0].T


def log_likelihood(x, gmm):
    """Mean per-point log-likelihood of ``x`` under ``gmm`` (a Python float)."""
    frame, g = _score_frame(x, gmm)
    # the density of z = (x - shift) / scale carries the Jacobian scale**d
    return float(_e_step(frame, g)[1].mean()) - x.shape[1] * math.log(float(frame.scale))


def em_step(x, gmm, eps=1e-5):
    """One EM iteration (E-step then M-step, ``eps`` added to the variances) from ``gmm``.

    Exposed for checks against scikit-learn's ``GaussianMixture`` and for users who
    want to refine a mixture; :func:`fit_gmm` runs the same steps internally.
    """
    frame, g = _score_frame(x, gmm)
    resp, _ = _e_step(frame, g)
    out = _m_step(frame, resp, (eps / frame.scale ** 2).astype(frame.z.dtype))
    return _from_frame(out, frame, frame.z.dtype)
