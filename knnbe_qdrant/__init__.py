"""knnbe-qdrant: map job-posting text to ESCO skills with kNNBE on Qdrant.

kNNBE interpolates a bi-encoder score with a k-nearest-neighbour vote over a memory bank of labelled sentences:
score = lam * b + (1 - lam) * v. See `SkillMapper` to map, `Curator` to edit skills and memory, `build_store` to
build, `Connection` to say where the store is. This list is the public API; modules whose names start with an
underscore are private, and the subpackages (`store`, `encoding`, `evaluation`, `postings`, `migrations`) export
their own names.
"""

from typing import Any

from ._build import build_store
from ._curation import Curator
from ._data import DEFAULT_MEMORY_SOURCES, LabelledSentence, Skill, default_memory, load_taxonomy
from ._errors import (
    ConflictError,
    InputFileError,
    InvalidInputError,
    KnnbeError,
    ModelError,
    ModelMismatchError,
    NotFoundError,
    OnnxUnsupported,
    QuotaExceededError,
    ServerError,
    StoreCorruptError,
    StoreError,
    StoreLockedError,
    StoreNotFoundError,
)
from ._importing import ImportReport
from ._mapper import MODES, SkillMapper
from ._quota import Quota
from ._results import Evidence, SentenceResult, SkillMatch
from ._scoring import ScoringParams
from .encoding import BASE_MODEL, DEFAULT_MODEL, Encoder
from .store import Connection, EdgeStore, Store, default_store_path, open_store

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "QdrantClientStore":  # imported on first use: qdrant-client is slow to import
        from .store.client import QdrantClientStore

        return QdrantClientStore
    raise AttributeError(f"module 'knnbe_qdrant' has no attribute {name!r}")


__all__ = [
    "BASE_MODEL",
    "DEFAULT_MEMORY_SOURCES",
    "DEFAULT_MODEL",
    "MODES",
    "ConflictError",
    "Connection",
    "Curator",
    "EdgeStore",
    "Encoder",
    "Evidence",
    "ImportReport",
    "InputFileError",
    "InvalidInputError",
    "KnnbeError",
    "LabelledSentence",
    "ModelError",
    "ModelMismatchError",
    "NotFoundError",
    "OnnxUnsupported",
    "QdrantClientStore",
    "Quota",
    "QuotaExceededError",
    "ScoringParams",
    "SentenceResult",
    "ServerError",
    "Skill",
    "SkillMapper",
    "SkillMatch",
    "Store",
    "StoreCorruptError",
    "StoreError",
    "StoreLockedError",
    "StoreNotFoundError",
    "__version__",
    "build_store",
    "default_memory",
    "default_store_path",
    "load_taxonomy",
    "open_store",
]
