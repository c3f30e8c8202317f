"""Fréchet Inception Distance (Heusel et al. 2017) with a Chainer Inception-V3.

Definition (as TTUR's ``fid.py`` and pytorch-fid's ``fid_score.py``): the images are
resized to 299 x 299 (bilinear), fed to the FID Inception-V3, and the 2048-d outputs of
its final average pooling ("pool3") of N generated and of the real images are summarised
by their mean and covariance (float64); then

    FID = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2))

with ``scipy.linalg.sqrtm``.  If sqrtm returns a non-finite matrix, ``eps * I`` is added
to both covariances and it is computed again; a complex result whose diagonal has an
imaginary part above 1e-3 raises ``ValueError``, a smaller one is dropped
(:func:`frechet_distance`, the same handling as pytorch-fid).

Sample sizes (``gan.fid`` config): N = 10,000 generated images per evaluation
(``n_samples``; Chainer-GAN-lib's ``calc_FID``, which the paper's setting follows) against
the statistics of the whole CIFAR-10 training set (``n_real: null`` = all 50,000 images,
as TTUR's precomputed ``fid_stats_cifar10_train.npz`` that Chainer-GAN-lib compares
with); ``n_real: 10000`` uses 10,000 training images instead.  Images enter as uint8
(generated images are quantised to uint8 first, like images written to PNG and read
back by pytorch-fid), scaled to [0, 1], resized, scaled to [-1, 1].

The network (:class:`experiments.models.fid_inception.FIDInceptionV3`) is
torchvision's Inception-V3 with pytorch-fid's FID patches, i.e. the Inception of
TensorFlow's 2015-12-05 graph that TTUR's FID code uses; this module loads its weights,
extracts its features and computes the distance.  ``dims`` picks pytorch-fid's feature
blocks: 2048 (pool3, the standard FID, default), 768, 192 or 64 (spatial means of the
earlier blocks; only for quick smoke tests, as pytorch-fid's ``--dims``).

Weights
-------
The standard FID weights are pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``
(:data:`STANDARD_WEIGHTS_URL`; a port of TensorFlow's ``inception-2015-12-05.tgz``, the
graph of TTUR's FID).  Convert once (needs ``pip install torch``)::

    python scripts/convert_fid_weights.py pt_inception-2015-12-05-6726825d.pth OUT.npz

and pass ``--inception-weights OUT.npz`` (``gan.fid.weights``); the default location is
:func:`default_weights_path` (``<chainer dataset root>/mixnorm/fid/
pt_inception-2015-12-05-6726825d.npz``).  The npz holds, for every ``BasicConv2d``
``<module path>`` of the network (``/`` for PyTorch's ``.``):

    <path>/conv/W         (out, in, kh, kw) float32   <- <module>.conv.weight
    <path>/bn/gamma       (out,)                      <- <module>.bn.weight
    <path>/bn/beta        (out,)                      <- <module>.bn.bias
    <path>/bn/avg_mean    (out,)                      <- <module>.bn.running_mean
    <path>/bn/avg_var     (out,)                      <- <module>.bn.running_var

(94 convolutions, 470 arrays, 21.8M values; BN eps 1e-3) plus ``_meta/format``,
``_meta/source_name``, ``_meta/source_sha256`` (the .pth file's SHA-256; the standard
file's starts with ``6726825d``).  The classifier ``fc.*`` and ``num_batches_tracked``
are dropped.  :func:`load_extractor` rejects a missing file (:class:`FIDWeightsMissing`,
saying what to get and where to put it) and a file that is not such an npz, lacks
arrays, has unexpected ones, wrong shapes or non-finite values
(:class:`FIDWeightsError`).

There is no silent stand-in: ``random_weights=True`` (config ``gan.fid.random_weights``)
builds the same network with seeded random He-normal weights, for smoke runs and tests
only; its ``label`` says "RANDOM-WEIGHTS ... NOT an FID" and runs record it.

Real-image statistics are cached (:func:`real_statistics`) in ``cache_dir`` (default
:func:`default_cache_dir`), keyed by the weights (SHA-256 of the npz, or the random seed),
``dims``, the resize and a SHA-256 of the exact uint8 images.
"""
from mixnorm import _compat  # noqa: F401

