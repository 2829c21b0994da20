"""The domain errors: bad input or an unavailable resource, reported as one line by the entry points.

Entry points catch :class:`BlockpruneError` only (one line on stderr, exit 2); anything else is a bug
and shows its traceback. Each concrete error also derives from the builtin it refines (``ValueError``,
``KeyError``…) so library callers that catch those keep working.
"""

from __future__ import annotations


class BlockpruneError(Exception):
    """Base of every error that means "the input or the environment is wrong", not "the code is wrong"."""


class BadInputError(BlockpruneError, ValueError):
    """A value the user gave (flag, spec key, file) is malformed or out of range."""


class ResourceError(BlockpruneError, RuntimeError):
    """Something the job needs is missing or unusable: disk space, a package, a server, a file."""


class MissingFileError(BadInputError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class MissingPackageError(ResourceError, ModuleNotFoundError):
    """A PyPI package the requested feature needs is not installed; the message names it."""


class DiskSpaceError(ResourceError):
    """A filesystem a write is about to go to has less free space than the write needs."""
