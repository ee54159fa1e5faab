"""The discrete-event mode and the step-time profiles."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from harness.sim.des import BACKEND, DesError, run_des, unlimited_blocks
from harness.sim.timing import ProfileError, StepTimeModel, list_profiles, load_profile, report
from harness.throughput import summarize_run
from harness.workload import Trajectory, Turn
from ThunderAgent.config import Config


def trajs(n: int = 6) -> list[Trajectory]:
    return [Trajectory(f"i{i}", 2000, 300 + 50 * i, 5.0 + i, tuple(Turn(200 + 10 * k, 150, 2.0 + k % 3)
                                                                   for k in range(8))) for i in range(n)]


# --- timing ---------------------------------------------------------------------------------------


def test_profiles_load_and_glm_capacity_matches_first_principles() -> None:
    assert {"glm4.6-8xh100", "qwen3-235b-8xh100", "tiny-cpu"} <= set(list_profiles())
    glm = load_profile("glm4.6-8xh100")
    d = glm.derivation
    assert d is not None
    assert d.kv_bytes_per_token_per_gpu == 2 * 92 * 1 * 128 * 1  # 8 KV heads / TP 8, fp8
    assert 0.90e6 < glm.engine.kv_tokens < 0.97e6  # vLLM's accounting with the TP4 log's ~8.6 GiB overhead
    assert glm.engine.block_size == 16 and glm.engine.num_gpu_blocks == glm.engine.kv_tokens // 16
    qwen = load_profile("qwen3-235b-8xh100")
    assert qwen.derivation is not None and qwen.derivation.kv_heads_per_gpu == 1  # 4 heads replicated at TP 8
    assert 1.5e6 < qwen.engine.kv_tokens < 1.62e6  # (spec D3's flat 4 GiB reserve gave ~1.79 M)
    # decode is memory-bound: weight read ~ 45 GB / 3.35 TB/s / 0.8 plus overhead
    assert 0.015 < glm.timing.beta0 < 0.025
    # prefill ~ 1e5 tokens/s at 40% of FP8 peak on 8 GPUs
    assert 8e4 < 1 / glm.timing.beta1 < 1.2e5
    assert "derived KV capacity" in report(glm)


def test_override_and_errors(tmp_path: Path) -> None:
    assert load_profile("tiny-cpu", num_gpu_blocks=100).engine.num_gpu_blocks == 100
    with pytest.raises(ProfileError, match="unknown simulator profile"):
        load_profile("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[engine]\nblock_size = 16\n')
    with pytest.raises(ProfileError, match="timing"):
        load_profile(str(bad))
    with pytest.raises(ProfileError):
        load_profile("tiny-cpu", num_gpu_blocks=1)


def test_decode_run_time_is_the_sum_of_single_steps() -> None:
    m = StepTimeModel(0.02, 1e-5, 1e-5, 1e-8)
    total = sum(m.step_time(0, 48, 48 * 20000 + 48 * j) for j in range(37))
    assert math.isclose(m.decode_run_time(37, 48, 48 * 20000), total, rel_tol=1e-12)


# --- DES ------------------------------------------------------------------------------------------


def test_des_is_deterministic_and_labelled() -> None:
    a = run_des("glm4.6-8xh100", arm="vllm", programs=4, duration_s=300, trajectories=trajs(), seed=3)
    b = run_des("glm4.6-8xh100", arm="vllm", programs=4, duration_s=300, trajectories=trajs(), seed=3)
    assert [(s.program_id, s.end) for s in a.steps] == [(s.program_id, s.end) for s in b.steps]
    assert a.label == "simulated (glm4.6-8xh100)"
    assert a.steps and all(s.status == "ok" for s in a.steps)
    # turn k's prompt is the trajectory's planned prompt; cached tokens grow as the conversation grows
    by_prog: dict[str, list] = {}
    for s in a.steps:
        by_prog.setdefault(s.program_id, []).append(s)
    first = next(iter(by_prog.values()))
    assert [s.step for s in first] == list(range(1, len(first) + 1))
    assert all(later.cached_tokens >= earlier.cached_tokens for earlier, later in zip(first, first[1:]))
    assert first[1].cached_tokens > 2000  # system prompt + instance text + output of call 1


def test_des_sampled_workload_is_seeded() -> None:
    a = run_des("glm4.6-8xh100", programs=3, duration_s=200, workload="openhands", seed=1)
    b = run_des("glm4.6-8xh100", programs=3, duration_s=200, workload="openhands", seed=2)
    assert [s.prompt_tokens for s in a.steps] != [s.prompt_tokens for s in b.steps]


def test_small_cache_thrashes_and_thunderagent_arm_avoids_preemption(tmp_path: Path) -> None:
    common = dict(programs=6, duration_s=900, trajectories=trajs(), seed=0, num_gpu_blocks=700)  # 11,200 tokens
    v = run_des("glm4.6-8xh100", arm="vllm", **common)  # type: ignore[arg-type]
    fixed = Config(router="tr", backends=(BACKEND,), tr_mode="fixed")  # upstream's rule: pause, never thrash
    ta = run_des("glm4.6-8xh100", arm="thunderagent", out_dir=tmp_path / "ta", policy_config=fixed,
                 **common)  # type: ignore[arg-type]
    c = run_des("glm4.6-8xh100", arm="continuum", pin_ttl_s=5.0, **common)  # type: ignore[arg-type]
    sv, sta, sc = v.summary(), ta.summary(), c.summary()
    assert sv["preemptions"] > 0
    assert sta["preemptions"] < sv["preemptions"]
    assert sta["policy"]["pauses"] > 0  # the real CapacityPolicy paused programs
    assert sc["policy"]["pins"] > 0
    assert sta["prefix_hit_rate"] > sv["prefix_hit_rate"]
    # where the prefill went, by why a call waited: every served call is in one class
    holds = sta["holds"]
    assert sum(d["calls"] for d in holds.values()) == sta["steps_total"]
    assert holds["held"]["calls"] > 0 and holds["held"]["wait_s"] > 0  # tr held some calls in mid-trajectory
    assert "held" not in sv["holds"] and sv["holds"]["free"]["wait_s"] == 0  # raw vLLM holds nothing
    assert sum(d["uncached_share"] for d in holds.values()) == pytest.approx(1.0, abs=1e-3)
    assert {"swaps", "unmarks"} <= set(sta["policy"])
    # the run directory is read by the harness's own throughput code
    summ = summarize_run(tmp_path / "ta", window="0m-15m")
    assert summ.simulated and summ.profile == "glm4.6-8xh100" and summ.arm == "thunderagent"
    assert summ.agree is not False
    assert abs(summ.steps_per_min - ta.steps_per_min()) / ta.steps_per_min() < 0.05


def test_bound_arm_lifts_the_kv_limit_of_the_same_profile(tmp_path: Path) -> None:
    """The "bound" arm is the vllm arm with a cache for every program's longest context: no preemption, no
    eviction for lack of room, so at least the throughput of the limited engine (the headroom reference)."""
    common = dict(programs=6, duration_s=900, trajectories=trajs(), seed=0, num_gpu_blocks=700)
    v = run_des("glm4.6-8xh100", arm="vllm", **common)  # type: ignore[arg-type]
    b = run_des("glm4.6-8xh100", arm="bound", out_dir=tmp_path / "b", **common)  # type: ignore[arg-type]
    assert v.summary()["preemptions"] > 0 and b.summary()["preemptions"] == 0
    assert b.steps_per_min() > v.steps_per_min()
    assert b.summary()["prefix_hit_rate"] > v.summary()["prefix_hit_rate"]
    prof = load_profile("glm4.6-8xh100")
    assert unlimited_blocks(prof, 6) == 6 * math.ceil(prof.engine.max_model_len / prof.engine.block_size) + 1
    summ = summarize_run(tmp_path / "b", window="0m-15m")
    assert summ.simulated and summ.arm == "bound"


def _burst_ttfr(order: str) -> tuple[float, float, float, int]:
    """A burst of 12 programs (6 small, 6 large first prompts, alternating) at a 3,200-token cache on tiny-cpu,
    each run once; returns (mean TTFR small, mean TTFR large, makespan, calls served)."""
    trajs = [Trajectory(f"{'large' if i % 2 else 'small'}-{i}", 64, 900 if i % 2 else 120, 0.01 * i,
                        tuple(Turn(16, 40, 0.3) for _ in range(4))) for i in range(12)]
    cfg = Config(router="tr", backends=(BACKEND,), tr_queue_order=order, tr_mode="fixed")
    r = run_des("tiny-cpu", arm="thunderagent", programs=12, duration_s=3600.0, trajectories=trajs,
                policy_config=cfg, num_gpu_blocks=25, once=True)
    ok = [s for s in r.steps if s.status == "ok"]
    first = {s.instance_id: s.end - s.arrival for s in ok if s.step == 1}
    small = [v for k, v in first.items() if k.startswith("small")]
    large = [v for k, v in first.items() if k.startswith("large")]
    return sum(small) / len(small), sum(large) / len(large), max(s.end for s in ok), len(ok)


def test_burst_runs_once_and_arrival_order_keeps_large_programs_waits_close_to_small_ones() -> None:
    """`once`: each slot runs one program, the run ends with the burst (not at duration_s). Under tr's
    arrival order the large programs' first responses come about as soon as the small ones' (the promise:
    within 2x); upstream's smallest-first order makes them wait for every small one."""
    s_new, l_new, span_new, served = _burst_ttfr("arrival")
    s_old, l_old, span_old, served_old = _burst_ttfr("smallest")
    assert served == served_old == 12 * 4
    assert span_new < 60.0 and span_old < 60.0  # ended with the burst, far before duration_s
    assert l_new / s_new <= 2.0
    assert l_old / s_old > 2.0
    assert span_new <= span_old * 1.1  # fairness without giving up the makespan


