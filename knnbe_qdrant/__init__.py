"""knnbe-qdrant: map job-posting text to ESCO skills with kNNBE on Qdrant.

kNNBE interpolates a bi-encoder score with a k-nearest-neighbour vote over a memory bank of labelled sentences:
score = lam * b + (1 - lam) * v. See `SkillMapper` to map, `build_store` to build.
"""

from ._build import build_store
from ._config import default_store_path, open_store
from ._curation import Curator, ImportReport
from ._data import DEFAULT_MEMORY_SOURCES, LabelledSentence, Skill, default_memory, load_taxonomy
from ._encoder import BASE_MODEL, DEFAULT_MODEL, Encoder
from ._errors import (
    InputFileError,
    InvalidInputError,
    KnnbeError,
    ModelMismatchError,
    NotFoundError,
    StoreCorruptError,
    StoreError,
    StoreLockedError,
    StoreNotFoundError,
)
from ._mapper import MODES, SkillMapper
from ._results import Evidence, SentenceResult, SkillMatch
from ._scoring import ScoringParams
from .store import EdgeStore, Store

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "QdrantClientStore":  # imported on first use: qdrant-client is slow to import
        from .store.client import QdrantClientStore

        return QdrantClientStore
    raise AttributeError(name)

__all__ = [
    "Curator",
    "DEFAULT_MEMORY_SOURCES",
    "ImportReport",
    "NotFoundError",
    "BASE_MODEL",
    "DEFAULT_MODEL",
    "MODES",
    "EdgeStore",
    "Encoder",
    "Evidence",
    "InputFileError",
    "InvalidInputError",
    "KnnbeError",
    "LabelledSentence",
    "ModelMismatchError",
    "QdrantClientStore",
    "ScoringParams",
    "SentenceResult",
    "Skill",
    "SkillMapper",
    "SkillMatch",
    "Store",
    "StoreCorruptError",
    "StoreError",
    "StoreLockedError",
    "StoreNotFoundError",
    "build_store",
    "default_memory",
    "default_store_path",
    "load_taxonomy",
    "open_store",
]
