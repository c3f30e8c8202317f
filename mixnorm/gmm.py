"""Per-batch Gaussian mixture fitting for Mixture Normalization (paper Sec. 3.2, 4.2, 5.1, 5.3).

One xp-generic code path (NumPy or CuPy, chosen by the input's array module):

1. :func:`kmeans_plusplus` -- greedy K-means++ seeding with ``2 + int(log K)`` local
   trials per new centre (the paper's "2 + log(K) trials"), on a uniform random
   subsample of at most :func:`seeding_points` of the points (all of a smaller batch);
2. ``kmeans_iters`` Lloyd iterations (:func:`_lloyd_moments`);
3. the mixture is initialised from the K-means partition (:func:`_m_step` of the moments
   of the one-hot responsibilities) and refined by ``em_iters`` EM iterations of a
   diagonal-covariance GMM (:func:`_e_step`, :func:`_m_step`);
4. components whose weight falls below ``min_weight`` (paper Sec. 5.3: 0.01) or whose
   effective count (weight * n, the sum of the component's posteriors) falls below
   ``min_count`` are dropped; the points they held are merged into the components that
   remain by one more E-step and M-step over those, and the check repeats until every
   component passes (:func:`_enforce_counts`), so the returned GMM has K' <= K
   components, heaviest first, with K' = 1 (BN's statistics) as the limit.

The paper's "EM iter." value E maps to ``kmeans_iters = em_iters = E / 2``
(:func:`split_em_iters`).

Data layout.  The n points are fitted in a shifted and scaled frame
``z = (x - shift) / scale`` (``shift``, ``scale`` estimated on a row subsample;
``scale >= sqrt(eps)``), so float32 is safe for huge or tiny magnitudes and for data far
from the origin; parameters are returned in the original units.  Every pass over the
data is a matrix product with the augmented matrix ``za = [z**2 | z | |z|^2 | 1]``
(n, 2d+2), with no elementwise epilogue:

* log-densities ``coef @ za.T`` with ``coef = [-1/(2v) | m/v | 0 | c]`` (c holds the
  normaliser and log-weight of each component);
* squared distances to centres ``[0 | -2c | 1 | |c|^2] @ za.T``;
* all M-step moments at once: ``resp @ za = [sum r z^2 | sum r z | . | sum r]``.

On a GPU ``za`` is stored as such.  On NumPy the frame stores only ``[z | |z|^2 | 1]``
(half the memory) and each pass runs in cache-sized row blocks that square their
``z`` once and apply both halves of the coefficients (:func:`_squared_blocks`); the
E-step and its moments read each block once (:func:`_posterior_moments`).

Per-point quantities are component-major, (K, n), so the column log-softmax runs over
contiguous memory.  On NumPy (and with a reducer) the (K, 2d+2) moments go to the host
and the small parameter arithmetic (M-step, pruning, sorting, density coefficients)
runs there in float64.  A fit of one process on a GPU keeps all of it on the device
(the kernels of :mod:`mixnorm.kernels`, :func:`_fit_on_device`): 17 launches
for K = 3 and "EM iter." 2, and one small copy to the host at its end, where the
status of the count rule and of the moments' finiteness is read.  The count rule's
first merging round runs on the device in every fit (a no-op when no component is
dropped); only a component that fails the rule again sends the further rounds to the
host.  The random draws (seed point, local trials, subsample) come from a host
``numpy.random.Generator`` before the passes that use them (one copy to the device),
so CPU and GPU make the same choices for the same seed.

float16 input is fitted in float32, float64 in float64.  Degenerate data never yields
NaN: duplicate seeds (all-identical points, fewer distinct points than K, n < K) leave
components empty, which get weight 0 and are pruned, so such data simply yield fewer
components (at least one); fewer than ``2 * min_count`` points are fitted with one
component.  ``eps`` is an absolute variance floor added to every variance (as
scikit-learn's ``reg_covar``).

Never silently wrong.  Arguments are validated up front (errors name the argument).
NaN/Inf input is detected from the moments (on the GPU from the status the fit copies
at its end; no extra pass) and raises ``ValueError`` with the counts
(:func:`check_finite`).  Parameters are returned
in the dtype the fit ran in: float32 input whose variances do not fit in float32 (|x|
beyond about 1e19) raises ``ValueError`` naming max |x| and the fix (fit float64 data or
rescale), so inf/NaN parameters are never returned.  :func:`responsibilities` and
:func:`log_likelihood` raise on NaN/Inf input and on mixtures with non-finite or
non-positive parameters.

Several processes.  ``fit_gmm(..., reducer=r)`` fits one mixture to the union of the
points of all ranks of ``r`` (``size``, ``rank`` and deterministic host ``allgather``
and ``sum`` over ranks: :class:`LocalReducer`, :class:`mixnorm._collectives.MPIReducer`).  The points
never leave their rank: each pass reduces the same small matrices that the
single-process fit fetches to the host (the frame's statistics, the K-means++
subsample, the (K, 2d+2) moments), and every rank returns the same mixture, bitwise
(see :func:`fit_gmm` for the design and its cost).
"""
import math
import numbers
from typing import NamedTuple

import numpy

from mixnorm import _arrays
from mixnorm import _collectives
from mixnorm._collectives import LocalReducer  # noqa: F401  (public here too)
from mixnorm import kernels
from mixnorm import settings
from mixnorm._arrays import get_array_module

#: Rows used to estimate the shift and scale of the fitting frame.
_FRAME_ROWS = 512
#: ``fit_fraction`` never subsamples below this many points per component.
MIN_POINTS_PER_COMPONENT = 32
#: Default ``min_count`` of :func:`fit_gmm`: the smallest effective count (points) a
#: returned component may have (see :func:`fit_gmm` for the choice).
MIN_COUNT = settings.SETTINGS['min_count'].default


class GMM(NamedTuple):
    """Diagonal-covariance Gaussian mixture: ``weights (K,)``, ``means (K, d)``,
    ``variances (K, d)``, arrays on the device of the data they were fitted to."""
    weights: object
    means: object
    variances: object

    @property
    def n_components(self):
        return int(self.weights.shape[0])


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

_InvalidParameter = settings.InvalidParameter
_invalid = settings.invalid


def _check_int(func, name, value, low, allow_none=False):
    """``value`` as an int >= ``low`` (``None`` passes through with ``allow_none``)."""
    allowed = (settings.Interval(numbers.Integral, low, math.inf, 'left'),)
    return settings.validate(func, name, value, (None,) + allowed if allow_none else allowed)


def _check_real(func, name, value, low, high, closed):
    """``value`` as a float in the interval from ``low`` to ``high`` (``closed`` one of
    'both', 'left', 'right', 'neither'); NaN and bools are rejected."""
    return settings.validate(func, name, value,
                             (settings.Interval(numbers.Real, low, high, closed),))


_GENERATOR = settings.InstanceOf(numpy.random.Generator, 'a numpy.random.Generator')


def _check_seed(func, seed):
    """A ``numpy.random.Generator`` for ``seed``: None (fresh entropy), an int >= 0 (as
    MN's ``seed`` setting), or a ``Generator`` (used, and advanced, as given)."""
    seed = settings.validate(func, 'seed', seed,
                             settings.SETTINGS['seed'].constraints + (_GENERATOR,))
    return seed if isinstance(seed, numpy.random.Generator) \
        else numpy.random.default_rng(seed)


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


