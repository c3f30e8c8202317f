"""Readers of the data files in their published formats, trusting nothing they read.

* CIFAR python batches (an extracted folder, or the members of the ``.tar.gz`` read in
  place): pickles, read by an unpickler that builds only what those files hold (dicts,
  lists, bytes/str, NumPy uint8 arrays) and refuses any other global (a tampered file
  asking for, say, ``os.system`` is an error naming the file; nothing of it runs);
* Chainer's npz caches of CIFAR and Fashion-MNIST (``numpy.load`` without pickles);
* IDX files (Fashion-MNIST), gzipped or not;
* :func:`check_md5`: a file against its published checksum, before it is read.

Every reader checks shapes and types and raises :class:`CorruptDataError` naming the file.
"""
import collections
import gzip
import hashlib
import os
import pickle
import tarfile
import zipfile
import zlib

import numpy

from experiments.data.errors import CorruptDataError

# --------------------------------------------------------------------------- checksums


def md5_of(path):
    """The hex MD5 of the file at ``path``, read in 1 MiB blocks."""
    h = hashlib.md5()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def check_md5(path, expected, official):
    """Raise :class:`CorruptDataError` unless ``path`` has the MD5 ``expected``, the
    published checksum of the file ``official``."""
    try:
        got = md5_of(path)
    except OSError as e:
        raise CorruptDataError('%s: cannot read (%s: %s)' % (path, type(e).__name__, e))
    if got != expected:
        raise CorruptDataError(
            '%s: MD5 %s, but the published %s has MD5 %s: the file is truncated, corrupted '
            'or not the official one; delete it and provide the official file'
            % (path, got, official, expected))


# --------------------------------------------------------------------------- pickles

def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct   # NumPy >= 2
    except ImportError:                                     # NumPy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _pickled_bytes(text, encoding):
    """``_codecs.encode(text, 'latin1')``: how Python 3 pickles bytes at protocol 2; any
    other use of it is refused."""
    if not isinstance(text, str) or encoding not in ('latin1', 'latin-1'):
        raise _Refused('_codecs.encode with %r' % (encoding,))
    return text.encode('latin-1')


#: The only globals a CIFAR python batch refers to: NumPy's array reconstruction (under
#: NumPy 1's and NumPy 2's module names), and bytes as Python 3 writes them at protocol 2.
_BATCH_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'): _numpy_reconstruct(),
    ('numpy._core.multiarray', '_reconstruct'): _numpy_reconstruct(),
    ('numpy', 'ndarray'): numpy.ndarray,
    ('numpy', 'dtype'): numpy.dtype,
    ('_codecs', 'encode'): _pickled_bytes,
}


class _Refused(pickle.UnpicklingError):
    """A global the CIFAR batches never hold: the file is not an official batch."""


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _BATCH_GLOBALS[(module, name)]
        except KeyError:
            raise _Refused('%s.%s' % (module, name)) from None

    def persistent_load(self, pid):
        raise _Refused('a persistent id')


def load_batch_pickle(fileobj, where):
    """The dict of a CIFAR python batch (keys as str) from ``fileobj``, unpickled by an
    unpickler that builds only dicts, lists, bytes/str and NumPy arrays.  ``where`` names
    the file in errors."""
    try:
        d = _BatchUnpickler(fileobj, encoding='bytes').load()
    except _Refused as e:
        raise CorruptDataError(
            '%s: refused to unpickle %s: a CIFAR python batch holds only dicts, lists, '
            'bytes and NumPy arrays, so this file is not an official batch (tampered with, '
            'or another file) and nothing of it was run; replace it with the official file'
            % (where, e)) from None
    except Exception as e:
        raise CorruptDataError('%s: cannot unpickle (%s: %s); the file is truncated or '
                               'corrupted, provide it again' % (where, type(e).__name__, e))
    if not isinstance(d, dict):
        raise CorruptDataError('%s: expected a dict, found %s' % (where, type(d).__name__))
    return {k.decode('latin-1') if isinstance(k, bytes) else k: v for k, v in d.items()}


# --------------------------------------------------------------------------- CIFAR

