"""Bounded soak: accelerated simulated serving at 96 programs through the real proxy (router tr).

Three processes: the engine simulator (`python -m harness.sim.server`, profile glm4.6-8xh100 by default, on an
accelerated clock), the proxy (`python -m ThunderAgent --router tr --profile`, its time knobs divided by the
same time scale), and this driver, which keeps `--programs` agent programs in flight: each plays one trajectory
of the workload model (harness/workload.py: prep time, turns of output/observation tokens and tool time;
tool times slept / time scale), streaming every call, releasing the program at the end and starting the next.

It prints (labelled SIMULATED with the profile):
* proxy RSS over the run (psutil): first sample after warm-up vs the last and the max -> flat within 10%?
* stuck programs: after the drivers stop, programs with a request in flight or held, and REASONING ones;
* queue wait (the proxy's step records: pause_s = proxy arrival -> forwarded, wall s × time scale = simulated
  s, the unit of --aging-bound here) checked against what tr actually promises (ThunderAgent/policy/capacity.py):
  - --resume-timeout is the hard bound: a request held that long is resumed by force (next tick), so
    max wait <= resume timeout + one tick; the proxy's forced-resume counter says whether it ever fired;
  - --aging-bound is NOT a wait bound: it is the age after which a held request goes first and reserves room
    (idle programs are swapped out at once; running ones are marked and leave when their current call ends).
    So a request that aged is placed by the first tick after the calls in flight when it aged have ended:
    wait <= max(aging bound, end of the longest call in flight at that moment) + one tick, checked per request;
* steps completed, client errors, programs finished.
No timed assertions: the figures are printed; the verdict lines say whether each property held.

    .venv/bin/python benchmarks/soak.py             # 30 simulated minutes (time scale 4: 7.5 wall minutes)
    .venv/bin/python benchmarks/soak.py --quick     # 2 simulated minutes (20 s wall): too short to judge a leak
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

import _procs  # noqa: E402  (benchmarks/_procs.py, beside this script)
from _procs import free_port  # noqa: E402
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.workload import Trajectory, load_workload_params, sample_trajectories  # noqa: E402


def start(cmd: list[str], url: str, timeout: float = 90.0):  # noqa: ANN201
    return _procs.start(cmd, url, timeout, label="soak: ")


def words(key: int, n: int) -> str:
    """n simulator tokens of text (one word with its leading space = one token), deterministic per key."""
    return "".join(f" w{(key * 7919 + i * 104729) % 50021}" for i in range(max(1, n)))


class Driver:
    """Keeps `programs` trajectories in flight until the deadline (wall seconds)."""

    def __init__(self, proxy: str, model: str, scale: float, deadline: float, seed: int) -> None:
        self.proxy, self.model, self.scale, self.deadline = proxy, model, scale, deadline
        self.params = load_workload_params("openhands")
        self.rng = random.Random(seed)
        self.seed = seed
        self.steps = 0
        self.errors: dict[str, int] = {}
        self.finished = 0
        self.samples: dict[str, str] = {}  # one example message per error kind
        self.system = words(1, 0)  # set per trajectory (identical across programs: the shared prefix)

    def trajectory(self, n: int) -> Trajectory:
        return sample_trajectories(self.params, [f"soak-{n}"], self.seed)[0]

    async def program(self, c: httpx.AsyncClient, slot: int) -> None:
        n = slot
        while time.monotonic() < self.deadline:
            t = self.trajectory(n)
            pid = f"soak-{n}"
            n += 1000
            await asyncio.sleep(min(t.prep_time_s / self.scale, max(0.0, self.deadline - time.monotonic())))
            messages = [{"role": "system", "content": words(1, t.system_tokens)},
                        {"role": "user", "content": words(hash(pid) & 0xFFFF, t.first_user_tokens)}]
            try:
                for k, turn in enumerate(t.turns):
                    if time.monotonic() >= self.deadline:
                        break
                    body = {"model": self.model, "messages": messages, "max_tokens": max(1, turn.output_tokens),
                            "stream": True, "program_id": pid}
                    text = await self.call(c, body)
                    if text is None:
                        break
                    self.steps += 1
                    messages = [*messages, {"role": "assistant", "content": text},
                                {"role": "user", "content": words(k + (hash(pid) & 0xFFF) * 131, turn.observation_tokens)}]
                    await asyncio.sleep(min(turn.tool_time_s / self.scale, max(0.0, self.deadline - time.monotonic())))
                else:
                    self.finished += 1
            finally:
                try:
                    await c.post(self.proxy + "/programs/release", json={"program_id": pid}, timeout=30)
                except httpx.HTTPError as e:
                    self.errors[f"release {type(e).__name__}"] = self.errors.get(f"release {type(e).__name__}", 0) + 1

    async def call(self, c: httpx.AsyncClient, body: dict) -> str | None:
        try:
            async with c.stream("POST", self.proxy + "/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    await r.aread()
                    self.error(f"http {r.status_code}", r.text)
                    return None
                parts: list[str] = []
                async for line in r.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    obj = json.loads(line[6:])
                    if "error" in obj:
                        self.error("stream error", line)
                        return None
                    for ch in obj.get("choices") or []:
                        parts.append((ch.get("delta") or {}).get("content") or "")
                return "".join(parts)
        except httpx.HTTPError as e:
            self.error(type(e).__name__, str(e))
            return None

    def error(self, kind: str, text: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self.samples.setdefault(kind, " ".join(text.split())[:300])


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else 0.0


@dataclass
class Aging:
    count: int  # calls whose wait passed the aging bound
    excess_p50: float  # their wait beyond the bound (simulated s)
    excess_p99: float
    excess_max: float
    blocked_p50: float  # how long after the aging moment the calls then in flight ended (simulated s)
    blocked_p99: float
    late: int  # placed later than max(aging moment, end of those calls) + one tick (+0.5 s slack)


def check_aging(recs: list[dict], scale: float, aging: float, tick: float) -> Aging:
    """tr's aging promise per request (one backend): once a held request has waited `aging`, it is first in line
    and the policy makes room (swaps idle programs out, marks running ones), so it starts by the first tick
    after the calls in flight at that moment ended. Times in the records are wall s; results in simulated s."""
    calls = [(r["start"], r["end"]) for r in recs if r["status"] == "ok" and r.get("start") is not None]
    starts = np.array([a for a, _ in calls])
    ends = np.array([b for _, b in calls])
    excess: list[float] = []
    blocked: list[float] = []
    late = 0
    for r in recs:
        wait = r["pause_s"] * scale
        if wait <= aging:
            continue
        t_aged = r["arrival"] + aging / scale
        running = (starts <= t_aged) & (ends > t_aged)
        last_end = float(ends[running].max()) if running.any() else t_aged
        excess.append(wait - aging)
        blocked.append((last_end - t_aged) * scale)
        if wait > (last_end - r["arrival"]) * scale + tick + 0.5 and wait > aging + tick + 0.5:
            late += 1
    return Aging(len(excess), pct(excess, 50), pct(excess, 99), max(excess, default=0.0),
                 pct(blocked, 50), pct(blocked, 99), late)


def forced_resumes(metrics_text: str) -> int:
    """The proxy's thunderagent_forced_resumes counter (Prometheus text)."""
    m = re.search(r"^thunderagent_forced_resumes(?:_total)? ([0-9.e+]+)$", metrics_text, re.M)
    return int(float(m.group(1))) if m else -1


