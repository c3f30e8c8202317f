"""The errors of data loading; the command line turns each into one ``error:`` line."""


class DataError(ValueError):
    """The data cannot serve the run asked for (the message says why)."""


class CorruptDataError(DataError):
    """A data file exists but cannot be read (truncated, corrupted, wrong format, or not
    the published file: a checksum that does not match, a pickle asking for code)."""
