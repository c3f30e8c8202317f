"""One locator for every dataset: a dataset is a list of :class:`Source` s (where it may
be, what that place is, how to read it), walked in order by :func:`locate`.

The first source present is read, and what it holds is used or is an error: a damaged
file or a checksum that does not match raises, it is never passed over for the next
source.  A source outside ``--data-dir`` used while ``--data-dir`` was given is said in a
warning.  Nothing present (and no download asked for, or the download failed) raises
:class:`FileNotFoundError` with one line: every place looked in, then how to provide the
data.
"""
import dataclasses
import os
import typing
import warnings


@dataclasses.dataclass(frozen=True)
class Source:
    """One place a dataset may be.

    ``path``: a file, or (``members`` given) a folder holding the files ``members`` =
    {name shown: file names tried in turn};  ``read(path, files)`` -> (train, test), with
    ``files`` = {name shown: path found} (empty for a file), checks what it reads
    (checksums before parsing);  ``label``: what the place is, for messages;
    ``in_data_dir``: the place is under ``--data-dir``.
    """

    path: str
    read: typing.Callable
    label: str = ''
    members: typing.Optional[dict] = None
    in_data_dir: bool = False

    @property
    def is_folder(self):
        return self.members is not None

    def files(self):
        """{name shown: path of the first of its file names present, or None}."""
        found = {}
        for shown, names in (self.members or {}).items():
            paths = (os.path.join(self.path, n) for n in names)
            found[shown] = next((p for p in paths if os.path.isfile(p)), None)
        return found

    def absence(self):
        """None if the source is present; else why not, for the 'looked in' list ('' when
        the path does not exist)."""
        if not os.path.exists(self.path):
            return ''
        if not self.is_folder:
            return None if os.path.isfile(self.path) else 'not a file'
        if not os.path.isdir(self.path):
            return 'not a folder'
        lacking = [shown for shown, path in self.files().items() if path is None]
        return 'which lacks %s' % ', '.join(lacking) if lacking else None

    def describe(self, note=''):
        notes = ', '.join(n for n in (self.label, note) if n)
        return self.path + ('/' if self.is_folder else '') + (' (%s)' % notes if notes else '')

    def load(self):
        return self.read(self.path, self.files())


@dataclasses.dataclass(frozen=True)
class Download:
    """How a dataset is downloaded: ``fetch()`` (raises on failure) leaves the data at
    ``source``; ``url`` and ``cache`` (where it is kept) are named in messages."""

    fetch: typing.Callable
    source: Source
    url: str
    cache: str


@dataclasses.dataclass(frozen=True)
class Located:
    """What :func:`locate` found: the arrays and where they came from."""

    train: tuple
    test: tuple
    where: str


def locate(title, sources, *, data_dir=None, download=None, allow_download=False,
           fix='', otherwise=''):
    """The data of the first present source in ``sources``, as :class:`Located`.

    ``title`` names the dataset in messages; ``data_dir``: the ``--data-dir`` given (or
    None; its sources are skipped if it does not exist); ``download``: a
    :class:`Download`, run only with ``allow_download``; ``fix``: how to provide the data,
    ``otherwise``: what else to do without it (the end of the "not found" line).
    """
    looked = []
    if data_dir is not None and not os.path.exists(data_dir):
        looked.append('%s (--data-dir: does not exist)' % data_dir)
        sources = [s for s in sources if not s.in_data_dir]
    for source in sources:
        absence = source.absence()
        if absence is None:
            train, test = source.load()
            if data_dir is not None and not source.in_data_dir:
                warnings.warn('no %s data in --data-dir %s; using %s%s'
                              % (title, data_dir, source.label + ' ' if source.label else '',
                                 source.path))
            return Located(train, test, source.path)
        looked.append(source.describe(absence))
    error = None
    if allow_download and download is not None:
        try:
            download.fetch()
        except Exception as e:  # network, disk, anything: report it, never fall back
            error = '%s: %s' % (type(e).__name__, e)
        else:
            absence = download.source.absence()
            if absence is None:
                train, test = download.source.load()
                return Located(train, test, '%s (downloaded from %s)'
                               % (download.source.path, download.url))
            error = 'it left no %s' % download.source.describe(absence)
    raise FileNotFoundError(not_found(title, looked, fix, otherwise, download,
                                      allow_download, error))


def not_found(title, looked, fix, otherwise='', download=None, allow_download=False,
              error=None):
    """The one line saying that ``title`` was not found: the places ``looked`` in, the
    download's failure or how to ask for one, ``fix`` and ``otherwise``."""
    line = '%s not found' % title
    if allow_download and download is not None:
        line += ' and its download from %s failed (%s)' % (download.url, error)
    line += ' (looked in: %s); to use it, %s' % ('; '.join(looked), fix)
    if download is not None and not allow_download:
        line += ', or pass --download to let Chainer fetch it (it caches it under %s)' % (
            download.cache)
    if otherwise:
        line += '; ' + otherwise
    return line
