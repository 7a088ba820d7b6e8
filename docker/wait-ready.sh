#!/usr/bin/env bash
# Wait until the Qdrant server answers /readyz (default http://localhost:6333, or $QDRANT_URL), at most $1 s (60).
set -euo pipefail
url=${QDRANT_URL:-http://localhost:6333}
deadline=$(( $(date +%s) + ${1:-60} ))
until python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/readyz', timeout=2)" "$url" 2>/dev/null; do
  if [ "$(date +%s)" -ge "$deadline" ]; then echo "Qdrant at $url is not ready" >&2; exit 1; fi
  sleep 1
done
echo "Qdrant at $url is ready"
