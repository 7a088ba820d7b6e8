"""The OpenVINO runtime: the same exported ONNX transformer, compiled by OpenVINO, which runs it in bf16 on CPUs with
bf16 matrix units (Intel AMX, AVX-512 BF16). Measured on such a Xeon (2 cores, 2026-11-26): 3.2x the sentences/s of
ONNX Runtime in fp32, embeddings at cosine >= 0.99997 to the fp32 ones (docs/performance.md). The store records the
model, not the precision: vectors of either runtime go in the same collections.

Chosen automatically (`Encoder(runtime="auto")`) when the `openvino` extra is installed and the CPU has bf16 units;
elsewhere ONNX Runtime in fp32 stays the runtime.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from .onnx import TokenizedRuntime

BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (read from /proc/cpuinfo; False where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return any(flag in line.split() for flag in BF16_FLAGS)
    except OSError:
        return False
    return False


def available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class OpenVinoRuntime(TokenizedRuntime):
    name = "openvino"

    def __init__(self, model_dir: Path, onnx_path: Path, precision: str = "bf16") -> None:
        import openvino as ov

        super().__init__(model_dir)
        core = ov.Core()
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "knnbe-qdrant" / "openvino"
        cache.mkdir(parents=True, exist_ok=True)
        core.set_property({"CACHE_DIR": str(cache)})  # the compiled model is reused by later starts
        hint = {"bf16": "bf16", "fp32": "f32"}[precision]
        self.compiled = core.compile_model(str(onnx_path), "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                                  "PERFORMANCE_HINT": "LATENCY"})
        self.precision = precision
        self._local = threading.local()
        self.inputs = [port.get_any_name() for port in self.compiled.inputs]
        self.dimension = int(self.compiled.outputs[0].get_partial_shape()[-1].get_length())

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        # An infer request runs one inference at a time ("Infer Request is busy" otherwise): one per thread, so
        # threads sharing an Encoder (a service, curators and mappers in parallel) each have their own.
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return np.array(request.infer(feed)[self.compiled.outputs[0]])
