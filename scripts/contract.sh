#!/usr/bin/env bash
# The OpenAPI contract test with many more generated requests than the default suite's (tests/test_contract.py):
# Schemathesis against the real service with reader, curator and admin keys. EXAMPLES=40 is the issue's setting.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
KNNBE_CONTRACT_EXAMPLES="${EXAMPLES:-40}" exec .venv/bin/python -m pytest -q tests/test_contract.py "$@"
