"""int8 queries on OpenVINO: the exported transformer statically quantized by NNCF (OpenVINO's own quantization
tool), once per model, and cached next to the ONNX file.

Measured on a 2-core AMD EPYC with AVX-512 VNNI (2026-12-03, docs/performance.md): 1.2-1.3x the sentences/s of
OpenVINO bf16, embeddings at mean cosine 0.9992 (min 0.998) to fp32 on 1,024 SkillSkape dev sentences, and RP@5 /
RP@10 within 0.71 points of bf16 (0.55 of fp32) on TECH and HOUSE validation and SkillSkape dev, no paired interval
wholly below 0.
Two kinds of matrix product stay in floating point, which is what keeps it that close:
- the attention products (query x key, weights x value), whose both sides are activations;
- the down-projections (input wider than output: each feed-forward block's output), whose inputs carry the
  transformer's activation outliers. Quantizing them too ran 1.45x bf16 but at cosine 0.997, and lost 0.45 MRR on
  SkillSkape dev (interval excluding 0) and 0.9 RP@5 on TECH.

Opt-in (`Encoder(precision="int8")` or KNNBE_PRECISION=int8) and for queries only: stored vectors stay fp32.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import ModelError
from .onnx import PROBES, OnnxRuntime, padded_feed
from .openvino import OpenVinoRuntime

log = logging.getLogger(__name__)

INT8_DIR = "int8"
MODEL_FILE = "model.xml"
WEIGHTS_FILE = "model.bin"
CHECKSUMS_FILE = "checksums.json"
CALIBRATION_SENTENCES = 600
"""SkillSkape *train* sentences (never a benchmark split) that set the activation ranges; 2,000 gave the same
cosines as 600."""
CALIBRATION_BATCH = 8
MIN_INT8_COSINE = 0.99
"""The quantized model is kept only if its probe embeddings are at least this close to the fp32 ones (the shipped
model's lowest on 1,024 dev sentences: 0.998)."""


def available() -> bool:
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def int8_dir_for(onnx_path: Path) -> Path:
    return onnx_path.parent / INT8_DIR


def calibration_texts(n: int | None = None) -> list[str]:
    from .._data import skillskape_sentences

    texts = [text for text, _ in skillskape_sentences("train")]
    random.Random(0).shuffle(texts)  # the file is grouped by skill: a prefix would calibrate on a few skills
    return texts[: CALIBRATION_SENTENCES if n is None else n]


def _checksums(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in (MODEL_FILE, WEIGHTS_FILE)}


def is_whole(folder: Path) -> bool:
    """Whether `folder` holds a quantized model whose files are the ones written (a damaged or half-copied cache
    is quantized again, not loaded: a flipped weight would change every embedding silently)."""
    try:
        recorded = json.loads((folder / CHECKSUMS_FILE).read_text())
        return bool(recorded == _checksums(folder))
    except (OSError, ValueError):
        return False


def _float_kept(model: Any) -> list[str]:
    """Names of the matrix products quantization leaves in floating point (see the module's docstring)."""
    kept = []
    for op in model.get_ops():
        if op.get_type_name() != "MatMul":
            continue
        sources = []
        for i in range(2):
            node = op.input_value(i).get_node()
            while node.get_type_name() in ("Convert", "Reshape"):
                node = node.input_value(0).get_node()
            sources.append(node.get_type_name())
        inner, outer = op.get_input_partial_shape(0)[-1], op.get_output_partial_shape(0)[-1]
        down = inner.is_static and outer.is_static and inner.get_length() > outer.get_length()
        if "Constant" not in sources or down:
            kept.append(op.get_friendly_name())
    return kept


def quantize(runtime_inputs: Sequence[str], tokenizer: Any, onnx_path: Path, texts: Sequence[str]) -> Path:
    """The int8 model of `onnx_path`, quantized on `texts` and written whole (a folder renamed into place, with its
    files' checksums); an existing whole one is returned as it is."""
    import nncf
    import openvino as ov

    target = int8_dir_for(onnx_path)
    if is_whole(target):
        return target
    feeds = [padded_feed(runtime_inputs, tokenizer.encode_batch(list(texts[start: start + CALIBRATION_BATCH])))
             for start in range(0, len(texts), CALIBRATION_BATCH)]
    _remove_stale_staging(target.parent)
    model = ov.Core().read_model(str(onnx_path))
    log.info("quantizing %s to int8 on %d sentences (once; cached in %s)", onnx_path, len(texts), target)
    nncf.set_log_level(logging.ERROR)
    # NNCF draws its progress bars on standard output, which is `map --json`'s: they go to standard error.
    with contextlib.redirect_stdout(sys.stderr):
        quantized = nncf.quantize(model, nncf.Dataset(feeds), subset_size=len(feeds),
                                  model_type=nncf.ModelType.TRANSFORMER, preset=nncf.QuantizationPreset.MIXED,
                                  ignored_scope=nncf.IgnoredScope(names=_float_kept(model)))
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{INT8_DIR}-"))
    try:
        ov.save_model(quantized, str(staging / MODEL_FILE))
        (staging / CHECKSUMS_FILE).write_text(json.dumps(_checksums(staging)))
        for name in (MODEL_FILE, WEIGHTS_FILE, CHECKSUMS_FILE):
            with open(staging / name, "rb") as f:
                os.fsync(f.fileno())
        staging.chmod(0o755)  # mkdtemp makes it private; the model folder it joins is readable by all
        if is_whole(target):  # another process finished first while this one quantized: keep the one in use
            return target
        if target.exists():  # damaged: moved aside first, so that no reader ever meets a half-removed folder
            aside = staging.with_name(staging.name + ".damaged")
            with contextlib.suppress(FileNotFoundError):
                os.rename(target, aside)
            _remove(aside)
        try:
            os.rename(staging, target)
        except OSError:  # another process renamed its own whole one into place first: use that one
            if not is_whole(target):
                raise
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_stale_staging(folder: Path, older_than_s: float = 3600.0) -> None:
    """Staging folders a killed quantization left (it takes seconds; one an hour old is no one's)."""
    now = time.time()
    for leftover in folder.glob(f".{INT8_DIR}-*"):
        with contextlib.suppress(OSError):
            if now - leftover.lstat().st_mtime > older_than_s:
                _remove(leftover)


def _remove(path: Path) -> None:
    """A folder with what is in it, or a file or link (what someone put where the folder was)."""
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


def open_runtime(model_dir: Path, onnx_path: Path, float_precision: str, threads: int | None = None
                 ) -> OpenVinoRuntime:
    """The int8 runtime of the exported model at `onnx_path`, quantizing it first where no whole one is cached; the
    layers left in floating point run in `float_precision` ("bf16" or "fp32")."""
    if not available():
        raise ModelError("precision int8 needs OpenVINO and NNCF: pip install 'knnbe-qdrant[int8]'")
    folder = int8_dir_for(onnx_path)
    reference = None
    if not is_whole(folder):
        reference = OnnxRuntime(model_dir, onnx_path, "cpu")
        try:
            quantize(reference.inputs, reference.tokenizer, onnx_path, calibration_texts())
        except OSError as exc:
            raise ModelError(f"cannot write the int8 model into {folder.parent}: {exc}") from exc
    runtime = OpenVinoRuntime(model_dir, folder / MODEL_FILE, precision=float_precision, threads=threads)
    runtime.precision = "int8"
    if reference is not None:  # checked once, when made; is_whole keeps it the same file afterwards
        cosine = float(np.min(np.sum(runtime.encode(PROBES, len(PROBES)) * reference.encode(PROBES, len(PROBES)),
                                     axis=1)))
        if cosine < MIN_INT8_COSINE:
            _remove(folder)
            raise ModelError(f"{onnx_path.parent.parent.name}: its int8 model differs from fp32 (probe cosine "
                             f"{cosine:.4f} < {MIN_INT8_COSINE}); use precision auto or fp32 for it")
    return runtime
