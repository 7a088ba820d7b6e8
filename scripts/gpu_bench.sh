#!/usr/bin/env bash
# Measure the encoder and map-postings on a CUDA machine, in one short run (for the device tool, or any GPU box):
#   scripts/gpu_bench.sh [OUT_DIR]
# Prints, and writes OUT_DIR/gpu_bench.json: the GPU, encode sentences/s on CUDA (sentence-transformers on torch,
# fp32 and fp16) against the CPU ONNX runtime, and end-to-end map-postings sentences/s on a small store. Needs a CUDA
# build of torch (this project pins the CPU wheel; on a GPU machine: pip install torch). Unmeasured until run there.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-/tmp}}"
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
"$PY" - "$OUT" <<'PY'
import json, sys, time, tempfile, subprocess, os
from pathlib import Path
import torch
out = Path(sys.argv[1])
report = {"cuda": torch.cuda.is_available()}
if not report["cuda"]:
    sys.exit("no CUDA device visible to torch: install a CUDA build of torch on a GPU machine")
report["gpu"] = torch.cuda.get_device_name(0)
from knnbe_qdrant import Encoder
from knnbe_qdrant._data import skillskape_sentences
sentences = [t for t, _ in skillskape_sentences("dev")][:1024]
def rate(encoder, batch):
    encoder.encode(sentences[:64], batch_size=batch)
    if torch.cuda.is_available(): torch.cuda.synchronize()
    started = time.perf_counter(); encoder.encode(sentences, batch_size=batch)
    if torch.cuda.is_available(): torch.cuda.synchronize()
    return round(len(sentences) / (time.perf_counter() - started), 1)
gpu = Encoder(runtime="torch", device="cuda")
report["encode_cuda_fp32_sentences_per_s"] = {b: rate(gpu, b) for b in (64, 256)}
gpu._model.model.half()
report["encode_cuda_fp16_sentences_per_s"] = {b: rate(gpu, b) for b in (64, 256)}
report["encode_cpu_onnx_fp32_sentences_per_s"] = rate(Encoder(runtime="onnx", device="cpu"), 16)
# End to end on a small store (ESCO labels + descriptions as memory), postings of 5 sentences each.
work = Path(tempfile.mkdtemp())
store = work / "store"
env = {**os.environ, "KNNBE_STORE": str(store), "KNNBE_RUNTIME": "torch"}
cli = [sys.executable, "-m", "knnbe_qdrant"]
t = time.perf_counter()
subprocess.run(cli + ["build", "--memory-sources", "esco_alt_labels,esco_descriptions", "--no-progress"], env=env, check=True)
report["build_seconds_cuda"] = round(time.perf_counter() - t, 1)
postings = work / "postings.jsonl"
with open(postings, "w") as f:
    for i in range(0, len(sentences), 5):
        f.write(json.dumps({"id": str(i), "text": "\n".join(sentences[i:i + 5])}) + "\n")
t = time.perf_counter()
subprocess.run(cli + ["map-postings", str(postings), str(work / "out.jsonl"), "--no-progress"], env=env, check=True)
report["map_postings_cuda_sentences_per_s"] = round(len(sentences) / (time.perf_counter() - t), 1)
print(json.dumps(report, indent=1))
(out / "gpu_bench.json").write_text(json.dumps(report, indent=1))
PY
