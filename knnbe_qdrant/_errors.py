"""Every exception the package raises on purpose. All derive from KnnbeError, so callers can catch one type."""

from __future__ import annotations


class KnnbeError(Exception):
    """Base class of every error raised by knnbe-qdrant."""


class InvalidInputError(KnnbeError, ValueError):
    """Input text or a parameter is unusable (empty sentence, bad parameter value, ...)."""


class InputFileError(KnnbeError):
    """An input file cannot be read: missing, not UTF-8, or a malformed line. The message names file and line."""


class StoreError(KnnbeError):
    """The store cannot be used as asked."""


class StoreNotFoundError(StoreError):
    """No store exists at the given location (run `knnbe-qdrant build` first)."""


class StoreCorruptError(StoreError):
    """The location holds something that is not a complete, readable store (half-built, damaged, foreign)."""


class ModelMismatchError(StoreError):
    """The store was built with another embedding model or dimension than the one requested."""


class StoreLockedError(StoreError):
    """Another process holds the embedded store open for writing."""


class NotFoundError(KnnbeError, LookupError):
    """The skill or sentence named does not exist, or is not visible to this tenant."""