def test_des_bad_arguments() -> None:
    with pytest.raises(DesError):
        run_des("tiny-cpu", arm="sglang", programs=1, duration_s=10, trajectories=trajs())
    with pytest.raises(DesError):
        run_des("tiny-cpu", programs=0, duration_s=10, trajectories=trajs())
    # a trajectory longer than max_model_len ends with an error record instead of crashing
    r = run_des("tiny-cpu", programs=1, duration_s=60, trajectories=trajs(1), num_gpu_blocks=64)
    assert r.steps and r.steps[0].status == "error" and "max_model_len" in (r.steps[0].error or "")


def test_a_pool_where_no_first_call_fits_is_an_error_not_a_spin():
    """A first call longer than max_model_len fails at once and the slot starts the next program at the same
    virtual time; with nothing in the pool that fits, the run ends with one readable error instead of spinning."""
    from harness.sim.des import DesError, run_des
    from harness.sim.timing import load_profile
    from harness.workload import Trajectory, Turn

    prof = load_profile("tiny-cpu")
    huge = Trajectory("too-long", system_tokens=prof.engine.max_model_len, first_user_tokens=10, prep_time_s=0.0,
                      turns=(Turn(16, 10, 0.1),))
    with pytest.raises(DesError, match="could not send their first call"):
        run_des(prof, arm="vllm", programs=2, duration_s=60.0, trajectories=[huge], resample=True)
    ok = Trajectory("fits", system_tokens=100, first_user_tokens=10, prep_time_s=0.0, turns=(Turn(16, 10, 0.1),))
    res = run_des(prof, arm="vllm", programs=2, duration_s=5.0, trajectories=[huge, ok], resample=True)
    assert any(r.status == "ok" for r in res.steps) and any(r.status == "error" for r in res.steps)