import hashlib
import os
import warnings
import zipfile
import zlib

import numpy
import scipy.linalg

import chainer

from experiments.models.fid_inception import BasicConv2d, FIDInceptionV3

STANDARD_WEIGHTS_NAME = 'pt_inception-2015-12-05-6726825d.pth'
STANDARD_WEIGHTS_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/'
                        'fid_weights/' + STANDARD_WEIGHTS_NAME)
STANDARD_SHA256_PREFIX = '6726825d'
WEIGHTS_FORMAT = 'mixnorm-fid-inception-v3/1'
META_PREFIX = '_meta/'
BLOCK_OF_DIMS = {64: 0, 192: 1, 768: 2, 2048: 3}   # pytorch-fid's BLOCK_INDEX_BY_DIM
FID_IMAGE_SIZE = 299
MIN_IMAGE_SIZE = 75                                  # smallest input Inception-V3 takes
DEFAULT_EPS = 1e-6


class FIDWeightsError(ValueError):
    """The FID weights file exists but is not a valid converted FID Inception npz."""


class FIDWeightsMissing(FileNotFoundError):
    """No FID weights file where one was expected."""


def default_weights_path():
    return os.path.join(chainer.dataset.get_dataset_root(), 'mixnorm', 'fid',
                        STANDARD_WEIGHTS_NAME[:-4] + '.npz')


def default_cache_dir():
    return os.path.join(chainer.dataset.get_dataset_root(), 'mixnorm', 'fid', 'stats')


def missing_weights_message(path):
    return '\n'.join([
        'FID Inception weights not found: %s' % path,
        'FID needs the standard FID Inception-V3 weights (pytorch-fid\'s %s, a port of '
        'TensorFlow\'s 2015-12-05 Inception graph used by TTUR\'s FID), converted to npz:'
        % STANDARD_WEIGHTS_NAME,
        '  1. download %s' % STANDARD_WEIGHTS_URL,
        '  2. pip install torch        (only the converter needs it)',
        '  3. python scripts/convert_fid_weights.py %s %s' % (STANDARD_WEIGHTS_NAME, path),
        'then run again; or put the npz elsewhere and pass --inception-weights FILE '
        '(config gan.fid.weights).',
        'To train without FID pass --no-fid (gan.fid.enabled: false).  For a smoke test '
        'only, gan.fid.random_weights: true uses an untrained network whose numbers are '
        'NOT FIDs.'])


# ----------------------------------------------------------------- Fréchet distance

_sqrtm = scipy.linalg.sqrtm   # module attribute so tests can exercise the fallback