def check_finite(x, name='x'):
    """Raise ``ValueError`` if the array ``x`` holds NaN or Inf values; return None.

    The message gives the counts of NaN and of Inf values (only those present) and, for
    an (n, d) array, in how many of the n points (rows) they occur.  One pass over ``x``
    and one device-to-host copy; integer and boolean arrays pass at once.
    """
    if not hasattr(x, 'dtype'):
        x = numpy.asarray(x)
    xp = get_array_module(x)
    if x.dtype.kind not in 'fc':
        return None
    bad = ~xp.isfinite(x)
    parts = [xp.isnan(x).sum(), bad.sum()]
    if x.ndim == 2:
        parts.append(bad.any(axis=1).sum())
    counts = _arrays.to_host(xp.stack(parts)).astype(numpy.int64)
    n_nan, n_bad = int(counts[0]), int(counts[1])
    if n_bad == 0:
        return None
    found = ' and '.join('%d %s' % (c, what) for c, what in
                         ((n_nan, 'NaN'), (n_bad - n_nan, 'Inf')) if c)
    where = (' (in %d of %d points)' % (int(counts[2]), x.shape[0]) if x.ndim == 2
             else ' (of %d values)' % x.size)
    raise ValueError('%s contains %s value%s%s: statistics of non-finite data are '
                     'undefined; check the input (learning rate too high? a division by '
                     'zero upstream?)' % (name, found, 's' if n_bad > 1 else '', where))


def _max_abs(x):
    return float(get_array_module(x).abs(x).max())


# ------------------------------------------------------------------------ fitting frame

class _Frame(NamedTuple):
    """Points in the fitting frame ``z = (x - shift) / scale`` (host float64 ``shift``
    (d,) and float ``scale``), in the work dtype: on a device the augmented matrix
    ``za = [z**2 | z | |z|^2 | 1]`` (n, 2d+2); on NumPy the compact ``za = [z | |z|^2 |
    1]`` (n, d+2), whose ``z**2`` the passes square block by block in cache (half the
    memory, so a pass reads half as much).  Coefficient and moment matrices have the
    columns of the augmented matrix either way.  A union frame (the points of all ranks
    of a ``reducer``) also holds the reducer, ``counts`` (P,), the points of each
    rank, and ``narrow``, whether every rank fits in float32; ``za`` holds this
    rank's."""
    za: object
    shift: object
    scale: float
    counts: object = None
    reducer: object = None
    narrow: bool = False

    @property
    def compact(self):
        return get_array_module(self.za) is numpy

    @property
    def d(self):
        return self.za.shape[1] - 2 if self.compact else (self.za.shape[1] - 2) // 2

    @property
    def n(self):
        """The number of points fitted (on all ranks for a union frame)."""
        return self.za.shape[0] if self.counts is None else int(self.counts.sum())

    def reduce(self, a):
        """``a`` (host float64) summed over the ranks of a union frame; ``a`` otherwise."""
        return a if self.reducer is None else self.reducer.sum(a)

    def zs(self):
        """``[z | |z|^2 | 1]`` (n, d+2): the compact matrix, a view of the augmented."""
        return self.za if self.compact else self.za[:, self.d:]


#: Elements per row block of the CPU's passes (a block that stays in cache).
_ROW_BLOCK = 1 << 18


