"""The ONNX Runtime encoder: the model's own fast tokenizer, its transformer exported once to ONNX, mean or CLS
pooling and normalisation in numpy. It starts in well under a second (no torch import) and encodes faster on CPU.

The export is checked against sentence-transformers itself (cosine >= MIN_ONNX_COSINE on probe sentences) and
cached next to the model, or in the user cache where that folder is read-only.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import OnnxUnsupported
from .cache import user_cache
from .encoded import Encoded

ONNX_FILE = "knnbe-qdrant.onnx"
TOKEN_BUDGET = 1024
"""Padded tokens per forward pass. Measured on 2 cores, 2026-11-26 (ONNX Runtime, fp32): 1,024 SkillSkape sentences
276/s with 1,024 tokens a pass against 254/s with 16 texts a pass and 178/s with 64; 4,096 ESCO labels 1,617/s
against 1,146/s and 1,509/s. Small passes pad less and stay in cache; short texts still go many to a pass."""
PASS_SPREAD = 1.5
"""A pass's longest text is at most this times its shortest, plus 4 tokens: padding is computed like any token, and
a few texts of mixed lengths in one pass padded most of them to the longest. Measured on 2 cores, 2026-12-07 (ONNX
Runtime fp32, median of 5 alternating rounds, ms per text): postings' sentences 8 to a call 10.1 -> 7.3, 16 to a
call 9.3 -> 6.5, 256 to a call 5.2 -> 4.8; the same vectors; ESCO labels 1,024 to a call 1.43 either way."""
MIN_ONNX_COSINE = 0.999
PROBES = [
    "Experience with Python and SQL databases.",
    "You will provide nursing care to patients and lead a small team.",
    "Fluent English; German is an advantage.",
    "cook",
]


def pipeline(model_dir: Path) -> tuple[str, int]:
    """(pooling mode, max sequence length) of a plain Transformer -> Pooling [-> Normalize] model; else it raises
    OnnxUnsupported."""
    try:
        modules = json.loads((model_dir / "modules.json").read_text())
    except (OSError, ValueError) as exc:
        raise OnnxUnsupported(f"no readable modules.json in {model_dir}") from exc
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or any(k != "Normalize" for k in kinds[2:]):
        raise OnnxUnsupported(f"pipeline {kinds} is not Transformer -> Pooling [-> Normalize]")
    pooling = json.loads((model_dir / modules[1]["path"] / "config.json").read_text())
    if isinstance(pooling.get("pooling_mode"), str):  # sentence-transformers 6 saves {"pooling_mode": "mean"}
        modes = [f"pooling_mode_{pooling['pooling_mode']}"]
    else:
        modes = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v]
    modes = [{"pooling_mode_mean": "pooling_mode_mean_tokens", "pooling_mode_cls": "pooling_mode_cls_token"}.get(m, m)
             for m in modes]
    if modes not in (["pooling_mode_mean_tokens"], ["pooling_mode_cls_token"]):
        raise OnnxUnsupported(f"pooling {modes} is not plain mean or CLS pooling")
    config_file = model_dir / "sentence_bert_config.json"
    max_len = json.loads(config_file.read_text()).get("max_seq_length", 512) if config_file.exists() else 512
    return ("mean" if modes == ["pooling_mode_mean_tokens"] else "cls"), int(max_len)


def padded_width(longest: int, align: int, limit: int) -> int:
    """A pass's padded length: its longest text's, or the next multiple of `align` where that is at most half of
    `align` further (and within the model's `limit`). Padding is masked out of attention and pooling, so only the
    speed changes (see TokenizedRuntime.align)."""
    rest = longest % align
    wider = longest + align - rest
    return wider if rest and align - rest <= align // 2 and wider <= limit else longest


def padded_feed(inputs: Sequence[str], encodings: Sequence[Any], align: int = 1,
                limit: int = 1 << 30) -> dict[str, np.ndarray]:
    """One forward pass's inputs for these tokenizer encodings, padded to the longest of them (`padded_width`)."""
    width = padded_width(max(len(e.ids) for e in encodings), align, limit)
    feed = {name: np.zeros((len(encodings), width), dtype=np.int64) for name in inputs}
    for r, e in enumerate(encodings):
        n = len(e.ids)
        feed["input_ids"][r, :n] = e.ids
        feed["attention_mask"][r, :n] = 1
        if "token_type_ids" in feed:
            feed["token_type_ids"][r, :n] = e.type_ids
    return feed


class TokenizedRuntime:
    """The model's fast tokenizer, length-bucketed batches, and pooling in numpy, around an exported transformer
    that `_run` executes (ONNX Runtime here; OpenVINO in encoding.openvino)."""

    name = "abstract"
    precision = "fp32"
    align = 1
    """Passes are padded towards a multiple of this many tokens (`padded_width`) where the runtime's kernels run
    such lengths faster than shorter unaligned ones; 1 (no padding) unless a runtime measured a gain."""
    inputs: list[str]
    dimension: int

    def __init__(self, model_dir: Path) -> None:
        from tokenizers import Tokenizer

        self.pooling, max_len = pipeline(model_dir)
        self.max_len = max_len
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_len)

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def encode(self, texts: Sequence[str], batch_size: int, token_budget: int = TOKEN_BUDGET) -> np.ndarray:
        return self.encode_tokens(texts, batch_size, token_budget, keep_tokens=False).vectors

    def encode_tokens(self, texts: Sequence[str], batch_size: int, token_budget: int = TOKEN_BUDGET,
                      keep_tokens: bool = True) -> Encoded:
        """Pooled unit vectors and, with `keep_tokens`, each text's content-token states, from one forward pass."""
        encodings = self.tokenizer.encode_batch(list(texts))
        states: list[np.ndarray] = [np.empty(0)] * len(texts) if keep_tokens else []
        spans: list[list[tuple[int, int]]] = [[] for _ in texts] if keep_tokens else []
        # Length-bucketed passes: texts sorted by token count, each pass padded only to its own longest text and
        # holding as many texts as fit `token_budget` padded tokens (at most `batch_size`), of lengths within
        # PASS_SPREAD of each other: many short labels in one pass, few long sentences.
        lengths = [len(e.ids) for e in encodings]
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        start = 0
        while start < len(order):
            end = start + 1
            while (end < len(order) and end - start < batch_size
                   and (end - start + 1) * lengths[order[end]] <= token_budget
                   and lengths[order[end]] <= PASS_SPREAD * lengths[order[start]] + 4):
                end += 1
            rows = order[start:end]
            start = end
            feed = padded_feed(self.inputs, [encodings[i] for i in rows], self.align, self.max_len)
            hidden = self._run(feed)
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = feed["attention_mask"][..., None].astype(np.float32)
                pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
            out[rows] = pooled
            if keep_tokens:
                for r, i in enumerate(rows):
                    e = encodings[i]
                    content = [t for t, special in enumerate(e.special_tokens_mask) if not special] or list(
                        range(len(e.ids)))
                    states[i] = np.ascontiguousarray(hidden[r, content], dtype=np.float32)
                    spans[i] = [e.offsets[t] for t in content]
        return Encoded(out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12), states, spans)


