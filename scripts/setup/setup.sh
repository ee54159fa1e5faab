#!/usr/bin/env bash
# Set up thunderbench on a fresh machine: uv, a Python >= 3.12 virtualenv in .venv, the project and its
# locked dependencies. Idempotent; safe to re-run. Options (environment):
#   THUNDERBENCH_EXTRAS="all"                 extras to install (default: all = bench docker openhands miniswe
#                                             eval, so CI tests the harness and the real agents; "bench" for the
#                                             harness alone, "" for the proxy alone)
#   THUNDERBENCH_PYTHON=/path/to/python3.12   interpreter to use (default: first 3.12+ found)
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf '[setup] %s\n' "$*" >&2; }

# 1. uv
if ! command -v uv >/dev/null 2>&1; then
  if [ -x "$HOME/.local/bin/uv" ]; then
    export PATH="$HOME/.local/bin:$PATH"
  else
    log "installing uv with pip"
    python3 -m pip install --quiet --user uv 2>/dev/null || python3 -m pip install --quiet uv
    export PATH="$HOME/.local/bin:$PATH"
  fi
fi
command -v uv >/dev/null 2>&1 || { log "uv is not on PATH after installing it; add ~/.local/bin to PATH"; exit 1; }

# 2. a Python >= 3.12 (PATH first, then pyenv's versions; uv's managed download as a last resort online)
find_python() {
  if [ -n "${THUNDERBENCH_PYTHON:-}" ]; then echo "$THUNDERBENCH_PYTHON"; return; fi
  local c
  for c in python3.13 python3.12 python3; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      command -v "$c"; return
    fi
  done
  local root
  root="$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"
  for c in "$root"/versions/3.12*/bin/python3.12 "$root"/versions/3.13*/bin/python3.13; do
    if [ -x "$c" ]; then echo "$c"; return; fi
  done
  echo "3.12"   # let uv find or download one
}
PY="$(find_python)"
log "python: $PY"

# 3. venv + project (locked)
extras=()
for e in ${THUNDERBENCH_EXTRAS-all}; do extras+=(--extra "$e"); done
export UV_PYTHON_DOWNLOADS="${UV_PYTHON_DOWNLOADS:-automatic}"
uv sync --frozen --python "$PY" "${extras[@]}" --quiet
log "ready: .venv ($(.venv/bin/python --version))"
