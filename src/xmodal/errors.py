"""Exceptions with messages a user can act on.

Every error says what was asked, what was found and how to fix it. The CLI prints ``str(err)`` on
one line and exits non-zero, so messages must be complete sentences without a traceback.
"""

from __future__ import annotations


class XmodalError(Exception):
    """Base class of all errors raised on purpose by xmodal."""


class ModelNotFoundError(XmodalError):
    """A model name/path could not be resolved to local weights (and the hub was not reachable)."""


class IndexMismatchError(XmodalError):
    """A saved index does not match the model, dimension or format it is being used with."""


class IndexNotFoundError(XmodalError):
    """A path given as an index folder holds no xmodal index."""


class CorruptIndexError(XmodalError):
    """An index folder exists but its files fail the manifest checksum or cannot be parsed."""


class InvalidInputError(XmodalError, ValueError):
    """Bad user input: empty query, wrong vector shape, unknown ids, unreadable image, ..."""


class DatasetFormatError(XmodalError, ValueError):
    """A dataset/feature file is malformed; the message names the file and line/record."""
