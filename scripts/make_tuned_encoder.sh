#!/usr/bin/env bash
# Reproduce the shipped fine-tuned encoder: fine-tune all-MiniLM-L6-v2 on the default memory (about 25 minutes on
# 2 CPU cores; a GPU should be far faster, not measured here), then write its compact patch into
# knnbe_qdrant/data/models/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-$(mktemp -d)/all-MiniLM-L6-v2-esco}"
PAIRS="${PAIRS:-40000}"
.venv/bin/knnbe-qdrant finetune "$OUT" --pairs "$PAIRS"
.venv/bin/python -c "import sys; from knnbe_qdrant.encoding.finetune import ship; print(ship(sys.argv[1], sys.argv[2]))" \
    "$OUT" "knnbe-qdrant/all-MiniLM-L6-v2-esco"