#: Where a CIFAR python archive keeps what: ``folder`` (the archive's top folder and the
#: extracted folder's name), the ``train`` batches, the ``test`` batch, the ``meta`` file
#: and the ``label_key`` of the batch dicts.
CifarLayout = collections.namedtuple('CifarLayout', 'name folder train test meta label_key')


def _batch_arrays(layout, d, where):
    """Images (N, 3, 32, 32) uint8 and labels (N,) of one unpickled batch dict."""
    if 'data' not in d or layout.label_key not in d:
        raise CorruptDataError('%s: missing %r or %r (keys: %s)'
                               % (where, 'data', layout.label_key, sorted(map(str, d))))
    x = d['data']
    y = numpy.asarray(d[layout.label_key])
    if not isinstance(x, numpy.ndarray) or x.dtype != numpy.uint8 or x.ndim != 2 \
            or x.shape[1] != 3072 or y.shape != x.shape[:1] \
            or (y.size and y.dtype.kind not in 'iu'):
        raise CorruptDataError('%s: expected uint8 data (N, 3072) and N integer labels, '
                               'found %s %s and %s labels'
                               % (where, getattr(x, 'dtype', type(x).__name__),
                                  getattr(x, 'shape', ()), y.shape))
    return x.reshape(-1, 3, 32, 32), y.astype(numpy.int64)


def _join(batches):
    xs, ys = zip(*batches)
    return numpy.concatenate(xs), numpy.concatenate(ys)


def read_cifar_folder(layout, path):
    """(train, test), each (uint8 images (N, 3, 32, 32), int64 labels), from the
    extracted python batches in the folder ``path``; a missing batch is an error."""
    splits = []
    for members in (layout.train, (layout.test,)):
        batches = []
        for member in members:
            f = os.path.join(path, member)
            if not os.path.isfile(f):
                raise FileNotFoundError('%s: incomplete %s folder, missing %s'
                                        % (path, layout.name, f))
            with open(f, 'rb') as fileobj:
                batches.append(_batch_arrays(layout, load_batch_pickle(fileobj, f), f))
        splits.append(_join(batches))
    return splits[0], splits[1]


def read_cifar_archive(layout, path):
    """(train, test) as :func:`read_cifar_folder`, straight out of the ``.tar.gz`` at
    ``path``, in stream order, without extracting."""
    wanted = {'%s/%s' % (layout.folder, m): m for m in layout.train + (layout.test,)}
    found = {}
    try:
        with tarfile.open(path, 'r:*') as tar:
            for info in tar:
                member = info.name[2:] if info.name.startswith('./') else info.name
                if member in wanted and info.isfile():
                    where = '%s (member %s)' % (path, member)
                    found[wanted[member]] = _batch_arrays(
                        layout, load_batch_pickle(tar.extractfile(info), where), where)
    except CorruptDataError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise CorruptDataError('%s: cannot read the archive (%s: %s); it is truncated or '
                               'corrupted, download it again' % (path, type(e).__name__, e))
    missing = sorted(m for m in wanted if wanted[m] not in found)
    if missing:
        raise CorruptDataError('%s: archive lacks %s (not the %s python archive?)'
                               % (path, ', '.join(missing), layout.name))
    return _join([found[m] for m in layout.train]), _join([found[layout.test]])


def _load_npz(path, keys, what):
    """{key: array} of ``keys`` from the npz at ``path`` (no pickled objects allowed)."""
    try:
        with numpy.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in keys}
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError, zlib.error) as e:
        raise CorruptDataError("%s: cannot read Chainer's cached %s npz (%s: %s); delete it "
                               'and provide the data again' % (path, what, type(e).__name__, e))


def read_cifar_npz(layout, path):
    """(train, test) from the npz ``chainer.datasets.get_cifar10/100`` writes: uint8
    ``train_x``/``test_x`` (N, 3072) and integer ``train_y``/``test_y`` (N,)."""
    arrays = _load_npz(path, ('train_x', 'train_y', 'test_x', 'test_y'), layout.name)
    splits = []
    for split in ('train', 'test'):
        x, y = arrays[split + '_x'], arrays[split + '_y']
        if x.dtype != numpy.uint8 or x.size != len(y) * 3072 or y.dtype.kind not in 'iu' \
                or y.ndim != 1:
            raise CorruptDataError('%s: %s_x is %s %s for %d labels (%s), expected uint8 '
                                   '(N, 3072) and integer labels'
                                   % (path, split, x.dtype, x.shape, len(y), y.dtype))
        splits.append((x.reshape(-1, 3, 32, 32), y.astype(numpy.int64)))
    return splits[0], splits[1]


