"""The OpenVINO runtime: the same exported ONNX transformer, compiled by OpenVINO, which runs it in bf16 on CPUs with
bf16 matrix units (Intel AMX, AVX-512 BF16). Measured on such a Xeon (2 cores, 2026-11-26): 3.2x the sentences/s of
ONNX Runtime in fp32, embeddings at cosine >= 0.99997 to the fp32 ones (docs/performance.md). The store records the
model, not the precision: vectors of either runtime go in the same collections.

Chosen automatically (`Encoder(runtime="auto")`) when the `openvino` extra is installed and the CPU has bf16 units;
elsewhere ONNX Runtime in fp32 stays the runtime.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from .cache import user_cache
from .onnx import TokenizedRuntime

BF16_FLAGS = ("amx_bf16", "avx512_bf16")
AMX_ALIGN = 16
"""Token lengths a pass is padded towards on CPUs with AMX tiles (16 rows). Measured on a 2-core Xeon with AMX,
2026-12-03 (bf16, 64 texts a pass): 32 tokens 46.5 ms against 57.9 for 31; 48 tokens 71.9 ms against 92.6 for 47
and 78.7 for 33; int8 alike (47.3 ms at 32, 55.0 at 31). ONNX Runtime in fp32 showed no such steps, and CPUs
without AMX were not measured: there passes keep their own length."""


def _cpu_flags() -> set[str]:
    """The CPU's feature flags (read from /proc/cpuinfo; empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[-1].split())
    except OSError:
        return set()
    return set()


def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bf16 matrices natively."""
    return any(flag in _cpu_flags() for flag in BF16_FLAGS)


def available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class OpenVinoRuntime(TokenizedRuntime):
    name = "openvino"

    def __init__(self, model_dir: Path, onnx_path: Path, precision: str = "bf16", threads: int | None = None) -> None:
        import openvino as ov

        super().__init__(model_dir)
        core = ov.Core()
        cache = user_cache("openvino")
        core.set_property({"CACHE_DIR": str(cache)})  # the compiled model is reused by later starts
        hint = {"bf16": "bf16", "fp32": "f32"}[precision]
        config: dict[str, object] = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(str(onnx_path), "CPU", config)
        self.precision = precision
        self.align = AMX_ALIGN if "amx_tile" in _cpu_flags() else 1
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