class OnnxRuntime(TokenizedRuntime):
    name = "onnx"

    def __init__(self, model_dir: Path, onnx_path: Path, device: str | None, threads: int | None = None) -> None:
        import onnxruntime as ort

        super().__init__(model_dir)
        providers = ["CPUExecutionProvider"]
        if device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # Worker threads that spin while waiting for work take the CPU from whatever else runs (a service's HTTP
        # loop, the query side of mapping); on few cores, yielding costs less than it saves.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.dimension = int(self.session.get_outputs()[0].shape[-1])

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.session.run(None, feed)[0])


def onnx_path_for(model_dir: Path) -> Path:
    """Next to the model where that folder is writable; else in the user's cache."""
    beside = model_dir / "onnx"
    if os.access(model_dir, os.W_OK) and (not beside.exists() or os.access(beside, os.W_OK)):
        return beside / ONNX_FILE
    cache = user_cache("onnx")
    key = hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:16]
    return cache / f"{model_dir.name}-{key}" / ONNX_FILE


def export_onnx(model_dir: Path, target: Path) -> float:
    """Export the model's transformer to ONNX at `target` (atomically) and return the smallest cosine between the
    ONNX and the sentence-transformers embeddings of the probe sentences; below MIN_ONNX_COSINE nothing is kept."""
    pipeline(model_dir)  # refuse pipelines the runtime cannot reproduce before paying for an export
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    transformer = model[0].auto_model.eval()
    sample = model.tokenizer(PROBES[:2], padding=True, return_tensors="pt")
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
        reference = model.encode(PROBES, normalize_embeddings=True, convert_to_numpy=True)
        candidate = OnnxRuntime(model_dir, tmp, "cpu").encode(PROBES, batch_size=len(PROBES))
        cosine = float(np.min(np.sum(reference * candidate, axis=1)))
        if cosine < MIN_ONNX_COSINE:
            raise OnnxUnsupported(f"ONNX export differs from the model (cosine {cosine:.5f} < {MIN_ONNX_COSINE})")
        tmp.chmod(0o644)  # mkstemp makes it private; the model folder it joins is readable by all
        os.replace(tmp, target)  # other processes see no file or a whole, checked one
        return cosine
    finally:
        tmp.unlink(missing_ok=True)