# --------------------------------------------------------------------------- IDX

_IDX_DTYPES = {0x08: numpy.uint8}
FMNIST_SIZE = 28


def read_idx(path):
    """The array in an IDX file (``path`` gzipped or not): uint8 data only, as the
    (Fashion-)MNIST files are.  Anything else, or a short file, raises
    :class:`CorruptDataError` naming ``path``."""
    try:
        with open(path, 'rb') as f:
            head = f.read(2)
        opener = gzip.open if head == b'\x1f\x8b' else open
        with opener(path, 'rb') as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise CorruptDataError('%s: cannot read (%s: %s); the file is truncated or '
                               'corrupted, provide it again' % (path, type(e).__name__, e))
    if len(raw) < 4 or raw[:2] != b'\x00\x00' or raw[2] not in _IDX_DTYPES:
        raise CorruptDataError('%s: not an IDX file of unsigned bytes (header %s)'
                               % (path, raw[:4].hex() or 'empty'))
    ndim = raw[3]
    if ndim < 1 or len(raw) < 4 + 4 * ndim:
        raise CorruptDataError('%s: IDX header truncated or with %d dimensions'
                               % (path, ndim))
    shape = tuple(int(d) for d in numpy.frombuffer(raw, '>u4', ndim, 4))
    size = int(numpy.prod(shape, dtype=numpy.int64))
    body = len(raw) - 4 - 4 * ndim
    if body != size:
        raise CorruptDataError('%s: IDX header says %s (%d bytes) but the file holds %d; '
                               'it is truncated or corrupted, provide it again'
                               % (path, 'x'.join(map(str, shape)), size, body))
    return numpy.frombuffer(raw, numpy.uint8, size, 4 + 4 * ndim).reshape(shape)


def fashion_split(images, labels, where):
    """Images (N, 28, 28) and labels (N,) of one Fashion-MNIST split checked, as
    (N, 1, 28, 28) uint8 and int64; ``where`` = (images file, labels file) for errors."""
    if images.ndim != 3 or images.shape[1:] != (FMNIST_SIZE, FMNIST_SIZE):
        raise CorruptDataError('%s: expected 28x28 images, found shape %s'
                               % (where[0], images.shape))
    if labels.ndim != 1 or len(labels) != len(images):
        raise CorruptDataError('%s: %s labels for %d images in %s'
                               % (where[1], labels.shape, len(images), where[0]))
    if labels.size and labels.max() >= 10:
        raise CorruptDataError('%s: labels outside [0, 10)' % where[1])
    return images[:, None], labels.astype(numpy.int64)


def read_idx_splits(files):
    """(train, test) from the four IDX files ``files`` = {'train': (images, labels),
    'test': (images, labels)} (paths)."""
    return tuple(fashion_split(read_idx(files[s][0]), read_idx(files[s][1]), files[s])
                 for s in ('train', 'test'))


def read_fashion_npz(paths):
    """(train, test) from the npz files ``chainer.datasets.get_fashion_mnist`` writes
    (``paths`` = (train, test)): ``x`` uint8 (N, 784), ``y`` (N,)."""
    splits = []
    for path in paths:
        z = _load_npz(path, ('x', 'y'), 'Fashion-MNIST')
        x, y = z['x'], z['y']
        if x.dtype != numpy.uint8 or x.size != len(y) * FMNIST_SIZE ** 2 \
                or y.dtype.kind not in 'iu':
            raise CorruptDataError('%s: x is %s %s for %d labels (%s), expected uint8 '
                                   '(N, 784) and integer labels'
                                   % (path, x.dtype, x.shape, len(y), y.dtype))
        splits.append(fashion_split(x.reshape(-1, FMNIST_SIZE, FMNIST_SIZE),
                                    y.reshape(-1), (path, path)))
    return splits[0], splits[1]