def statistics(features):
    """(mu, sigma) of features (N, D) in float64 (sigma: unbiased covariance, as
    ``numpy.cov``)."""
    f = numpy.asarray(features, dtype=numpy.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError('need features (N, D) with N >= 2, got shape %s' % (f.shape,))
    return f.mean(axis=0), numpy.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=DEFAULT_EPS):
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)) in float64 (see module docstring
    for the handling of a non-finite or complex sqrtm)."""
    mu1 = numpy.atleast_1d(numpy.asarray(mu1, numpy.float64))
    mu2 = numpy.atleast_1d(numpy.asarray(mu2, numpy.float64))
    sigma1 = numpy.atleast_2d(numpy.asarray(sigma1, numpy.float64))
    sigma2 = numpy.atleast_2d(numpy.asarray(sigma2, numpy.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or \
            sigma1.shape != mu1.shape * 2:
        raise ValueError('mismatched statistics: mu %s / %s, sigma %s / %s'
                         % (mu1.shape, mu2.shape, sigma1.shape, sigma2.shape))
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)
        covmean = _sqrtm(sigma1.dot(sigma2))
    if not numpy.isfinite(covmean).all():
        warnings.warn('FID: sqrtm(S1 S2) is not finite; adding %g to the diagonal of the '
                      'covariances' % eps, RuntimeWarning)
        offset = numpy.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
        if not numpy.isfinite(covmean).all():
            raise ValueError('FID: sqrtm(S1 S2) is not finite even with eps = %g' % eps)
    if numpy.iscomplexobj(covmean):
        imag = numpy.abs(numpy.diagonal(covmean).imag).max()
        if imag > 1e-3:
            raise ValueError('FID: sqrtm(S1 S2) has an imaginary component of %g on its '
                             'diagonal (too few samples for the feature dimension?)' % imag)
        covmean = covmean.real
    return float(diff.dot(diff) + numpy.trace(sigma1) + numpy.trace(sigma2)
                 - 2 * numpy.trace(covmean))


# ------------------------------------------------------- the network's arrays

def expected_arrays():
    """{npz key: shape} of the full network (every array a weights file must hold)."""
    global _EXPECTED
    if _EXPECTED is None:
        net = FIDInceptionV3(3)
        out = {}
        for path, link in net.namedlinks(skipself=True):
            if isinstance(link, BasicConv2d):
                p = path.lstrip('/')
                out[p + '/conv/W'] = link.conv.W.shape
                for k in ('gamma', 'beta', 'avg_mean', 'avg_var'):
                    out['%s/bn/%s' % (p, k)] = (link.bn.avg_mean.shape[0],)
        _EXPECTED = out
    return dict(_EXPECTED)


_EXPECTED = None


# ----------------------------------------------------- PyTorch state-dict names

_TORCH_SUFFIXES = {
    'conv.weight': 'conv/W',
    'bn.weight': 'bn/gamma',
    'bn.bias': 'bn/beta',
    'bn.running_mean': 'bn/avg_mean',
    'bn.running_var': 'bn/avg_var',
}
_TORCH_DROPPED_SUFFIXES = ('bn.num_batches_tracked',)
_TORCH_DROPPED_PREFIXES = ('fc.', 'AuxLogits.')


def torch_to_chainer(state_dict):
    """Map a pytorch-fid FID-Inception state dict ``{name: array}`` to npz keys.

    Returns ``(arrays, dropped)``: ``arrays`` keyed as in the module docstring
    (float32), ``dropped`` the names deliberately left out (``fc.*``, ``AuxLogits.*``,
    ``*.num_batches_tracked``).  A name of another scheme raises :class:`FIDWeightsError`.
    Completeness and shapes are checked by :func:`validate_arrays`.
    """
    arrays, dropped, unknown = {}, [], []
    for name, value in state_dict.items():
        if name.startswith(_TORCH_DROPPED_PREFIXES) or name.endswith(_TORCH_DROPPED_SUFFIXES):
            dropped.append(name)
            continue
        for suffix, new in _TORCH_SUFFIXES.items():
            if name.endswith('.' + suffix):
                module = name[:-len(suffix) - 1]
                arrays[module.replace('.', '/') + '/' + new] = \
                    numpy.asarray(value, dtype=numpy.float32)
                break
        else:
            unknown.append(name)
    if unknown:
        raise FIDWeightsError('not a pytorch-fid Inception state dict: unknown entries %s'
                              % ', '.join(sorted(unknown)[:10]))
    return arrays, sorted(dropped)


def chainer_to_torch(arrays):
    """Inverse of :func:`torch_to_chainer` (without the dropped entries)."""
    inverse = {v: k for k, v in _TORCH_SUFFIXES.items()}
    out = {}
    for key, value in arrays.items():
        if key.startswith(META_PREFIX):
            continue
        module, sep, rest = key.rpartition('/')
        module, _, kind = module.rpartition('/')
        suffix = inverse.get(kind + '/' + rest)
        if suffix is None:
            raise KeyError('not an FID-Inception npz key: %r' % key)
        out[module.replace('/', '.') + '.' + suffix] = value
    return out


# ------------------------------------------------------------- weights files

def file_sha256(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            h.update(block)
    return h.hexdigest()


def validate_arrays(arrays, where='weights'):
    """Raise :class:`FIDWeightsError` unless ``arrays`` is exactly the network's set:
    no missing or unexpected keys, every shape right, finite, BN variances > 0."""
    expected = expected_arrays()
    arrays = {k: v for k, v in arrays.items() if not k.startswith(META_PREFIX)}
    missing = sorted(set(expected) - set(arrays))
    unexpected = sorted(set(arrays) - set(expected))
    problems = []
    if missing:
        problems.append('%d missing arrays (e.g. %s)' % (len(missing), ', '.join(missing[:5])))
    if unexpected:
        problems.append('%d unexpected arrays (e.g. %s)'
                        % (len(unexpected), ', '.join(unexpected[:5])))
    for key in sorted(set(expected) & set(arrays)):
        a = numpy.asarray(arrays[key])
        if tuple(a.shape) != tuple(expected[key]):
            problems.append('%s has shape %s, expected %s' % (key, a.shape, expected[key]))
        elif a.dtype.kind != 'f':
            problems.append('%s has dtype %s, expected float' % (key, a.dtype))
        elif not numpy.isfinite(a).all():
            problems.append('%s has non-finite values' % key)
        elif key.endswith('/avg_var') and (a <= 0).any():
            problems.append('%s has non-positive variances' % key)
        if len(problems) > 12:
            break
    if problems:
        raise FIDWeightsError(
            '%s is not a valid FID Inception-V3 weights file (%s). Convert the standard '
            'weights with scripts/convert_fid_weights.py %s OUT.npz (see experiments/fid.py).'
            % (where, '; '.join(problems), STANDARD_WEIGHTS_NAME))


def save_weights(path, arrays, source_name='', source_sha256=''):
    """Write a validated weights npz (atomically) with its ``_meta/`` entries."""
    validate_arrays(arrays, where='the converted state dict')
    out = {k: numpy.asarray(v, numpy.float32) for k, v in arrays.items()}
    out[META_PREFIX + 'format'] = numpy.array(WEIGHTS_FORMAT)
    out[META_PREFIX + 'source_name'] = numpy.array(source_name)
    out[META_PREFIX + 'source_sha256'] = numpy.array(source_sha256)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        numpy.savez(f, **out)
    os.replace(tmp, path)
    return path


def read_weights(path):
    """(arrays, meta) of a weights npz, validated; clear errors for every failure."""
    if not os.path.isfile(path):
        raise FIDWeightsMissing(missing_weights_message(path))
    try:
        with numpy.load(path, allow_pickle=False) as z:
            if not hasattr(z, 'files'):
                raise ValueError('a single array, not an npz archive')
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error, KeyError,
            RuntimeError):
        raise FIDWeightsError(
            '%s: cannot read the FID weights npz: it should be the npz archive of arrays '
            'that scripts/convert_fid_weights.py writes from %s, and this file is truncated '
            'or another kind of file; convert the weights again'
            % (path, STANDARD_WEIGHTS_NAME)) from None
    meta = {k[len(META_PREFIX):]: str(arrays.pop(k)) for k in list(arrays)
            if k.startswith(META_PREFIX)}
    if meta.get('format', WEIGHTS_FORMAT) != WEIGHTS_FORMAT:
        raise FIDWeightsError('%s: format %r, expected %r' % (path, meta.get('format'),
                                                              WEIGHTS_FORMAT))
    validate_arrays(arrays, where=path)
    return arrays, meta


def _assign(net, arrays):
    params = dict(net.namedparams())
    links = dict(net.namedlinks())
    for key, value in arrays.items():
        link_path, _, attr = ('/' + key).rpartition('/')
        if link_path not in links:          # a block beyond ``last_block``
            continue
        if attr in ('avg_mean', 'avg_var'):
            getattr(links[link_path], attr)[...] = value
        else:
            params['/' + key].array[...] = value


def randomize(net, seed=0):
    """Seeded He-normal convolutions, BN identity (gamma 1, beta 0, mean 0, var 1)."""
    rs = numpy.random.RandomState(seed)
    for path, param in sorted(net.namedparams()):
        if path.endswith('/conv/W'):
            fan_in = numpy.prod(param.shape[1:])
            param.array[...] = rs.normal(0, numpy.sqrt(2.0 / fan_in), param.shape)


# ---------------------------------------------------------------- the extractor

def resize_matrix(in_size, out_size):
    """(out, in) float32 bilinear interpolation matrix, PyTorch ``F.interpolate(...,
    mode='bilinear', align_corners=False)`` (no antialiasing), as pytorch-fid."""
    scale = in_size / out_size
    src = numpy.maximum((numpy.arange(out_size) + 0.5) * scale - 0.5, 0.0)
    i0 = numpy.minimum(numpy.floor(src).astype(numpy.int64), in_size - 1)
    i1 = numpy.minimum(i0 + 1, in_size - 1)
    lam = src - i0
    m = numpy.zeros((out_size, in_size))
    numpy.add.at(m, (numpy.arange(out_size), i0), 1 - lam)
    numpy.add.at(m, (numpy.arange(out_size), i1), lam)
    return m.astype(numpy.float32)


def resize_bilinear(x, size):
    """Resize images (B, C, H, W) (NumPy or CuPy) to (size, size) as
    :func:`resize_matrix`."""
    xp = chainer.backend.get_array_module(x)
    b, c, h, w = x.shape
    if (h, w) == (size, size):
        return x
    ah = xp.asarray(resize_matrix(h, size))
    aw = xp.asarray(resize_matrix(w, size))
    t = xp.matmul(x.reshape(b * c * h, w), aw.T).reshape(b * c, h, size)
    return xp.matmul(ah, t).reshape(b, c, size, size)


class InceptionFeatures:
    """Images (N, 3, H, W) uint8 -> features (N, dims) float32 (NumPy).

    ``label`` says what the numbers are ("FID ..." or "RANDOM-WEIGHTS ... NOT an FID");
    ``weights_id`` keys the real-statistics cache.
    """

    def __init__(self, net, dims, image_size, label, weights_id, random_weights,
                 weights_meta=None, batch_size=100):
        self.net = net
        self.dims = dims
        self.image_size = image_size
        self.label = label
        self.weights_id = weights_id
        self.random_weights = random_weights
        self.weights_meta = weights_meta or {}
        self.batch_size = batch_size
        self.device = chainer.get_device('@numpy')

    @property
    def standard(self):
        """True for the standard FID network: real weights of the standard file, pool3,
        299 x 299."""
        return (not self.random_weights and self.dims == 2048
                and self.image_size == FID_IMAGE_SIZE and
                self.weights_meta.get('source_sha256', '').startswith(STANDARD_SHA256_PREFIX))

    def to_device(self, device):
        self.device = device
        self.net.to_device(device)
        return self

    def describe(self):
        return {'label': self.label, 'dims': self.dims, 'image_size': self.image_size,
                'random_weights': self.random_weights, 'weights_id': self.weights_id,
                'weights_source': self.weights_meta.get('source_name'),
                'weights_source_sha256': self.weights_meta.get('source_sha256'),
                'standard': self.standard}

    def __call__(self, images):
        images = numpy.asarray(images)
        if images.ndim != 4 or images.shape[1] != 3 or images.dtype != numpy.uint8:
            raise ValueError('expected uint8 images (N, 3, H, W), got %s %s'
                             % (images.dtype, images.shape))
        xp = self.device.xp
        out = numpy.empty((len(images), self.dims), numpy.float32)
        for s in range(0, len(images), self.batch_size):
            x = xp.asarray(images[s:s + self.batch_size]).astype(numpy.float32) / 255.0
            x = resize_bilinear(x, self.image_size) * 2 - 1
            out[s:s + len(x)] = chainer.backend.CpuDevice().send(self.net(x).array)
        return out


def load_extractor(weights=None, *, random_weights=False, dims=2048,
                   image_size=FID_IMAGE_SIZE, seed=0, batch_size=100):
    """The feature extractor: the FID Inception-V3 with the weights at ``weights``
    (default :func:`default_weights_path`), or, only with ``random_weights=True``, the
    same network with seeded random weights (labelled; smoke runs and tests only)."""
    if dims not in BLOCK_OF_DIMS:
        raise ValueError('dims must be one of %s, got %r' % (sorted(BLOCK_OF_DIMS), dims))
    if int(image_size) != image_size or image_size < MIN_IMAGE_SIZE:
        raise ValueError('image_size must be an integer >= %d (Inception-V3), got %r'
                         % (MIN_IMAGE_SIZE, image_size))
    net = FIDInceptionV3(BLOCK_OF_DIMS[dims])
    where = '%d-d, %d px' % (dims, image_size)
    if random_weights:
        randomize(net, seed)
        return InceptionFeatures(
            net, dims, image_size,
            'RANDOM-WEIGHTS Inception-V3 (seed %d, %s): NOT an FID, smoke test only'
            % (seed, where), 'random-seed%d' % seed, True, batch_size=batch_size)
    path = os.path.abspath(os.path.expanduser(weights or default_weights_path()))
    arrays, meta = read_weights(path)
    _assign(net, arrays)
    sha = file_sha256(path)
    meta['npz_sha256'] = sha
    meta['path'] = path
    standard = meta.get('source_sha256', '').startswith(STANDARD_SHA256_PREFIX)
    label = 'FID (Inception-V3 %s, %s)' % (
        'pytorch-fid ' + STANDARD_WEIGHTS_NAME if standard
        else 'weights from %s (NOT the standard FID file)'
        % (meta.get('source_name') or os.path.basename(path)), where)
    return InceptionFeatures(net, dims, image_size, label, 'w' + sha[:16], False,
                             weights_meta=meta, batch_size=batch_size)


# ------------------------------------------------------------ real statistics

def images_sha256(images):
    return hashlib.sha256(numpy.ascontiguousarray(images).tobytes()
                          + repr(images.shape).encode()).hexdigest()


def real_statistics(extractor, images, cache_dir=None, tag='data', log=print):
    """(mu, sigma, info) of ``extractor`` features of uint8 ``images``, from or into the
    cache (one npz per weights / dims / size / exact image set)."""
    cache_dir = cache_dir or default_cache_dir()
    data_sha = images_sha256(images)
    name = '%s_%dimg_%dd_%dpx_%s_d%s.npz' % (tag, len(images), extractor.dims,
                                            extractor.image_size, extractor.weights_id,
                                            data_sha[:16])
    path = os.path.join(cache_dir, name)
    info = {'path': path, 'n': int(len(images)), 'images_sha256': data_sha}
    if os.path.isfile(path):
        try:
            with numpy.load(path, allow_pickle=False) as z:
                if str(z['images_sha256']) == data_sha and \
                        str(z['weights_id']) == extractor.weights_id:
                    info['from_cache'] = True
                    return z['mu'], z['sigma'], info
        except Exception as e:  # a damaged cache entry is recomputed, never trusted
            warnings.warn('ignoring unreadable FID statistics cache %s (%s)' % (path, e))
    if log:
        log('FID: computing real-image statistics of %d images (%s) -> %s'
            % (len(images), extractor.label, path))
    mu, sigma = statistics(extractor(images))
    os.makedirs(cache_dir, exist_ok=True)
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        numpy.savez(f, mu=mu, sigma=sigma, images_sha256=numpy.array(data_sha),
                    weights_id=numpy.array(extractor.weights_id),
                    label=numpy.array(extractor.label))
    os.replace(tmp, path)
    info['from_cache'] = False
    return mu, sigma, info


def fid_of_images(extractor, images, real_mu, real_sigma):
    """FID between uint8 ``images`` and the real statistics."""
    mu, sigma = statistics(extractor(images))
    return frechet_distance(mu, sigma, real_mu, real_sigma)
