#!/usr/bin/env bash
# The README's test command: sets up (idempotent) and runs the whole test suite, then the benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup/setup.sh
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "[test] pytest collected no tests: failing" >&2; exit 1; fi
exit "$rc"
