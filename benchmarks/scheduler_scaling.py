"""Scheduler scaling: cost of a tick and of a request (arrival + end) of the "tr" policy at 100, 1,000 and
10,000 programs, side by side with a naive implementation of the same rule that rescans every program for
each decision (upstream's way: per-backend sums recomputed on demand, the queue sorted on every pass).

Workload (same seed for both): 4 backends whose KV capacity is ~85% of what the programs would need, so a
steady fraction of programs is paused. Each round is 20 events — a program sends a request (it proceeds or
waits), a request ends with exact usage a little larger than the estimate, now and then a program is
released and a new one starts — followed by one tick. The number of changes per tick is therefore the same
at every scale: a scheduler whose tick is O(changes + log n) costs about the same at 10,000 programs as at
100 (target: ≤ 2×), a scanning one grows linearly.

Before timing, both implementations are driven through the same 100-program event stream and their
decisions (every program's state, backend and mark after every event) are compared: the naive one is the
same rule, not a strawman. Prints a table; asserts nothing about absolute times (the machine is shared).
One file of ~520 lines, on purpose: the naive twin, the workload and the table belong to this benchmark only.

    .venv/bin/python benchmarks/scheduler_scaling.py            # full
    .venv/bin/python benchmarks/scheduler_scaling.py --quick    # CI-sized, well under a minute
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ThunderAgent.policy.base import Proceed, Reject, Resume, State  # noqa: E402
from ThunderAgent.policy.capacity import CapacityPolicy  # noqa: E402
from ThunderAgent.policy.settings import PolicySettings  # noqa: E402

# CPU time of this thread, not wall time: on a shared machine, time spent descheduled is not the policy's
clock = time.thread_time

BACKENDS = tuple(f"http://b{i}" for i in range(4))
EVENTS_PER_TICK = 20
MEAN_TOKENS = 11_000


def config() -> PolicySettings:
    # the naive twin implements the core rule only: no aging, no forced resume, no decay, no credit
    return PolicySettings(backends=BACKENDS, router="tr", aging_bound=1e18, resume_timeout=1e18, low_watermark=0.9)


# ====================================================================================== the naive twin
class NaivePolicy:
    """The same decisions as CapacityPolicy (watermarks, counted marks, minimal pause sets, resume of started
    programs smallest first then of newcomers in arrival order, origin then best-fit placement, unmarking),
    computed by scanning all programs every time — as upstream does (its sums are recomputed on demand and
    its queue sorted on every pass)."""

    def __init__(self, cfg: PolicySettings) -> None:
        self.w, self.buf = cfg.acting_token_weight, cfg.buffer_per_program
        self.hi, self.lo = cfg.high_watermark, cfg.low_watermark
        self.cap: dict[str, int | None] = {u: None for u in cfg.backends}
        self.healthy = {u: True for u in cfg.backends}
        self.progs: dict[str, dict] = {}
        self.seq = 0

    @classmethod
    def copy_of(cls, pol: CapacityPolicy) -> NaivePolicy:
        """The same scheduling state as `pol` (so a 10,000-program setup is not paid in O(n²))."""
        twin = cls(pol.settings)
        for url, b in pol.book.backends.items():
            twin.cap[url], twin.healthy[url] = b.capacity, b.healthy
        for pid, p in pol.book.programs.items():
            twin.progs[pid] = dict(
                state="A" if p.state is State.ACTIVE else "P", backend=p.backend, origin=p.origin,
                tokens=p.tokens, req=p.requests, marked=p.marked, seq=p.seq, started=p.started,
                since=p.wait_since,
            )  # fmt: skip
        twin.seq = pol.book.seq
        return twin

    # --- scans
    def used(self, b: str) -> float:
        u = 0.0
        for p in self.progs.values():
            if p["state"] == "A" and p["backend"] == b:
                u += (p["tokens"] if p["req"] > 0 else self.w * p["tokens"]) + self.buf
        return u

    def projected(self, b: str) -> float:
        m = sum(p["tokens"] + self.buf for p in self.progs.values() if p["backend"] == b and p["marked"])
        return self.used(b) - m

    def on(self, b: str, kind: str) -> list[dict]:
        if kind == "acting":
            sel = [
                p for p in self.progs.values() if p["state"] == "A" and p["backend"] == b and p["req"] == 0
            ]
        else:
            sel = [
                p
                for p in self.progs.values()
                if p["state"] == "A" and p["backend"] == b and p["req"] > 0 and not p["marked"]
            ]
        return sorted(sel, key=lambda p: (p["tokens"], p["seq"]))

    def charge(self, p: dict, reasoning: bool) -> float:
        return (p["tokens"] if reasoning else self.w * p["tokens"]) + self.buf

    def select(self, cands: list[dict], need: float, reasoning: bool) -> list[dict]:
        chosen, freed = [], 0.0
        for p in cands:
            if freed >= need:
                break
            c = self.charge(p, reasoning)
            chosen.append((p, c))
            freed += c
        keep = [chosen[-1]] if chosen else []
        for p, c in reversed(chosen[:-1]):
            if freed - c >= need:
                freed -= c
            else:
                keep.append((p, c))
        return sorted((p for p, _ in keep), key=lambda p: (p["tokens"], p["seq"]))

    def pause(self, p: dict) -> None:
        p.update(state="P", origin=p["backend"], backend=None, marked=False)

    def pause_pass(self, b: str) -> None:
        cap = self.cap[b]
        if cap is None or self.used(b) <= self.hi * cap:
            return
        need = self.projected(b) - self.lo * cap
        if need > 0:
            for p in self.select(self.on(b, "acting"), need, False):
                self.pause(p)
            need = self.projected(b) - self.lo * cap
        if need > 0:
            for p in self.select(self.on(b, "reasoning"), need, True):
                p["marked"] = True
        over = self.used(b) - self.hi * cap
        acting = self.on(b, "acting")
        if over > 0 and acting and sum(self.charge(p, False) for p in acting) >= over:
            for p in self.select(acting, over, False):
                self.pause(p)

    def fits(self, b: str, c: float) -> bool:
        cap = self.cap[b]
        return self.healthy[b] and cap is not None and c <= self.lo * cap - self.used(b)

    def place(self, p: dict, c: float) -> str | None:
        if p["origin"] is not None and self.fits(p["origin"], c):
            return p["origin"]
        best, room = None, 0.0
        for b in self.cap:
            if self.fits(b, c):
                r = self.lo * self.cap[b] - self.used(b)  # type: ignore[operator]
                if best is None or r < room:
                    best, room = b, r
        return best

    def resume(self, p: dict, b: str) -> None:
        p.update(state="A", backend=b, origin=None, marked=False, started=True, since=None)

    def oversize(self, p: dict) -> bool:
        c = self.charge(p, True)
        return all(not self.healthy[b] or (cap is not None and c > self.lo * cap) for b, cap in self.cap.items())

    def resume_pass(self) -> None:
        while True:  # started programs with a waiting request, smallest first
            queue = sorted(
                (p for p in self.progs.values() if p["state"] == "P" and p["req"] > 0 and p["started"]),
                key=lambda p: (p["tokens"], p["seq"]),
            )
            if not queue:
                break
            b = self.place(queue[0], self.charge(queue[0], True))
            if b is None:
                return
            self.resume(queue[0], b)
        fresh = sorted(
            (p for p in self.progs.values() if p["state"] == "P" and p["req"] > 0 and not p["started"]),
            key=lambda p: (p["since"], p["seq"]),
        )
        for p in fresh:  # newcomers in arrival order; the head reserves (an oversize one blocks nobody)
            b = self.place(p, self.charge(p, True))
            if b is None:
                if self.oversize(p):
                    continue
                return
            self.resume(p, b)
        if fresh and any(p["state"] == "P" for p in fresh):
            return
        for b in self.cap:
            cap = self.cap[b]
            while cap is not None:
                marked = sorted(
                    (p for p in self.progs.values() if p["backend"] == b and p["marked"]),
                    key=lambda p: (p["tokens"], p["seq"]),
                )
                if not marked:
                    break
                p = marked[-1]
                if self.projected(b) + p["tokens"] + self.buf > self.lo * cap:
                    p = marked[0]
                    if self.projected(b) + p["tokens"] + self.buf > self.lo * cap:
                        break
                p["marked"] = False
        while True:
            idle = sorted(
                (p for p in self.progs.values() if p["state"] == "P" and p["req"] == 0),
                key=lambda p: (p["tokens"], p["seq"]),
            )
            if not idle:
                break
            b = self.place(idle[0], self.charge(idle[0], False))
            if b is None:
                break
            self.resume(idle[0], b)

    # --- the Policy methods the benchmark uses
    def set_capacity(self, url: str, tokens: int | None, now: float) -> list:
        self.cap[url] = tokens
        self.pause_pass(url)
        self.resume_pass()
        return []

    def on_arrival(self, pid: str, tokens: int, now: float):
        p = self.progs.get(pid)
        if p is None:
            self.seq += 1
            p = self.progs[pid] = dict(
                state="P", backend=None, origin=None, tokens=0, req=0, marked=False, seq=self.seq,
                started=False, since=None,
            )
        p["tokens"] = max(p["tokens"], tokens) if p["req"] > 0 else tokens
        p["req"] += 1
        if p["state"] == "A":
            cap = self.cap[p["backend"]]
            if cap is not None and self.used(p["backend"]) > self.hi * cap:
                self.pause_pass(p["backend"])
            return Proceed(p["backend"])
        if p["since"] is None:
            p["since"] = now
        others = [q for q in self.progs.values() if q["state"] == "P" and q["req"] > 0 and q is not p]
        if not p["started"]:  # a newcomer: first come, first served
            first = not any(q["started"] or not self.oversize(q) for q in others)
        else:
            waiting = [(q["tokens"], q["seq"]) for q in others if q["started"]]
            first = not waiting or (p["tokens"], p["seq"]) < min(waiting)
        if p["req"] == 1 and first:
            b = self.place(p, self.charge(p, True))
            if b is not None:
                self.resume(p, b)
                return Proceed(b)
        return None

    def on_request_end(self, pid: str, now: float, total: int | None) -> list:
        p = self.progs.get(pid)
        if p is None or p["req"] == 0:
            return []
        p["req"] -= 1
        if total is not None:
            p["tokens"] = total if p["req"] == 0 else max(p["tokens"], total)
        if p["req"] == 0:
            p["since"] = None
        if p["req"] == 0 and p["state"] == "A" and p["marked"]:
            self.pause(p)
        self.resume_pass()
        return []

    def release(self, pid: str, now: float):
        if self.progs.pop(pid, None) is None:
            return False, []
        self.resume_pass()
        return True, []

    def tick(self, now: float) -> list:
        for b in self.cap:
            self.pause_pass(b)
        self.resume_pass()
        return []

    def snapshot(self) -> dict:
        return {
            pid: ("active" if p["state"] == "A" else "paused", p["backend"], p["marked"])
            for pid, p in self.progs.items()
        }


def snapshot(pol: CapacityPolicy) -> dict:
    return {v.program_id: (v.state.value, v.backend, v.marked_for_pause) for v in pol.programs()}


# ====================================================================================== the workload
@dataclass
class Timings:
    arrivals: int = 0
    arrival_s: float = 0.0
    ends: int = 0
    end_s: float = 0.0
    ticks: int = 0
    tick_s: float = 0.0

    def us(self) -> tuple[float, float, float]:
        """µs per tick, per arrival, per request end."""
        return (
            self.tick_s / max(1, self.ticks) * 1e6,
            self.arrival_s / max(1, self.arrivals) * 1e6,
            self.end_s / max(1, self.ends) * 1e6,
        )


class Bag:
    """A set with O(1) add, remove and uniform random choice (the workload's own cost must not grow)."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.pos: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, x: str) -> bool:
        return x in self.pos

    def add(self, x: str) -> None:
        if x not in self.pos:
            self.pos[x] = len(self.items)
            self.items.append(x)

    def discard(self, x: str) -> None:
        i = self.pos.pop(x, None)
        if i is None:
            return
        last = self.items.pop()
        if i < len(self.items):
            self.items[i] = last
            self.pos[last] = i

    def choice(self, rnd: random.Random) -> str:
        return self.items[rnd.randrange(len(self.items))]


class Workload:
    """Drives a policy like the proxy does (held requests, in-flight requests, releases), from one seed.
    Every program has at most one request at a time: it is ready (between requests), held, or in flight."""

    def __init__(self, pol, n: int, seed: int, twin=None) -> None:
        self.pol, self.twin, self.n = pol, twin, n
        self.rnd = random.Random(seed)
        self.now = 0.0
        self.next_id = 0
        self.tokens: dict[str, int] = {}
        self.ready, self.inflight, self.held = Bag(), Bag(), Bag()
        self.t = Timings()
        cap = int(n * (MEAN_TOKENS + 100) * 0.85 / len(BACKENDS))
        for b in BACKENDS:
            self._both("set_capacity", b, cap, 0.0)
        for _ in range(n):
            self._new_program()
        while self.inflight:
            self._end(self.inflight.items[-1])
        self._tick()

    def state(self) -> tuple:
        rnd = random.Random()
        rnd.setstate(self.rnd.getstate())
        bags = [Bag() for _ in range(3)]
        for bag, src in zip(bags, (self.ready, self.inflight, self.held), strict=True):
            bag.items, bag.pos = list(src.items), dict(src.pos)
        return (rnd, dict(self.tokens), *bags, self.now, self.next_id)

    def restore(self, state: tuple) -> None:
        self.rnd, self.tokens, self.ready, self.inflight, self.held, self.now, self.next_id = state

    def _both(self, name: str, *args):
        out = getattr(self.pol, name)(*args)
        if self.twin is not None:
            getattr(self.twin, name)(*args)
            a, b = snapshot(self.pol), self.twin.snapshot()
            if a != b:
                diff = {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}
                raise SystemExit(f"naive twin disagrees after {name}{args}: {dict(list(diff.items())[:5])}")
        return out

    def _apply(self, actions) -> None:
        for a in actions:
            if isinstance(a, Resume) and a.program_id in self.held:
                self.held.discard(a.program_id)
                self.inflight.add(a.program_id)

    def _new_program(self) -> None:
        pid = f"p{self.next_id}"
        self.next_id += 1
        self.tokens[pid] = self.rnd.randint(2_000, 2 * MEAN_TOKENS - 2_000)
        self._arrive(pid)

    def _arrive(self, pid: str) -> None:
        self.ready.discard(pid)
        self.tokens[pid] += self.rnd.randint(50, 400)
        t0 = clock()
        adm = self._both("on_arrival", pid, self.tokens[pid], self.now)
        self.t.arrival_s += clock() - t0
        self.t.arrivals += 1
        (self.inflight if isinstance(adm, Proceed) else self.held).add(pid)

    def _end(self, pid: str) -> None:
        self.inflight.discard(pid)
        self.ready.add(pid)
        self.tokens[pid] += self.rnd.randint(20, 300)
        t0 = clock()
        actions = self._both("on_request_end", pid, self.now, self.tokens[pid])
        self.t.end_s += clock() - t0
        self.t.ends += 1
        self._apply(actions)

    def _tick(self) -> None:
        self.now += 5.0
        t0 = clock()
        actions = self._both("tick", self.now)
        self.t.tick_s += clock() - t0
        self.t.ticks += 1
        self._apply(actions)

    def round(self) -> None:
        """EVENTS_PER_TICK events, then one tick."""
        for _ in range(EVENTS_PER_TICK):
            r = self.rnd.random()
            self.now += 0.01
            if (r < 0.45 or not self.ready) and self.inflight:
                self._end(self.inflight.choice(self.rnd))
            elif r < 0.95 and self.ready:
                self._arrive(self.ready.choice(self.rnd))
            elif self.ready:
                pid = self.ready.choice(self.rnd)
                self.ready.discard(pid)
                ok, actions = self._both("release", pid, self.now)
                self._apply(actions)
                del self.tokens[pid]
                self._new_program()
        self._tick()


# ====================================================================================== main
def measure_ours(n: int, rounds: int, seed: int = 1) -> tuple[float, float, float]:
    w = Workload(CapacityPolicy(config()), n, seed)
    w.t = Timings()  # setup excluded
    gc.collect()
    gc.freeze()  # the setup's objects leave the GC's view: a full collection must not land in one call
    try:
        for _ in range(rounds):
            w.round()
    finally:
        gc.unfreeze()
    return w.t.us()


def measure_naive(n: int, rounds: int, seed: int = 1) -> tuple[float, float, float]:
    """The naive twin from a copy of the state our policy reached (an O(n²) setup is not worth paying)."""
    w = Workload(CapacityPolicy(config()), n, seed)
    w.pol, w.t = NaivePolicy.copy_of(w.pol), Timings()
    gc.collect()
    gc.freeze()
    try:
        for _ in range(rounds):
            w.round()
    finally:
        gc.unfreeze()
    return w.t.us()


def check_same_rule(n: int = 100, rounds: int = 60) -> int:
    w = Workload(CapacityPolicy(config()), n, seed=7, twin=NaivePolicy(config()))
    for _ in range(rounds):
        w.round()
    return w.t.arrivals + w.t.ticks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CI-sized: fewer rounds (well under a minute)")
    args = ap.parse_args()
    sizes = (100, 1_000, 10_000)
    ours_rounds, repeats = (150, 5) if args.quick else (1_000, 7)
    naive_rounds = {100: 40, 1_000: 6, 10_000: 1} if args.quick else {100: 200, 1_000: 40, 10_000: 4}

    events = check_same_rule(rounds=30 if args.quick else 100)
    print(f"same rule: ours and the naive twin made identical decisions over {events} events (100 programs)")
    print(
        f"{EVENTS_PER_TICK} events per tick, {len(BACKENDS)} backends; µs of CPU per call; ours best of "
        f"{repeats} runs, naive one run, on a shared machine (compare ratios, not absolute times)"
    )
    # ours: every size measured `repeats` times, interleaved, best mean per call kept (a shared machine
    # only ever adds time); naive: one run per size
    best = {n: [float("inf")] * 3 for n in sizes}
    for _ in range(repeats):
        for n in sizes:
            best[n] = [min(a, b) for a, b in zip(best[n], measure_ours(n, ours_rounds), strict=True)]
    rows = [(n, tuple(best[n]), measure_naive(n, naive_rounds[n])) for n in sizes]
    cols = ("tick", "arrival", "request end")
    hdr = f"{'programs':>9} | "
    hdr += " | ".join(f"{c + ' ours':>17} {'naive':>10} {'naive/ours':>10}" for c in cols)
    hdr += f" | {'ours at n / ours at 100 (tick, arrival, end)':>44}"
    print(hdr)
    print("-" * len(hdr))
    base = rows[0][1]
    for n, o, v in rows:
        cells = " | ".join(f"{o[i]:>17.1f} {v[i]:>10.1f} {v[i] / o[i]:>9.0f}x" for i in range(3))
        scale = ", ".join(f"{o[i] / base[i]:.2f}x" for i in range(3))
        print(f"{n:>9} | {cells} | {scale:>44}")
    worst = max(rows[-1][1][i] / base[i] for i in range(3))
    verdict = "meets" if worst <= 2.0 else "misses"
    print(f"10,000 vs 100 programs (ours): worst ratio {worst:.2f}x — {verdict} the ≤ 2x target")


if __name__ == "__main__":
    main()
