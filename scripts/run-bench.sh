#!/usr/bin/env bash
# Runs every benchmark with the installed package; results land in bench/results/*.json.
set -euo pipefail
VENV=${FSEV_VENV:-/opt/fsev/venv}
cd "$(dirname "$0")/.."
for b in bench/bench_*.py; do
  echo "== $b"
  "$VENV/bin/python" "$b"
done