def test_the_manifest_is_the_callers_record_plus_the_results_written_once(tmp_path: Path) -> None:
    from harness.records import RunManifest
    from harness.throughput import RunData, summarize

    out = tmp_path / "run"
    res = run_des("glm4.6-8xh100", arm="vllm", programs=4, duration_s=600, trajectories=trajs(), seed=1, out_dir=out,
                  run_id="r1", record={"recipe": "rx", "dataset": "lite-synthetic", "workload": "trace:somewhere",
                                       "extra": {"window": "1m-9m", "design": {"kv": 0.5}}})
    m = RunManifest.read(out / "manifest.json")
    assert (m.run_id, m.arm, m.recipe, m.dataset, m.workload) == ("r1", "vllm", "rx", "lite-synthetic",
                                                                   "trace:somewhere")
    assert m.extra["window"] == "1m-9m" and m.extra["design"] == {"kv": 0.5}
    assert m.extra["summary"] == res.summary() and m.extra["des_cpu_s"] == round(res.cpu_s, 3)
    assert m == res.manifest and res.run_dir == out
    # the throughput code counts the in-memory run exactly as the run directory read back
    mem, disk = summarize(res.run_data(), "1m-9m").as_dict(), summarize(RunData.load(out), "1m-9m").as_dict()
    mem.pop("run_dir"), disk.pop("run_dir")
    assert mem == disk and mem["steps_in_window"] > 0
    assert res.steps_per_min((60.0, 540.0)) == disk["record_steps_per_min"]
    with pytest.raises(DesError, match="sets itself: arm"):
        run_des("tiny-cpu", programs=1, duration_s=10, trajectories=trajs(1), record={"arm": "other"})


def test_a_simulation_runs_from_its_manifest_as_run_des_does() -> None:
    from harness.sim.des import Simulation, des_manifest, trajectory_source

    prof = load_profile("glm4.6-8xh100")
    m = des_manifest(prof, arm="vllm", programs=2, duration_s=120.0, seed=0, workload="traces", run_id="sim-x")
    res = Simulation(m, prof, trajectory_source(None, trajs(2), 0, 2)).run()
    via = run_des(prof, arm="vllm", programs=2, duration_s=120.0, trajectories=trajs(2), run_id="sim-x")
    assert res.steps == via.steps and res.metrics == via.metrics
    assert sum(s.status == "ok" for s in res.steps) > 3
    assert res.manifest is m and m.extra["summary"]["steps_total"] == sum(s.status == "ok" for s in res.steps)