def _row_blocks(frame):
    """Row slices of cache-sized blocks of a compact frame: OpenBLAS multiplies such
    blocks by a few columns several times faster than a matrix that leaves the cache."""
    n, d = frame.za.shape[0], frame.d
    step = max(64, _ROW_BLOCK // (2 * d + 2))
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def _squared_blocks(frame):
    """``(rows, z**2, [z | |z|^2 | 1])`` per row block of a compact frame, the squares
    computed into one reused buffer."""
    za, d = frame.za, frame.d
    blocks = _row_blocks(frame)
    buf = numpy.empty((blocks[0].stop - blocks[0].start, d), dtype=za.dtype)
    for rows in blocks:
        block = za[rows]
        z2 = buf[:block.shape[0]]
        numpy.square(block[:, :d], out=z2)
        yield rows, z2, block


def _augment(x, shift, scale, work):
    """The frame's matrix of the points ``x`` (n, d) for (shift, scale): on a device the
    augmented ``za`` (one fused kernel and a row sum: :func:`mixnorm.kernels.augment`),
    on NumPy the compact ``[z | |z|^2 | 1]`` in cache-sized row blocks."""
    xp = get_array_module(x)
    n, d = x.shape
    if xp is not numpy:
        za = xp.empty((n, 2 * d + 2), dtype=work)
        return kernels.augment(x, xp.asarray(shift, dtype=work), work.type(1.0 / scale), za)
    zs = numpy.empty((n, d + 2), dtype=work)
    shift, inv = shift.astype(work), work.type(1.0 / scale)
    step = max(64, _ROW_BLOCK // (2 * d + 2))
    buf = numpy.empty((min(step, n), d), dtype=work)
    for i in range(0, n, step):         # contiguous arithmetic, then one strided copy
        z = buf[:min(step, n - i)]
        numpy.subtract(x[i:i + step], shift, out=z, casting='unsafe')
        z *= inv
        zs[i:i + step, :d] = z
        numpy.einsum('ij,ij->i', z, z, out=zs[i:i + step, d])
    zs[:, d + 1] = 1
    return zs


def _frame_for(x, eps, work, reducer=None):
    """The fitting frame of ``x``: shift and scale from a strided row subsample (one
    small device-to-host copy), then its matrix (:func:`_augment`).  With a ``reducer``
    the frame of the union of all ranks' points: one all-gather of each rank's row
    ``[n, n_sub, mean, M2, itemsize of the work dtype]``, pooled as Chan et al.
    (:func:`_pooled`)."""
    xp = get_array_module(x)
    n, d = x.shape
    sub = x[::max(1, n // _FRAME_ROWS)]
    with numpy.errstate(invalid='ignore', over='ignore'):   # NaN/Inf are reported later
        shift = sub.mean(axis=0, dtype=xp.float64)
        dev = sub - shift
        m2 = xp.square(dev, out=dev).sum()
        stats = _arrays.to_host(xp.concatenate([shift, m2[None]]))
        rows = numpy.concatenate([[n, sub.shape[0]], stats])[None]
        counts, narrow = None, False
        if reducer is not None:
            rows = reducer.allgather(numpy.concatenate([rows[0], [work.itemsize]]))
            counts, narrow, rows = rows[:, 0], bool((rows[:, -1] < 8).all()), rows[:, :-1]
        shift, spread = _pooled(rows)
        scale = max(math.sqrt(spread) if numpy.isfinite(spread) else 1.0, math.sqrt(eps))
        return _Frame(_augment(x, shift, scale, work), shift, scale, counts, reducer,
                      narrow)


def _pooled(rows):
    """Mean (d,) and mean squared deviation (over points and features) of the union of
    row subsamples given per rank as ``[n, n_sub, mean (d), M2]`` (P, d+3), by Chan et
    al.'s pairwise formula (no cancellation for data far from the origin; exact for
    P = 1)."""
    d = rows.shape[1] - 3
    n_sub, means, m2 = rows[:, 1], rows[:, 2:2 + d], rows[:, 2 + d]
    total = n_sub.sum()
    mean = ((n_sub / total)[:, None] * means).sum(axis=0)
    m2 = m2.sum() + (n_sub * ((means - mean) ** 2).sum(axis=1)).sum()
    return mean, float(m2 / (total * d))


def _to_frame(gmm, frame):
    """A host float64 GMM in data units, expressed in the fitting frame."""
    s = frame.scale
    return GMM(gmm.weights, (gmm.means - frame.shift) / s, gmm.variances / (s * s))


def _from_frame(gmm, frame):
    s = frame.scale
    return GMM(gmm.weights, frame.shift + gmm.means * s, gmm.variances * (s * s))


def _on_device(gmm, xp, dtype):
    """A host GMM as arrays of ``dtype`` on the device of ``xp`` (one copy)."""
    return GMM(*_arrays.send(xp, list(gmm), dtype))


def _on_host(gmm):
    """A GMM as float64 NumPy arrays (one copy from the device, in the GMM's dtype)."""
    dtype = numpy.result_type(*[a.dtype for a in gmm])
    return GMM(*_arrays.fetch(get_array_module(gmm.weights), list(gmm), dtype))


# ------------------------------------------------------------------- matrix passes

def _distance_product(frame, coef):
    """``coef @ za.T`` (m, n) for distance coefficients ``[0 | -2c | 1 | |c|^2]``
    (m, 2d+2).

    On NumPy only the compact matrix takes part (the zero block is skipped), in row
    blocks, each as ``zs @ coef.T`` (with the long matrix on the left OpenBLAS streams
    it instead of packing it, several times faster for a few rows) copied into the
    (m, n) result (whose rows the K-means++ steps then read contiguously).  cuBLAS
    would first copy a strided view, so on CuPy the whole contiguous ``za`` is
    multiplied (twice the FLOPs of a product that costs microseconds there).
    """
    za = frame.za
    if not frame.compact:
        return coef @ za.T
    d = frame.d
    coef_t = numpy.ascontiguousarray(coef[:, d:].T)
    dtype = numpy.result_type(za, coef)
    out = numpy.empty((coef.shape[0], za.shape[0]), dtype=dtype)
    blocks = _row_blocks(frame)
    buf = numpy.empty((blocks[0].stop - blocks[0].start, coef.shape[0]), dtype=dtype)
    for rows in blocks:         # (rows, m) products, copied into the (m, n) result
        block = buf[:rows.stop - rows.start]
        numpy.matmul(za[rows], coef_t, out=block)
        out[:, rows] = block.T
    return out


def _distances(frame, coef):
    """Squared distances (m, n) of all points to centres given as distance coefficients
    ``[0 | -2c | 1 | |c|^2]`` (m, 2d+2), clipped at 0."""
    xp = get_array_module(frame.za)
    D = _distance_product(frame, coef)
    return xp.maximum(D, 0, out=D)


def _dist_coef(centres, sqnorms=None):
    """Distance coefficients ``[0 | -2c | 1 | |c|^2]`` of host centres (m, d)
    (``sqnorms`` (m,): the squared norms as the frame holds them, else computed)."""
    m, d = centres.shape
    coef = numpy.zeros((m, 2 * d + 2))
    coef[:, d:2 * d] = -2.0 * centres
    coef[:, 2 * d] = 1.0
    coef[:, 2 * d + 1] = (centres * centres).sum(axis=1) if sqnorms is None else sqnorms
    return coef


def _logprob_coef(gmm):
    """Coefficients (K, 2d+2) of the weighted log-densities log(w_k N(z | m_k, v_k)) of a
    host GMM: ``[-1/(2v) | m/v | 0 | log w - (sum m^2/v + sum log v + d log 2pi) / 2]``.
    Empty components get a log-weight of -1e30 (posterior exactly 0, no inf in a GEMM)."""
    K, d = gmm.means.shape
    prec = 1.0 / gmm.variances
    coef = numpy.empty((K, 2 * d + 2))
    coef[:, :d] = -0.5 * prec
    coef[:, d:2 * d] = gmm.means * prec
    coef[:, 2 * d] = 0.0
    with numpy.errstate(divide='ignore'):
        logw = numpy.where(gmm.weights > 0, numpy.log(gmm.weights), -1e30)
    coef[:, 2 * d + 1] = logw - 0.5 * ((gmm.means * gmm.means * prec).sum(axis=1)
                                       + numpy.log(gmm.variances).sum(axis=1)
                                       + d * math.log(2 * math.pi))
    return coef


def _device_coef(frame, coef):
    xp = get_array_module(frame.za)
    return xp.asarray(coef.astype(frame.za.dtype))


def _split_coef(frame, coef):
    """Host coefficients (m, 2d+2) as the work-dtype transposes of their ``z**2`` block
    and of the rest, for the compact products ``z**2 @ a + zs @ b``."""
    d, dtype = frame.d, frame.za.dtype
    return (numpy.ascontiguousarray(coef[:, :d].T, dtype=dtype),
            numpy.ascontiguousarray(coef[:, d:].T, dtype=dtype))


def _softmax_rows(lp):
    """Posteriors (in place, (B, K)) and log-normalisers (B,) of log-densities ``lp``
    (B, K), as :func:`mixnorm.kernels.log_softmax_columns_xp` of ``lp.T``, through
    whole columns (NumPy reduces a short contiguous axis slowly)."""
    K = lp.shape[1]
    mx = lp[:, 0].copy()
    for k in range(1, K):
        numpy.maximum(mx, lp[:, k], out=mx)
    lp -= mx[:, None]
    numpy.exp(lp, out=lp)
    total = lp[:, 0].copy()
    for k in range(1, K):
        total += lp[:, k]
    lp /= total[:, None]
    lse = numpy.log(total, out=total)
    lse += mx
    return lp, lse


def _e_step(frame, gmm):
    """E-step: posteriors (K, n) and per-point log-likelihoods (n,) of a host GMM given
    in the frame (one GEMM and the fused column log-softmax; on NumPy the compact
    products, block by block)."""
    coef = _logprob_coef(gmm)
    if not frame.compact:
        return kernels.log_softmax_columns(_device_coef(frame, coef) @ frame.za.T)
    a, b = _split_coef(frame, coef)
    lp = numpy.empty((frame.za.shape[0], coef.shape[0]), dtype=frame.za.dtype)
    for rows, z2, zs in _squared_blocks(frame):
        out = lp[rows]
        numpy.matmul(z2, a, out=out)
        out += zs @ b
    resp, lse = _softmax_rows(lp)
    return resp.T, lse


def _posterior_moments(frame, gmm):
    """``_moments(frame, _e_step(frame, gmm)[0])``: the moments of the posteriors under
    a host GMM (one reduction for a union frame).  On NumPy in row blocks that stay in
    cache, each read once for its log-densities and its moments (summed in float64)."""
    if not frame.compact:
        return _moments(frame, _e_step(frame, gmm)[0])
    d = frame.d
    coef = _logprob_coef(gmm)
    a, b = _split_coef(frame, coef)
    total = numpy.zeros((coef.shape[0], 2 * d + 2))
    for rows, z2, zs in _squared_blocks(frame):
        lp = z2 @ a
        lp += zs @ b
        resp = _softmax_rows(lp)[0].T
        total[:, :d] += resp @ z2
        total[:, d:] += resp @ zs
    return frame.reduce(total)


def _moments(frame, resp, reduce=True):
    """``resp @ za`` (K, 2d+2) on the host, float64: sums of r z^2, r z, r |z|^2, r
    (over all ranks' points for a union frame: one reduction, unless not ``reduce``;
    on NumPy block by block from the compact matrix)."""
    if not reduce:
        frame = frame._replace(reducer=None, counts=None)
    if not frame.compact:
        return frame.reduce(_arrays.to_host(resp @ frame.za).astype(numpy.float64))
    d = frame.d
    total = numpy.zeros((resp.shape[0], 2 * d + 2))
    for rows, z2, zs in _squared_blocks(frame):
        r = resp[:, rows]
        total[:, :d] += r @ z2
        total[:, d:] += r @ zs
    return frame.reduce(total)


def _m_step(moments, n, eps_z, tiny):
    """M-step from the moments (K, 2d+2): weights, means and variances (+ eps floor)."""
    d = (moments.shape[1] - 2) // 2
    nk = moments[:, 2 * d + 1]
    inv = 1.0 / numpy.maximum(nk, tiny)
    means = moments[:, d:2 * d] * inv[:, None]
    variances = numpy.maximum(moments[:, :d] * inv[:, None] - means * means, 0) + eps_z
    return GMM(nk / n, means, variances)


# ---------------------------------------------------------------------------- seeding

def seeding_points(n_components):
    """How many points at most the K-means++ seeding draws its seeds from (see
    :func:`_kmeans_plusplus`): ``max(512, MIN_POINTS_PER_COMPONENT * K)``.  A component
    at the pruning threshold (weight ``min_weight`` = 0.01, paper Sec. 5.3) holds on
    average 5 of them (none with probability e^-5, under 1%; a component of weight 0.03
    none with probability 2e-7), there are never fewer than ``fit_fraction``'s floor of
    points per component, and for P ranks and d features the subsample's all-gather
    brings about 512 (d + 1) numbers (float32 ones for float32 data)."""
    return max(512, MIN_POINTS_PER_COMPONENT * n_components)


def _seeding_rows(n, n_components, rs):
    """The global indices (sorted, in the concatenated order of the ranks) of the points
    K-means++ seeds on: every point when ``n`` <= :func:`seeding_points`, else a uniform
    random subset of that many (drawn from ``rs``: the same on every rank)."""
    m = seeding_points(n_components)
    if n <= m:
        return numpy.arange(n)
    return numpy.sort(rs.choice(n, m, replace=False))


def _seeding_subsample(frame, rows):
    """``[z | |z|^2]`` (m, d+1), host float64, of the points at the global indices
    ``rows``: for a union frame each rank contributes those it holds, in one all-gather
    (padded to the largest share; when every rank fits in float32, as float32 values
    two to a float64's bits), and every rank gets them in the concatenated order."""
    xp = get_array_module(frame.za)
    if frame.reducer is None:
        return _point_rows(frame, xp.asarray(rows))
    offsets = numpy.concatenate([[0], numpy.cumsum(frame.counts)]).astype(numpy.int64)
    bounds = numpy.searchsorted(rows, offsets)
    shares = numpy.diff(bounds)
    me, width = frame.reducer.rank, frame.d + 1
    dtype = numpy.dtype(numpy.float32 if frame.narrow else numpy.float64)
    per = 8 // dtype.itemsize                       # values per float64 sent
    buf = numpy.zeros((int(shares.max()), -(-width // per) * per), dtype=dtype)
    mine = rows[bounds[me]:bounds[me + 1]] - offsets[me]
    if mine.size:
        buf[:mine.size, :width] = _arrays.to_host(frame.zs()[xp.asarray(mine), :width])
    table = frame.reducer.allgather(buf.view(numpy.float64))
    table = table.view(dtype)[:, :, :width]
    return numpy.concatenate([table[r, :c] for r, c in enumerate(shares)]).astype(
        numpy.float64)


def _greedy_seeds(points, n_components, first, draws):
    """Greedy K-means++ on host points ``[z | |z|^2]`` (m, d+1) (float64): the first
    seed ``first``, then per round the candidates of the uniform ``draws`` (trials,),
    drawn proportionally to the potential (squared distance to the nearest seed; the
    first point whose running sum exceeds ``u`` times the total), of which the one
    lowering the total potential most is kept (first on ties).  Returns the indices
    (K,) of the seeds in ``points``."""
    d = points.shape[1] - 1
    z, sq = points[:, :d], points[:, d]

    def distances(c):
        return numpy.maximum(sq[c][:, None] - 2.0 * (z[c] @ z.T) + sq[None, :], 0)

    m = points.shape[0]
    seeds = [first]
    closest = distances(numpy.array([first]))[0]
    for u in draws:
        cum = numpy.cumsum(closest)
        cand = numpy.minimum(numpy.searchsorted(cum, u * cum[-1], side='right'), m - 1)
        mins = numpy.minimum(distances(cand), closest[None, :])
        best = int(numpy.argmin(mins.sum(axis=1)))
        seeds.append(int(cand[best]))
        closest = mins[best]
    return numpy.array(seeds[:n_components], dtype=numpy.int64)


def _kmeans_plusplus(frame, n_components, n_local_trials, rs):
    """Greedy K-means++ seeding over the points of the frame (of all ranks, for a union
    frame), on a subsample (paper Sec. 3.2 and 5.1 ask for K-means++ seeding; which
    points it runs on is this implementation's choice).

    The seeds are drawn from at most :func:`seeding_points` points: all of them for
    smaller batches, else a uniform random subset whose global indices (ranks in
    order) come from the host generator ``rs`` and the number of points alone, so the
    subsample, and the seeds, do not depend on how the points are split over ranks.
    Their ``[z | |z|^2]`` rows come to the host (for a union frame one all-gather of
    each rank's share, :func:`_seeding_subsample`) and every rank, or the one process,
    runs the same float64 greedy K-means++ on them (:func:`_greedy_seeds`; the first
    seed uniform over the subsample, ``n_local_trials`` candidates per further seed):
    the seeds are bitwise the same on every rank and for any split.  Seeding the
    subsample costs O(m K trials d) on the host, against O(n K trials d) for all n
    points, and one collective instead of two per seed.

    Returns the seeds' distance coefficients ``[0 | -2c | 1 | |c|^2]`` (K, 2d+2) (host
    float64) and the global indices (K,) of the seed points.
    """
    rows = _seeding_rows(frame.n, n_components, rs)
    first = int(rs.integers(0, rows.size))
    draws = rs.random((n_components - 1, n_local_trials))
    points = _seeding_subsample(frame, rows)
    seeds = _greedy_seeds(points, n_components, first, draws)
    d = frame.d
    return _dist_coef(points[seeds, :d], points[seeds, d]), rows[seeds]


def _point_rows(frame, rows):
    """``[z | |z|^2]`` (m, d+1), host float64, of this rank's points at ``rows`` (a
    device int64 array)."""
    return _arrays.to_host(frame.zs()[rows, :frame.d + 1]).astype(numpy.float64)


def kmeans_plusplus(x, n_components, n_local_trials=None, seed=None):
    """Greedy K-means++ seeding of ``x`` (n, d); returns the indices (K,) of the seeds.

    Each new centre is the best (lowest potential) of ``n_local_trials`` candidates
    drawn with probability proportional to the squared distance to the nearest chosen
    centre (default ``2 + int(log K)``), among all points, or for more than
    :func:`seeding_points` points among a uniform random subset of that many (as
    :func:`fit_gmm` seeds).  ``seed``: None, an int >= 0 or a
    ``numpy.random.Generator``.  Raises ``ValueError`` for NaN/Inf input.
    """
    f = 'kmeans_plusplus'
    _, work = _check_points(x)
    n_components = _check_int(f, 'n_components', n_components, 1)
    n_local_trials = _check_trials(
        n_components, _check_int(f, 'n_local_trials', n_local_trials, 1, allow_none=True))
    rs = _check_seed(f, seed)
    check_finite(x)
    frame = _frame_for(x, 1e-5, work)
    return get_array_module(x).asarray(
        _kmeans_plusplus(frame, n_components, n_local_trials, rs)[1])


def _check_trials(n_components, n_local_trials):
    """The validated ``n_local_trials`` (an int >= 1 or None: the paper's default)."""
    return default_local_trials(n_components) if n_local_trials is None else n_local_trials


# ------------------------------------------------------------------------ Lloyd, EM

def _lloyd_labels(frame, coef):
    """Nearest-centre labels (n,) for distance coefficients ``coef`` (K, 2d+2) on the
    device (the assignment half of a Lloyd step)."""
    return _distance_product(frame, coef).argmin(axis=0)


def _lloyd_moments(frame, coef, n_components):
    """``_moments(frame, _one_hot(_lloyd_labels(frame, coef), n_components, dtype))``:
    the moments of the nearest-centre partition for distance coefficients ``coef``
    (K, 2d+2) on the device.  On NumPy in one pass of row blocks, each read once, while
    in cache, for its distances, labels and moments (the products and sums of the two
    passes, block by block: the same values)."""
    if not frame.compact:
        return _moments(frame, _one_hot(_lloyd_labels(frame, coef), n_components,
                                        frame.za.dtype))
    za, d = frame.za, frame.d
    coef_t = numpy.ascontiguousarray(coef[:, d:].T)
    hard = numpy.zeros((n_components, za.shape[0]), dtype=za.dtype)
    total = numpy.zeros((n_components, 2 * d + 2))
    dist = None
    for rows, z2, zs in _squared_blocks(frame):
        if dist is None:
            dist = numpy.empty((zs.shape[0], coef.shape[0]),
                               dtype=numpy.result_type(za, coef))
        block = dist[:zs.shape[0]]
        numpy.matmul(zs, coef_t, out=block)
        hard[block.argmin(axis=1), numpy.arange(rows.start, rows.stop)] = 1
        r = hard[:, rows]
        total[:, :d] += r @ z2
        total[:, d:] += r @ zs
    return frame.reduce(total)


def _one_hot(labels, n_components, dtype):
    """Hard responsibilities (K, n) of a partition (:func:`mixnorm.kernels.one_hot`)."""
    return kernels.one_hot(labels, n_components, dtype)


def _finite(moments):
    return bool(numpy.isfinite(moments).all())


def _fit_in_frame(frame, n_components, kmeans_iters, em_iters, n_local_trials, eps,
                  min_weight, min_count, rs):
    """K-means++, Lloyd, EM and the count rule in the frame; returns the host float64 GMM
    (frame units, heaviest first), or None if a pass's moments are not finite."""
    n = frame.n
    dtype = frame.za.dtype
    eps_z = eps / frame.scale ** 2
    tiny = 10 * numpy.finfo(dtype).eps

    def m_step(moments):
        return _m_step(moments, n, eps_z, tiny) if _finite(moments) else None

    with numpy.errstate(invalid='ignore', over='ignore'):   # NaN/Inf: see fit_gmm
        if n_components == 1:
            labels = get_array_module(frame.za).zeros((frame.za.shape[0],), dtype=numpy.int64)
            moments = _moments(frame, _one_hot(labels, n_components, dtype))
        else:                       # the seeds' partition: the first Lloyd assignment
            coef = _kmeans_plusplus(frame, n_components, n_local_trials, rs)[0]
            moments = _lloyd_moments(frame, _device_coef(frame, coef), n_components)
        gmm = m_step(moments)
        for _ in range(1, kmeans_iters):
            if gmm is None:
                return None
            gmm = m_step(_lloyd_moments(frame, _device_coef(frame, _dist_coef(gmm.means)),
                                        n_components))
        for _ in range(em_iters):
            if gmm is None:
                return None
            gmm = m_step(_posterior_moments(frame, gmm))
        return None if gmm is None else _enforce_counts(frame, gmm, n, min_weight,
                                                        min_count, m_step)


def _enforce_counts(frame, gmm, n, min_weight, min_count, m_step):
    """Prune components with weight < ``min_weight`` or effective count
    ``weight * n`` < ``min_count`` (the counts are the last M-step's, on the host: no
    extra pass unless a component fails).  The points of pruned components merge into
    the kept ones by an E-step over the kept components (weights renormalised) and an
    M-step; the check repeats until every component passes or one is left (BN's
    statistics).  Returns the GMM heaviest first, or None on non-finite moments."""
    while gmm.n_components > 1:
        keep = (gmm.weights >= min_weight) & (gmm.weights * n >= min_count)
        if keep.all():
            break
        if not keep.any():
            keep[numpy.argmax(gmm.weights)] = True
        w = gmm.weights[keep]
        kept = GMM(w / w.sum(), gmm.means[keep], gmm.variances[keep])
        gmm = m_step(_posterior_moments(frame, kept))
        if gmm is None:
            return None
    return _prune(gmm, 0.0)


def _prune(gmm, min_weight):
    """Drop components of a host GMM with weight < ``min_weight``, renormalise, and sort
    the rest by decreasing weight (paper Sec. 5.3).  The heaviest is always kept."""
    order = numpy.argsort(-gmm.weights, kind='stable')
    keep = order[(gmm.weights[order] >= min_weight) | (numpy.arange(order.size) == 0)]
    w = gmm.weights[keep]
    return GMM(w / w.sum(), gmm.means[keep], gmm.variances[keep])


def prune(gmm, min_weight):
    """Drop components with weight < ``min_weight`` and renormalise (paper Sec. 5.3);
    the rest are sorted by decreasing weight and the heaviest is always kept.  Returns
    arrays on the device and in the dtype of ``gmm``.  (Without the data the points of
    the dropped components cannot be refitted: :func:`fit_gmm` does that.)"""
    xp = get_array_module(gmm.weights)
    return _on_device(_prune(_on_host(gmm), min_weight), xp, gmm.weights.dtype)


def _check_fit_args(n_components, kmeans_iters, em_iters, n_local_trials, fit_fraction,
                    min_weight, min_count, eps, seed, return_responsibilities):
    """Validate the arguments of :func:`fit_gmm` (scikit-learn style: each error names
    the argument and its valid range); returns them converted, and the random
    generator."""
    f = 'fit_gmm'
    n_components = settings.check('n_components', n_components, f)
    kmeans_iters = _check_int(f, 'kmeans_iters', kmeans_iters, 0)
    em_iters = _check_int(f, 'em_iters', em_iters, 0)
    n_local_trials = _check_int(f, 'n_local_trials', n_local_trials, 1, allow_none=True)
    fit_fraction = settings.check('fit_fraction', fit_fraction, f)
    min_weight = settings.check('min_weight', min_weight, f)
    min_count = settings.check('min_count', min_count, f)
    eps = settings.check('eps', eps, f)
    settings.validate(f, 'return_responsibilities', return_responsibilities,
                      (settings.Boolean(),))
    rs = _check_seed(f, seed)
    return (n_components, kmeans_iters, em_iters, _check_trials(n_components, n_local_trials),
            fit_fraction, min_weight, min_count, eps, rs)


def _check_representable(gmm, work, x, reducer=None):
    """Raise unless the host float64 GMM (data units) is finite in the dtype ``work`` it
    is returned in (float32 variances overflow for |x| beyond about 1e19).  The GMM is
    the same on every rank, and so is the outcome; the message quotes the largest |x|
    of all ranks, and the rank that holds it (one reduction, on the failure path)."""
    _check_magnitude(max(float(numpy.abs(a).max()) for a in gmm), work, x, reducer)


def _check_magnitude(big, work, x, reducer=None):
    """Raise as :func:`_check_representable` for ``big``, the largest magnitude of the
    mixture's parameters in float64."""
    limit = float(numpy.finfo(work).max)
    if math.isfinite(big) and big <= limit:
        return
    top, where = _max_abs(x), ''
    if reducer is not None and reducer.size > 1:
        tops = reducer.allgather([top])[:, 0]
        rank = int(numpy.argmax(tops))
        top, where = float(tops[rank]), ' (on rank %d of %d)' % (rank, reducer.size)
    if work == numpy.float64:
        raise ValueError('the mixture fitted to x is not finite in float64 (max |x| %g%s): '
                         'rescale x' % (top, where))
    raise ValueError('the magnitude of x overflows %s variances: max |x| is %g%s, so the '
                     'variances reach %g, beyond the largest %s (%g); cast x to float64 '
                     '(x.astype(numpy.float64)) or rescale it (e.g. x / %g)'
                     % (work, top, where, big, work, limit, top))


def fit_gmm(x, n_components, kmeans_iters=1, em_iters=1, *, n_local_trials=None,
            fit_fraction=1.0, min_weight=0.01, min_count=MIN_COUNT, eps=1e-5, seed=None,
            return_responsibilities=False, reducer=None):
    """Fit a diagonal-covariance GMM to the rows of ``x`` (n, d) (paper Sec. 3.2).

    K-means++ seeding (``n_local_trials``, default ``2 + int(log K)``), ``kmeans_iters``
    Lloyd iterations (at least one: it gives the partition that initialises EM), then
    ``em_iters`` EM iterations.  ``fit_fraction`` < 1 fits a random subset of that
    fraction of the points (never fewer than ``MIN_POINTS_PER_COMPONENT * K`` or all of
    them).  ``seed``: None, an int >= 0 or a ``numpy.random.Generator``.

    Pruning.  Every returned component has weight >= ``min_weight`` (paper Sec. 5.3)
    and an effective count ``weight * n`` >= ``min_count`` (n the fitted points);
    components below either are dropped, their points merged into the rest by an
    E-step and M-step over the kept components, until all pass (K' = 1, BN's
    statistics, is the limit); fewer than ``2 * min_count`` points give K' = 1 at once.
    The default ``min_count = 16``: a variance estimated from m points has a relative
    standard error of sqrt(2 / (m - 1)), 0.37 at m = 16, so 1/sigma is known to about
    18%; with fewer points a component's variance is mostly noise and (a single point:
    variance ``eps``) its output explodes or dies.  It is half the
    ``MIN_POINTS_PER_COMPONENT`` that ``fit_fraction`` keeps per component, and in a
    convolutional batch (n = N*H*W in the thousands) ``min_weight`` is the stricter
    rule, so it changes only small, fully connected batches.  ``min_count=0`` turns it
    off.

    Returns a :class:`GMM`, heaviest component first, in float64 for float64 input,
    else float32, on the device of ``x``.  Raises ``ValueError`` for bad shapes or
    arguments (naming the argument), for NaN/Inf input (with the counts), and for
    float32 input whose variances overflow float32 (naming max |x|; cast to float64 or
    rescale): the parameters returned are always finite.

    With ``return_responsibilities`` it returns ``(gmm, nu)``, ``nu`` (n, K') the
    posteriors of all n points under the returned mixture, as :func:`responsibilities`
    gives them, reusing the fit's frame when every point was fitted (then unchecked:
    finite whenever the fit's moments are).

    Several processes.  With a ``reducer`` (see :class:`LocalReducer`; every rank passes
    its own points ``x`` and the same other arguments, ``seed`` included) the mixture is
    fitted to the union of all ranks' points, which never leave their rank: only
    host-side sums of small buffers do, and every rank returns the same mixture,
    bitwise.  The frame's shift and scale come from the pooled per-rank subsamples (one
    reduction, which also tells every rank how many points each holds); K-means++
    seeds on a subsample of at most :func:`seeding_points` of the union's points whose
    global indices depend only on the seed and the number of points, gathered in one
    reduction, on which every rank runs the same host seeding (:func:`_kmeans_plusplus`:
    the seeds do not depend on the split over ranks); the seeds' partition, each later
    Lloyd or EM pass, and each round of the count rule, reduce their (K, 2d+2) moments
    matrix once, and pruning uses the global counts.  That is ``2 + kmeans_iters +
    em_iters`` collectives whatever K, 4 for the paper's "EM iter." 2, of O(K d + P d)
    numbers plus the subsample's (at most :func:`seeding_points` rows of d + 1), never
    O(n d); the work per rank is that of a single-process fit of its points (on the
    host's M-step) and one device-to-host copy per collective.  ``fit_fraction``
    subsamples each rank's points.
    With one rank the result equals the fit without a reducer.  NaN/Inf input (also in a
    point a ``fit_fraction`` fit did not see) and a float32 overflow are reported on
    every rank, naming the rank(s).  A rank whose own input is invalid (shape, dtype)
    raises before the first reduction, leaving the others waiting: check such input
    before fitting (``MultiNodeMixtureNormalization`` does, collectively).
    """
    xp, work = _check_points(x)
    (n_components, kmeans_iters, em_iters, n_local_trials, fit_fraction, min_weight,
     min_count, eps, rs) = _check_fit_args(n_components, kmeans_iters, em_iters,
                                           n_local_trials, fit_fraction, min_weight,
                                           min_count, eps, seed, return_responsibilities)
    reducer = _check_reducer(reducer, seed)
    points = _fitted_points(x, n_components, fit_fraction, rs, reducer)
    replay = rs.bit_generator.state         # the same draws for a float64 refit
    if reducer is None and xp is not numpy:
        n = points.shape[0]
        gmm, resp = _fit_gmm_on_device(
            x, points, work, 1 if n < 2 * min_count else n_components, kmeans_iters,
            em_iters, n_local_trials, eps, min_weight, min_count, rs, replay,
            return_responsibilities and points is x)
        if not return_responsibilities:
            return gmm
        if points is not x:                 # fitted on a subset: score every point
            return gmm, responsibilities(x, gmm)
        return gmm, resp.T
    frame = _frame_for(points, eps, work, reducer)
    if frame.n < 2 * min_count:
        n_components = 1                    # no two components can both have min_count
    fit_args = (n_components, kmeans_iters, em_iters, n_local_trials, eps, min_weight,
                min_count)
    gmm_z = _fit_in_frame(frame, *fit_args, rs)
    if gmm_z is None:
        # non-finite moments: NaN/Inf input, or (finite input) a far outlier missed by
        # the frame's subsample overflows z**2 in float32: refit in float64.
        _check_finite_everywhere(x, reducer)
        frame = _frame_for(points, eps, numpy.dtype(numpy.float64), reducer)
        rs.bit_generator.state = replay
        gmm_z = _fit_in_frame(frame, *fit_args, rs)
        if gmm_z is None:
            raise ValueError('the data overflow float64 in the fitting frame (max |x| %g): '
                             'rescale x' % _max_abs(points))
    gmm = _from_frame(gmm_z, frame)
    _check_representable(gmm, work, points, reducer)
    gmm = _on_device(gmm, xp, work)
    if not return_responsibilities:
        return gmm
    if points is not x:                     # fitted on a subset: score every point
        return gmm, _responsibilities_everywhere(x, gmm, reducer)
    return gmm, _e_step(frame, gmm_z)[0].T


# ------------------------------------------------------------------ the device path

_LOG_2PI = math.log(2 * math.pi)


def _fit_gmm_on_device(x, points, work, n_components, kmeans_iters, em_iters,
                       n_local_trials, eps, min_weight, min_count, rs, replay, want_resp):
    """:func:`fit_gmm` of one process on a GPU (CuPy, or a stand-in device): the steps
    of :func:`_fit_in_frame` as the kernels of :func:`_fit_on_device`, which leave
    everything on the device until one small status copy at the end.  Returns the
    device GMM (dtype ``work``) and the posteriors (K', n) (None unless
    ``want_resp``)."""
    args = (n_components, kmeans_iters, em_iters, n_local_trials, eps, min_weight,
            min_count, want_resp)
    with numpy.errstate(invalid='ignore', over='ignore', divide='ignore'):
        out = _fit_on_device(points, work, *args, rs)
    if out is None:
        # non-finite moments: NaN/Inf input, or a far outlier missed by the frame's
        # subsample overflows z**2 in float32: refit in float64 (as fit_gmm)
        check_finite(x)
        with numpy.errstate(invalid='ignore', over='ignore', divide='ignore'):
            rs.bit_generator.state = replay
            out = _fit_on_device(points, numpy.dtype(numpy.float64), *args, rs)
        if out is None:
            raise ValueError('the data overflow float64 in the fitting frame (max |x| %g): '
                             'rescale x' % _max_abs(points))
    gmm, resp, big = out
    xp = get_array_module(points)
    if big is None:                         # finished on the host (count rule)
        _check_representable(gmm, work, points)
        return _on_device(gmm, xp, work), resp
    _check_magnitude(big, work, points)
    if gmm.means.dtype != work:
        gmm = GMM(*[a.astype(work) for a in gmm])
    return gmm, resp


def _fit_on_device(points, work, n_components, kmeans_iters, em_iters, n_local_trials,
                   eps, min_weight, min_count, want_resp, rs):
    """K-means++, Lloyd, EM and the count rule on the device, as :func:`_fit_in_frame`
    (the same draws from ``rs``, the same choices up to float rounding) with no host
    synchronisation before the end.

    The frame (:func:`mixnorm.kernels.fit_frame_stats`, :func:`~mixnorm.kernels.fit_augment`,
    which also measures the distances to the first seed, in partial sums of a warp per
    point; for more than :func:`seeding_points` points it writes the rows of the
    K-means++ subsample first, then every point's, and the draws and potentials of the
    rounds run over the subsample's rows only, as :func:`_kmeans_plusplus`); per
    K-means++ round one
    kernel (:func:`~mixnorm.kernels.kpp_round`: the previous winner, the candidates and
    their distances; in the last round also the partition each candidate would give)
    and one running sum; the moments of those partitions (one product), of which the
    first M-step takes the winner's; per pass the M-step with the next pass's
    coefficients (:func:`~mixnorm.kernels.fit_coef`), the log-densities (one product),
    their column log-softmax (:func:`~mixnorm.kernels.fit_log_softmax`) and the moments
    (one product); the last M-step, count
    rule, sorting and data units (:func:`~mixnorm.kernels.fit_finish`), the posteriors
    under the result, and the count rule's first merging round as a no-op unless a
    component was dropped (their moments and ``fit_finish`` with ``merge``).  Then one
    copy of a small status to the host: non-finite moments (returns None), else
    ``(gmm, resp, big)``: the device GMM in dtype ``work`` (its first K' slots when
    the count rule dropped components; then the posteriors are recomputed under them),
    the posteriors (K', n) or None, and the largest magnitude of its parameters
    (float64).  Only a component that fails the count rule again after the merging
    round sends the further rounds of :func:`_enforce_counts` to the host (the GMM
    then comes back as host float64 with ``big`` None)."""
    xp = get_array_module(points)
    n, d = points.shape
    K, trials = n_components, n_local_trials
    x = points if points.dtype == work else points.astype(work)
    # K-means++ seeds on m of the points (all when n is small: m = n, else first the
    # subsample's rows in za, then every point's: the draws run over the first m)
    seeding = _seeding_rows(n, K, rs) if K > 1 else numpy.arange(n)
    sub = seeding.size < n
    m = seeding.size if sub else 0
    first = int(seeding[rs.integers(0, seeding.size)]) if K > 1 else -1
    step = max(1, n // _FRAME_ROWS)
    stats = kernels.fit_frame_stats(x, step)
    za_all = xp.empty((m + n, 2 * d + 2), dtype=work)
    lanes = kernels.LANES
    first_d = xp.empty((m + n, lanes), dtype=work) if K > 1 else None
    draws = None
    if K > 1:   # the draws (and the subsample's rows): one copy to the device, no sync
        draws = xp.asarray(numpy.concatenate([rs.random((K - 1) * trials),
                                              seeding.astype(numpy.float64) if sub else []]))
    za_all, _, scale = kernels.fit_augment(x, stats, (n + step - 1) // step,
                                           math.sqrt(eps), first, za_all, first_d,
                                           draws[(K - 1) * trials:] if sub else None)
    za = za_all[m:]
    nd = m if sub else n                              # the points the draws run over
    if K > 1:
        u = draws[:(K - 1) * trials].reshape(K - 1, trials)
        best = xp.empty((K,), dtype=xp.int64)
        mins = xp.empty(((K - 1) * trials, m + n), dtype=work)
        prev = first_d.reshape(1, (m + n) * lanes)    # the first seed's, lanes per point
        cum = xp.cumsum(prev[:, :nd * lanes], axis=1, dtype=xp.float64)
        # the last round also writes the partition each of its candidates would give
        hard = xp.empty((trials * K, n), dtype=work)
        for k in range(1, K):
            rows = mins[(k - 1) * trials:k * trials]
            chain = (first_d.reshape(-1), lanes, mins, best, k, hard) if k == K - 1 \
                else None
            kernels.kpp_round(za_all, prev, cum, u[k - 1], rows, best[k - 1:k],
                              lanes if k == 1 else 1, chain)
            cum = xp.cumsum(rows[:, :nd], axis=1, dtype=xp.float64)
            prev = rows
        moments, select = hard @ za, cum   # every candidate's; the M-step picks the winner's
    else:
        moments, select = za.sum(axis=0, keepdims=True), None
    tiny = 10 * numpy.finfo(work).eps
    coef = xp.empty((K, 2 * d + 2), dtype=work)
    part = xp.empty((K, kernels.LANES), dtype=xp.float64)
    KL = K * kernels.LANES
    # bad flags | magnitudes | the count rule's kept slots | the merging round's verdict
    status = xp.empty((2 * KL + 2 * K,), dtype=xp.float64)
    passes = [1] * max(kmeans_iters - 1, 0) + [0] * em_iters
    for i, mode in enumerate(passes):
        kernels.fit_coef(moments, n, scale, eps, tiny, _LOG_2PI, mode, coef, part,
                         status[:KL].reshape(K, kernels.LANES), i == 0, select)
        lp = coef @ za.T
        resp = (kernels.argmin_onehot if mode else kernels.fit_log_softmax)(
            lp, part, xp.empty((K, n), dtype=work))
        moments, select = resp @ za, None
    weights = xp.empty((K,), dtype=work)
    means = xp.empty((K, d), dtype=work)
    variances = xp.empty((K, d), dtype=work)
    finish = (n, scale, stats, eps, tiny, _LOG_2PI, min_weight, min_count, coef, part,
              weights, means, variances, status)
    kernels.fit_finish(moments, *finish, not passes, select)
    # the count rule's merging round runs in every fit with K > 1 (a no-op on the
    # device when no component is dropped), so the host learns its outcome from the
    # one status copy: the posteriors under the kept components, their moments, the
    # M-step of the kept ones
    resp = kernels.fit_log_softmax(coef @ za.T, part, xp.empty((K, n), dtype=work)) \
        if want_resp or K > 1 else None
    if K > 1:
        merged = resp @ za
        kernels.fit_finish(merged, *finish, False, None, True)
    flags = _arrays.to_host(status)             # the fit's one synchronisation
    if flags[:KL].any():
        return None
    big = float(flags[KL:2 * KL].max())
    kept = int(flags[2 * KL:2 * KL + K].sum())
    if kept == K:
        return GMM(weights, means, variances), resp if want_resp else None, big
    if not flags[2 * KL + K:].all():            # a component fails again: more rounds
        return _count_rule_on_host(za, stats, scale, merged[:kept], n, eps, min_weight,
                                   min_count, want_resp)
    # the kept components are the first slots; the posteriors under them alone
    resp = kernels.fit_log_softmax(coef[:kept] @ za.T, part[:kept],
                                   xp.empty((kept, n), dtype=work)) if want_resp else None
    return GMM(weights[:kept], means[:kept], variances[:kept]), resp, big


def _count_rule_on_host(za, stats, scale, moments, n, eps, min_weight, min_count,
                        want_resp):
    """The device fit's count rule when a component fails it: the rounds of
    :func:`_enforce_counts` from the last pass's moments, with the host's M-step;
    returns ``(host float64 GMM in data units, posteriors or None, None)``, or None on
    non-finite moments."""
    xp = get_array_module(za)
    d = (za.shape[1] - 2) // 2
    shift, s, moments = _arrays.fetch(xp, [stats[:d], scale, moments], numpy.float64)
    frame = _Frame(za, shift, float(s[0]))
    eps_z = eps / frame.scale ** 2
    tiny = 10 * numpy.finfo(za.dtype).eps

    def m_step(moments):
        return _m_step(moments, n, eps_z, tiny) if _finite(moments) else None

    with numpy.errstate(invalid='ignore', over='ignore'):
        gmm_z = _enforce_counts(frame, m_step(moments), n, min_weight, min_count, m_step)
        if gmm_z is None:
            return None
        resp = _e_step(frame, gmm_z)[0] if want_resp else None
    return _from_frame(gmm_z, frame), resp, None


def _fitted_points(x, n_components, fit_fraction, rs, reducer):
    """``x``, or for ``fit_fraction`` < 1 a random subset of its rows (at least
    ``MIN_POINTS_PER_COMPONENT * K`` of them, per rank with a reducer).  Several ranks
    draw their subsets from a generator seeded by ``rs`` and the rank, so ``rs`` stays
    the same on all of them."""
    n = x.shape[0]
    m = min(n, max(int(math.ceil(fit_fraction * n)), MIN_POINTS_PER_COMPONENT * n_components))
    if m == n:
        return x
    if reducer is not None and reducer.size > 1:
        rs = numpy.random.default_rng([int(rs.integers(2 ** 63)), reducer.rank])
    xp = get_array_module(x)
    return x[xp.asarray(rs.permutation(n)[:m])]


def _check_finite_everywhere(x, reducer):
    """:func:`check_finite` on every rank: if any rank's points hold NaN/Inf, every rank
    raises the same error, naming those ranks and quoting their counts (one reduction
    when no rank has any, on the failure path only), so that no rank is left waiting in
    a collective."""
    if reducer is None:
        return check_finite(x)
    return _collectives.agree(
        reducer, lambda: check_finite(x), 'the points of rank(s) {ranks} contain NaN/Inf '
        'values, so the mixture of the union cannot be fitted')


def _responsibilities_everywhere(x, gmm, reducer):
    """:func:`responsibilities` of this rank's points; with a reducer the ranks agree
    first on whether every rank could score its points (one reduction), and all raise
    together if one could not (NaN/Inf in a point the fit did not see)."""
    if reducer is None:
        return responsibilities(x, gmm)
    return _collectives.agree(reducer, lambda: responsibilities(x, gmm), 'the points of '
                              'rank(s) {ranks} cannot be scored under the mixture of the union')


def _check_reducer(reducer, seed):
    if reducer is None:
        return None
    size, rank = getattr(reducer, 'size', None), getattr(reducer, 'rank', None)
    if not (callable(getattr(reducer, 'sum', None))
            and callable(getattr(reducer, 'allgather', None))
            and isinstance(size, numbers.Integral)
            and isinstance(rank, numbers.Integral) and 0 <= rank < size):
        raise _invalid('fit_gmm', 'reducer', 'None or an object with int size >= 1, int '
                       'rank in range(size) and methods allgather(array) and sum(array) '
                       '(see LocalReducer)', reducer)
    if size > 1 and seed is None:
        raise _invalid('fit_gmm', 'seed', 'an int in the range [0, inf) or a '
                       'numpy.random.Generator, the same on all ranks, when fitting with a '
                       'reducer of %d ranks' % size, seed)
    return reducer


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


def _check_mixture(host):
    """Raise unless a host GMM can score data: finite parameters, variances > 0,
    weights >= 0 with a positive sum."""
    for name, a in zip(GMM._fields, host):
        bad = int((~numpy.isfinite(a)).sum())
        if bad:
            raise ValueError('gmm.%s holds %d non-finite values: a mixture with NaN/Inf '
                             'parameters cannot score data' % (name, bad))
    if (host.variances <= 0).any():
        raise ValueError('gmm.variances must be positive (min %g)' % host.variances.min())
    if (host.weights < 0).any() or not host.weights.sum() > 0:
        raise ValueError('gmm.weights must be non-negative with a positive sum, got %s'
                         % (host.weights,))


def _score_frame(x, gmm):
    """Frame centred on the mixture's mean and scaled by its widest spread, and the GMM
    (host float64) expressed in it, so that float32 scoring neither overflows nor
    cancels."""
    xp, work = _check_gmm(x, gmm)
    host = _on_host(gmm)
    _check_mixture(host)
    shift = (host.weights[:, None] * host.means).sum(axis=0) / host.weights.sum()
    with numpy.errstate(over='ignore'):
        scale = math.sqrt(float((host.variances + (host.means - shift) ** 2).max()))
    scale = scale if scale > 0 and math.isfinite(scale) else 1.0
    frame = _Frame(_augment(x, shift, scale, work), shift, scale)
    return frame, _to_frame(host, frame)


def _score(x, gmm):
    """The scoring frame, the GMM in it, and the E-step's posteriors (K, n) and
    per-point log-likelihoods (n,) (NaN/Inf are reported by :func:`_scored`)."""
    with numpy.errstate(invalid='ignore', over='ignore'):
        frame, g = _score_frame(x, gmm)
        return (frame, g) + _e_step(frame, g)


def _scored(x, frame, total):
    """``total`` (a host float: a sum or mean of per-point log-likelihoods), checked:
    non-finite means NaN/Inf input (:func:`check_finite` says so) or, for finite input,
    log-densities that overflow the scoring dtype."""
    if math.isfinite(total):
        return total
    check_finite(x)
    raise ValueError('x is finite but its log-densities under the mixture overflow %s '
                     '(max |x| = %g, mixture spread %g): score float64 data '
                     '(x.astype(numpy.float64)) or rescale x and the mixture'
                     % (frame.za.dtype, _max_abs(x), frame.scale))


def responsibilities(x, gmm):
    """Posterior probabilities nu (n, K) of the components given each row of ``x``
    (Eq. 31), computed in log-space with log-sum-exp; rows sum to 1.  Raises
    ``ValueError`` for NaN/Inf in ``x`` or in ``gmm`` (found from the log-likelihoods:
    one scalar copy, no extra pass over ``x``)."""
    frame, _, resp, lse = _score(x, gmm)
    xp = get_array_module(lse)
    _scored(x, frame, float(lse.sum(dtype=xp.float64)))
    return resp.T


def log_likelihood(x, gmm):
    """Mean per-point log-likelihood of ``x`` under ``gmm`` (a Python float).  Raises
    ``ValueError`` for NaN/Inf in ``x`` or in ``gmm``."""
    frame, _, _, lse = _score(x, gmm)
    xp = get_array_module(lse)
    # the density of z = (x - shift) / scale carries the Jacobian scale**d
    return _scored(x, frame, float(lse.mean(dtype=xp.float64))) \
        - x.shape[1] * math.log(frame.scale)


def em_step(x, gmm, eps=1e-5):
    """One EM iteration (E-step then M-step, ``eps`` added to the variances) from ``gmm``.

    Exposed for checks against scikit-learn's ``GaussianMixture`` and for users who
    want to refine a mixture; :func:`fit_gmm` runs the same steps internally.  Returns
    the GMM on the device of ``x`` in the dtype of the computation.
    """
    xp = get_array_module(x)
    eps = settings.check('eps', eps, 'em_step')
    frame, _, resp, _ = _score(x, gmm)
    with numpy.errstate(invalid='ignore', over='ignore'):   # NaN/Inf: _scored says so
        moments = _moments(frame, resp)
    _scored(x, frame, float(moments.sum()))
    out = _m_step(moments, x.shape[0], eps / frame.scale ** 2,
                  10 * numpy.finfo(frame.za.dtype).eps)
    return _on_device(_from_frame(out, frame), xp, frame.za.dtype)
