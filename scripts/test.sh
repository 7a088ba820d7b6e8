#!/usr/bin/env bash
# Install (idempotent) and run the test suite. `scripts/test.sh --slow` also runs the full-ESCO-store tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
if [ "${1:-}" = "--slow" ]; then
  shift
  exec .venv/bin/python -m pytest -m "slow or not slow" "$@"
fi
exec .venv/bin/python -m pytest "$@"
