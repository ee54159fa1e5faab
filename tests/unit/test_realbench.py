"""benchmarks/realbench.py without an engine: workload shape, arm parsing, flags, the simulated twin, CLI errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.realbench import TinyAgentWorkload, main, parse_arms, simulate
from harness.launch.tiny import proxy_flags, proxy_launch
from ThunderAgent.cli import parse_config


def test_default_workload_fits_the_tiny_model_with_room_for_drift() -> None:
    wl = TinyAgentWorkload()
    assert wl.max_context() <= 2048 - 400  # the agent re-sends generated text, which re-tokenizes longer
    trajs = wl.trajectories("x")
    assert len(trajs) == wl.programs and len({t.instance_id for t in trajs}) == wl.programs
    last = trajs[0].prompt_tokens(wl.turns - 1)
    assert last + wl.output_tokens == wl.max_context()
    assert wl.working_set_tokens() / (128 * 24) > 3  # overflows the e2e test's 24-block cache


def test_arms_builtin_and_variants() -> None:
    arms = parse_arms("vllm, thunderagent", ["ta-w0=--acting-token-weight 0 --tr-mode fixed"])
    assert arms == {"vllm": None, "thunderagent": ("--router", "tr"),
                    "ta-w0": ("--acting-token-weight", "0", "--tr-mode", "fixed")}
    for bad in (("nope", []), ("vllm", ["noequals"]), ("vllm", ["vllm=--router tr"]), ("", [])):
        with pytest.raises(ValueError):
            parse_arms(*bad)


def test_proxy_flags_parse_with_thunderagents_own_cli_and_later_flags_win() -> None:
    cfg = parse_config(["--backends", "http://127.0.0.1:1", *proxy_flags(("--router", "default"))])
    assert cfg.router == "default" and cfg.scheduler_interval == 1.0 and cfg.metrics
    launch = proxy_launch("http://127.0.0.1:9", port=1234, extra=("--acting-token-weight", "0"))
    assert launch.argv[1:3] == ["-m", "ThunderAgent"] and launch.base_url == "http://127.0.0.1:1234"
    assert launch.argv[-2:] == ["--acting-token-weight", "0"]


# tiny-cpu as calibrated when this test was written (step model only): recalibrations must not move the test
FIXED_TINY = """name = "tiny-fixed"
[engine]
block_size = 128
num_gpu_blocks = 24
max_num_batched_tokens = 2048
max_num_seqs = 128
max_model_len = 2048
[timing]
beta0 = 0.0014081
beta1 = 3.643e-05
beta2 = 2.01e-05
beta3 = 1.032e-07
"""


def test_simulated_twin_is_labelled_and_shows_the_pause_effect(tmp_path: Path) -> None:
    prof = tmp_path / "tiny-fixed.toml"
    prof.write_text(FIXED_TINY)
    res = simulate(TinyAgentWorkload(), ["vllm", "thunderagent"], window=(10.0, 60.0), profile=str(prof))
    raw, ta = res
    assert f"simulated {prof}" in raw.arm and f"simulated {prof}" in ta.arm
    assert raw.steps > 0 and ta.steps > 0
    assert ta.proxy_metrics is not None and ta.proxy_metrics["counters"]["pauses"] > 0
    assert ta.preemptions < raw.preemptions and ta.prefix_hit_rate > raw.prefix_hit_rate
    slow = simulate(TinyAgentWorkload(), ["vllm"], window=(10.0, 60.0), step_scale=3.0, profile=str(prof))[0]
    assert "x3.00" in slow.arm and slow.steps_per_min < raw.steps_per_min


@pytest.mark.parametrize("argv, message", [
    (["--sim-only"], "give --duration"),
    (["--sim-only", "--duration", "10", "--warmup", "20"], "--warmup < --duration"),
    (["--sim-only", "--duration", "30", "--arms", "nope"], "unknown arm"),
    (["--sim-only", "--duration", "30", "--turns", "9"], "the tiny model serves 2048"),
    ([], "--engine-url"),
])
def test_cli_errors_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err


def test_regimes_fit_the_model_and_have_the_working_sets_they_claim() -> None:
    from benchmarks.realbench import REGIMES

    ratios = {}
    for name, (wl, blocks, description) in REGIMES.items():
        assert wl.max_context() <= 2048 - 400, name
        ratios[name] = wl.working_set_tokens() / (128 * blocks)
    assert ratios["fits"] < 1 and 1.8 < ratios["2x-long-tools"] < 2.4 and 2.6 < ratios["3x-short-heavy"] < 3.3
    assert 2.3 < ratios["2.5x-short-out"] < 2.7 and REGIMES["2.5x-short-out"][0].output_tokens == 16
    peak = REGIMES["fits"][0]
    assert peak.programs * peak.max_context() < 128 * REGIMES["fits"][1]  # even the last turns all fit


def test_regime_flags_override_the_preset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--sim-only", "--regime", "fits", "--programs", "2", "--duration", "30", "--warmup", "5",
                 "--arms", "vllm"]) == 0
    out = capsys.readouterr()
    assert "programs=2" in out.err and "48 KV blocks" in out.err and "simulated tiny-cpu" in out.out


def test_realized_trajectories_replay_what_the_engine_saw(tmp_path) -> None:
    from benchmarks.realbench import realized_trajectories
    from ThunderAgent.records import StepRecord

    def rec(pid: str, step: int, prompt: int, t: float) -> str:
        return StepRecord(pid, step, arrival=t, start=t, end=t + 0.5, prompt_tokens=prompt, completion_tokens=160,
                          cached_tokens=128 if step > 1 else 0).to_json()

    lines = [rec("a", 1, 667, 0.0), rec("a", 2, 840, 1.5), rec("b", 1, 670, 0.0)]  # b was cut by the deadline
    (tmp_path / "steps.jsonl").write_text("\n".join(lines) + "\n")
    full = realized_trajectories(tmp_path, turns=2)
    assert len(full) == 1
    t = full[0]
    assert t.system_tokens + t.first_user_tokens == 667  # the real first prompt, not the plan's 384
    assert [u.output_tokens for u in t.turns] == [160, 160] and t.turns[0].observation_tokens == 840 - 667 - 160
    assert t.turns[0].tool_time_s == pytest.approx(1.0)
    assert len(realized_trajectories(tmp_path, turns=7)) == 2  # none complete: replay what there is