async def run(args: argparse.Namespace) -> int:
    scale = args.time_scale
    sim_port, proxy_port = free_port(), free_port()
    sim_url, proxy_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{proxy_port}"
    prof_dir = Path(tempfile.mkdtemp(prefix="soak-"))
    aging = args.aging_bound
    sim = start([sys.executable, "-m", "harness.sim.server", "--profile", args.profile, "--port", str(sim_port),
                 "--time-scale", str(scale)], sim_url)
    proxy = start([sys.executable, "-m", "ThunderAgent", "--backends", sim_url, "--port", str(proxy_port), "--router", "tr",
                   "--log-level", "warning", "--profile", "--profile-dir", str(prof_dir),
                   "--scheduler-interval", f"{5.0 / scale:g}", "--aging-bound", f"{aging / scale:g}",
                   "--resume-timeout", f"{args.resume_timeout / scale:g}", "--idle-ttl", f"{1800.0 / scale:g}"], proxy_url)
    model = httpx.get(sim_url + "/v1/models").json()["data"][0]["id"]
    ps = psutil.Process(proxy.pid)
    wall = args.sim_minutes * 60.0 / scale
    t0 = time.monotonic()
    driver = Driver(proxy_url, model, scale, t0 + wall, args.seed)
    rss: list[tuple[float, float]] = []

    async def sample_rss() -> None:
        while time.monotonic() < t0 + wall:
            rss.append((time.monotonic() - t0, ps.memory_info().rss / 2**20))
            await asyncio.sleep(max(0.5, wall / 60))

    print(f"soak: SIMULATED ({args.profile}, time scale {scale:g}): {args.programs} programs through ThunderAgent tr for "
          f"{args.sim_minutes:g} simulated minutes ({wall:.0f} s wall)", flush=True)
    try:
        limits = httpx.Limits(max_connections=args.programs + 16, max_keepalive_connections=args.programs + 16)
        async with httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=30.0), limits=limits) as c:
            await asyncio.gather(sample_rss(), *(driver.program(c, i) for i in range(args.programs)))
            rss.append((time.monotonic() - t0, ps.memory_info().rss / 2**20))
            # after the drivers stopped and released: nothing may be left in flight, held or REASONING
            deadline = time.monotonic() + 30
            while True:
                progs = (await c.get(proxy_url + "/programs")).json()
                stuck = {p: e for p, e in progs.items() if e["inflight"] or e["waiting"] or e["status"] == "reasoning"}
                if not stuck or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            health = (await c.get(proxy_url + "/health")).json()
            metrics = (await c.get(proxy_url + "/metrics")).text
    finally:
        proxy.terminate()
        sim.terminate()
        proxy.wait(30)
        sim.wait(30)
    recs = [json.loads(line) for line in (prof_dir / "step_records.jsonl").read_text().splitlines() if line.strip()]
    waits = [r["pause_s"] * scale for r in recs]
    tick = 5.0  # simulated s (--scheduler-interval 5/scale)
    aged = check_aging(recs, scale, aging, tick)
    forced = forced_resumes(metrics)
    ok = sum(1 for r in recs if r["status"] == "ok")

    # warm-up = the first half: the first generation of programs is still growing its contexts (and with it the
    # request bodies in flight); a leak shows as growth over the second half
    warm = [m for t, m in rss if t >= 0.5 * wall] or [m for _, m in rss]
    first, last, peak = warm[0], rss[-1][1], max(m for _, m in rss)
    growth = (last - first) / first * 100
    marks = " -> ".join(f"{min(rss, key=lambda x: abs(x[0] - q * wall))[1]:.0f}" for q in (0.1, 0.25, 0.5, 0.75, 1.0))
    short = " (run too short to judge: contexts are still growing)" if args.sim_minutes < 10 else ""
    print(f"  steps: {driver.steps} completed by clients, {ok} ok in the proxy's records "
          f"({ok / args.sim_minutes:.0f} steps/simulated min); programs finished: {driver.finished}; "
          f"client errors: {driver.errors or 'none'}")
    for kind, text in driver.samples.items():
        print(f"    e.g. {kind}: {text}")
    print(f"  proxy RSS at 10/25/50/75/100% of the run: {marks} MiB")
    print(f"  proxy RSS: {first:.1f} MiB at half time -> {last:.1f} MiB at the end (peak {peak:.1f}); "
          f"growth {growth:+.1f}% -> {'FLAT (within 10%)' if abs(growth) <= 10 else 'NOT FLAT'}{short}")
    print(f"  stuck programs after the run: {len(stuck)} (in flight/held/REASONING); reasoning_count={health['reasoning_count']}, "
          f"programs left={health['programs_count']} -> {'NONE STUCK' if not stuck and health['reasoning_count'] == 0 else 'STUCK'}")
    worst = max(waits, default=0.0)
    print(f"  queue wait (simulated s): p50 {pct(waits, 50):.2f}, p99 {pct(waits, 99):.2f}, max {worst:.2f} "
          f"over {len(waits)} calls; tick {tick:g} s")
    print(f"    hard bound (--resume-timeout {args.resume_timeout:g} s + tick): max {worst:.2f} s, forced resumes {forced} -> "
          f"{'WITHIN' if worst <= args.resume_timeout + tick else 'BEYOND'}")
    print(f"    aging ({aging:g} s = when a held request goes first and reserves room, not a wait bound): "
          f"{aged.count} calls aged, waited {aged.excess_p50:.2f} (p50) / {aged.excess_p99:.2f} (p99) / "
          f"{aged.excess_max:.2f} (max) s beyond it; calls in flight then ended {aged.blocked_p50:.2f} / "
          f"{aged.blocked_p99:.2f} s after it (p50/p99); placed later than max(aging, those ends) + tick: "
          f"{aged.late} -> {'HELD' if aged.late == 0 else 'VIOLATED'}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 simulated minutes (CI)")
    ap.add_argument("--sim-minutes", type=float, default=30.0)
    ap.add_argument("--time-scale", type=float, default=4.0,
                    help="simulated seconds per wall second (higher makes the Python driver/simulator the bottleneck)")
    ap.add_argument("--programs", type=int, default=96)
    ap.add_argument("--profile", default="glm4.6-8xh100")
    ap.add_argument("--aging-bound", type=float, default=120.0, help="tr's aging bound, simulated seconds")
    ap.add_argument("--resume-timeout", type=float, default=1800.0, help="tr's forced-resume timeout, simulated seconds")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.quick:
        args.sim_minutes = min(args.sim_minutes, 2.0)
        args.time_scale = 6.0
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
