#!/usr/bin/env bash
# Everything from a fresh clone: install into .venv, build the embedded store, map a sample job posting.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
# `build` resumes and skips what is already stored, so re-running the quick start costs seconds, not minutes.
.venv/bin/knnbe-qdrant build
.venv/bin/knnbe-qdrant map --top 5 --file examples/job_posting.txt
