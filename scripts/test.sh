#!/usr/bin/env bash
# Install (idempotent) and run the test suite. `scripts/test.sh --slow` also runs the tests marked slow: the full
# ESCO store, and the longest kill, int8 and fine-tuning cases.
# The default suite runs in TEST_WORKERS processes (default 2; 0 = one process), a test file to each: on 2 cores
# 11 to 14 minutes (11:56, 13:03, 13:31, 13:02 and 14:04 on fresh clones, 2026-12-07/08; 11:04, 11:22 and 11:45 with
# the trust suite split by subject, 2026-12-08, when 3 workers gave 10:57 and 11:11, no better), since many tests
# wait on child processes. The slow suite runs in one process: its tests share the one default embedded store,
# which Qdrant Edge lets one process open.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
if [ "${1:-}" = "--slow" ]; then
  shift
  exec .venv/bin/python -m pytest -m "slow or not slow" "$@"
fi
exec .venv/bin/python -m pytest -n "${TEST_WORKERS:-2}" --dist loadfile "$@"
