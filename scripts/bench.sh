#!/usr/bin/env bash
# Run every benchmark under benchmarks/ (each prints its figures; none asserts absolute times).
# Pass --quick for the CI-sized variant.
set -euo pipefail
cd "$(dirname "$0")/.."
for b in benchmarks/[!_]*.py; do
  [ -e "$b" ] || continue
  echo "=== $b $*"
  .venv/bin/python "$b" "$@"
done
