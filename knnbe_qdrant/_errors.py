"""Every exception the package raises on purpose. All derive from KnnbeError, so callers can catch one type:

    KnnbeError
    ├── InvalidInputError (also a ValueError)   a sentence, a parameter or a setting is unusable
    ├── InputFileError                          a file cannot be read; the message names file and line
    ├── NotFoundError (also a LookupError)      the skill or sentence named is not there for this tenant
    ├── ConflictError                           another edit of the same item came first (HTTP 409)
    ├── QuotaExceededError                      the tenant holds as many skills or sentences as it may (HTTP 403)
    ├── ModelError                              a model cannot be loaded, patched or exported
    │   └── OnnxUnsupported                     its pipeline is not one the ONNX runtime reproduces
    └── StoreError                              the store cannot be used as asked
        ├── StoreNotFoundError                  nothing at that location: run `knnbe-qdrant build`
        ├── StoreCorruptError                   half-built, damaged, foreign or of another schema version
        ├── ModelMismatchError                  built with another model or dimension than the one asked for
        ├── StoreLockedError                    another process holds the embedded store
        └── ServerError                         a Qdrant server cannot be reached, or answered with an error

The command line turns InvalidInputError into exit status 2 and every other KnnbeError into 1, printing the message
alone: messages are written for the person at the terminal, and say what to do.
"""

from __future__ import annotations


class KnnbeError(Exception):
    """Base class of every error raised by knnbe-qdrant."""


class InvalidInputError(KnnbeError, ValueError):
    """Input text or a parameter is unusable (empty sentence, bad parameter value, ...)."""


class InputFileError(KnnbeError):
    """An input file cannot be read: missing, not UTF-8, or a malformed line. The message names file and line."""


class NotFoundError(KnnbeError, LookupError):
    """The skill or sentence named does not exist, or is not visible to this tenant."""


class ConflictError(KnnbeError):
    """Another edit of the same item (a skill id, a sentence, a key name) came first, or holds it right now: this
    one was not applied. Re-read and try again."""


class QuotaExceededError(KnnbeError):
    """The tenant holds as many skills or memory sentences of its own as its quota allows (`_quota.Quota`): the add
    was not applied. Remove some first, or raise the quota."""


class ModelError(KnnbeError):
    """An embedding model cannot be loaded, patched or exported."""


class OnnxUnsupported(ModelError):
    """The model's pipeline is not one the ONNX runtime reproduces exactly (the torch runtime is used instead)."""


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


class ServerError(StoreError):
    """A Qdrant server cannot be reached, did not answer in time, or answered with an error. The message is one line
    that names the server, what failed and what to do."""
