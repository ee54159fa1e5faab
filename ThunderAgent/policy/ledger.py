"""The books of the "tr" policy: every program's scheduling record, each backend's running sums and ordered
sets, the global queue, and the acting-decay clock.

`CapacityPolicy` (capacity.py) decides; the `Ledger` only keeps count, as vLLM's Scheduler decides and its
KVCacheManager allocates. Every transition of a program is `detach` (take it out of every sum and set it
is filed in) → mutate → `attach` (file it again under its new state and size), so each event costs
O(log n) and nothing is ever recomputed by scanning programs. `check()` recounts everything from scratch
and compares (tests).

Decayed ACTING sums use a moving reference point: a backend keeps S = Σ c·base^((u0 − ref)/unit) over its
ACTING programs (u0 = decay-clock value when each became ACTING), so the decayed total at clock u is one
multiplication, S·base^((ref − u)/unit), and moving `ref` forward rescales every S by one factor.
"""

from __future__ import annotations

import math

from sortedcontainers import SortedList

from ThunderAgent.policy.base import State

_REBASE_EXPONENT = 64.0  # rebase the decay reference before base^exponent can overflow a float

Key = tuple[int, int, str]  # (tokens, seq, program_id): seq breaks ties in arrival order


class Entry:
    """One program's scheduling record."""

    __slots__ = (
        "pid",
        "seq",
        "state",
        "backend",
        "origin",
        "tokens",
        "requests",
        "marked",
        "wait_since",
        "paused_since",
        "acting_u",
        "idle_since",
        "started",
        "key",
    )

    def __init__(self, pid: str, seq: int) -> None:
        self.pid = pid
        self.seq = seq
        self.state = State.PAUSED
        self.backend: str | None = None
        self.origin: str | None = None
        self.tokens = 0
        self.requests = 0  # held + in flight; REASONING iff > 0
        self.marked = False
        self.wait_since: float | None = None  # when its oldest held request started waiting
        self.paused_since: float | None = None
        self.acting_u = 0.0  # decay clock value when it last became ACTING
        self.idle_since = 0.0  # when its last request ended (it has been ACTING since, if it is)
        self.started = False  # placed on a backend at least once (has a context an engine may have cached)
        self.key: Key = (0, seq, pid)  # the key it is filed under while attached


class Book:
    """One backend's running sums and ordered sets (everything the rules read in O(1) or O(log n))."""

    __slots__ = (
        "url",
        "order",
        "capacity",
        "healthy",
        "count",
        "reasoning_count",
        "acting_count",
        "marked_count",
        "reasoning_tokens",
        "acting_tokens",
        "marked_tokens",
        "reasoning_c",
        "acting_c",
        "marked_c",
        "acting_s",
        "paused_count",
        "acting",
        "acting_idle",
        "reasoning",
        "marked",
    )

    def __init__(self, url: str, order: int) -> None:
        self.url = url
        self.order = order
        self.capacity: int | None = None
        self.healthy = True
        self.count = 0
        self.reasoning_count = 0  # marked included
        self.acting_count = 0
        self.marked_count = 0
        self.reasoning_tokens = 0  # raw contexts (views)
        self.acting_tokens = 0
        self.marked_tokens = 0
        self.reasoning_c = 0  # charged contexts (shared prefix removed when credited)
        self.acting_c = 0
        self.marked_c = 0
        self.acting_s = 0.0  # Σ c · base^((u0 − ref)/unit) over ACTING programs (decay on)
        self.paused_count = 0  # queued programs whose origin is this backend
        self.acting: SortedList = SortedList()  # keys of ACTING programs
        self.acting_idle: SortedList = SortedList()  # (idle_since, seq, pid) of the same: longest idle first
        self.reasoning: SortedList = SortedList()  # keys of unmarked REASONING programs
        self.marked: SortedList = SortedList()  # keys of marked REASONING programs


class Ledger:
    """Programs, backends, the queue and the decay clock, kept consistent incrementally."""

    def __init__(
        self, *, weight: float, buffer: int, decay: str, base: float, unit: float, prefix: int,
        arrival_order: bool = True,
    ) -> None:
        self.w = float(weight)  # --acting-token-weight
        self.buffer = int(buffer)  # --buffer-per-program
        self.decay = decay  # "off" | "exp" | "geometric"
        self.base, self.unit = base, unit  # decay factor base^(-(u - u0)/unit)
        self.prefix = prefix  # shared prefix charged once per backend (0 = no credit)
        self.arrival_order = arrival_order  # never-started programs queue in `fresh` (else in `pending`)
        self.ticks = 0  # the geometric decay's clock
        self.ref = 0.0  # decay reference point (same clock as u)
        self.ref_set = False
        self.now = 0.0  # the latest `now` seen
        self.seq = 0
        self.programs: dict[str, Entry] = {}
        self.backends: dict[str, Book] = {}
        self.pending: SortedList = SortedList()  # keys of queued STARTED programs with a held request
        self.fresh: SortedList = SortedList()  # (wait_since, seq, pid) of queued never-started ones (arrival order)
        self.pending_age: SortedList = SortedList()  # (wait_since, seq, pid) of both
        self.idle: SortedList = SortedList()  # keys of queued programs without a request

    def add_backend(self, url: str) -> Book:
        b = self.backends.get(url)
        if b is None:
            b = self.backends[url] = Book(url, len(self.backends))
        return b

    def new_program(self, pid: str) -> Entry:
        self.seq += 1
        p = self.programs[pid] = Entry(pid, self.seq)
        return p

    def set_prefix(self, tokens: int) -> None:
        """Change the credited shared prefix: every program is refiled (O(programs))."""
        progs = list(self.programs.values())
        for p in progs:
            self.detach(p)
        self.prefix = max(0, int(tokens))
        for p in progs:
            self.attach(p)

    def c(self, tokens: int) -> int:
        """Charged context: the shared prefix is removed (it is charged once per backend instead)."""
        return tokens - min(tokens, self.prefix) if self.prefix else tokens

    def u(self, now: float) -> float:
        """The decay clock: seconds (exp) or ticks (geometric)."""
        return float(self.ticks) if self.decay == "geometric" else now

    def advance(self, now: float) -> None:
        if now > self.now:
            self.now = now

    def factor(self, u0: float) -> float:
        return self.base ** ((u0 - self.ref) / self.unit)

    def rebase(self, u: float) -> None:
        """Move the decay reference to `u`: every backend's decayed sum is scaled by one factor."""
        if self.decay == "off":
            return
        if not self.ref_set:
            self.ref, self.ref_set = u, True
            return
        if u <= self.ref:
            return
        scale = self.base ** ((self.ref - u) / self.unit)
        for b in self.backends.values():
            b.acting_s = b.acting_s * scale if b.acting_count else 0.0
        self.ref = u

    def acting_charge(self, b: Book) -> float:
        if self.decay == "off":
            return self.w * b.acting_c
        if not b.acting_count:
            return 0.0
        u = self.u(self.now)
        return self.w * max(0.0, b.acting_s) * self.base ** ((self.ref - u) / self.unit)

    def used(self, b: Book) -> float:
        shared = self.prefix if (self.prefix and b.count) else 0
        return b.reasoning_c + self.acting_charge(b) + self.buffer * b.count + shared

    def projected(self, b: Book) -> float:
        """Usage once every marked program has been paused."""
        return self.used(b) - b.marked_c - self.buffer * b.marked_count

    def charge(self, p: Entry, *, reasoning: bool) -> float:
        """What placing `p` adds to a backend's usage (the shared prefix is the caller's concern)."""
        c = self.c(p.tokens)
        if reasoning:
            return c + self.buffer
        if self.decay == "off":
            return self.w * c + self.buffer
        u = self.u(self.now)
        return self.w * c * self.base ** ((p.acting_u - u) / self.unit) + self.buffer

    def attach(self, p: Entry) -> None:
        """File `p` under its current state in the sums and ordered sets (the inverse of `detach`)."""
        key = (p.tokens, p.seq, p.pid)
        p.key = key
        if p.state is State.ACTIVE:
            b = self.backends[p.backend]  # type: ignore[index]
            c = self.c(p.tokens)
            b.count += 1
            if p.requests > 0:
                b.reasoning_count += 1
                b.reasoning_tokens += p.tokens
                b.reasoning_c += c
                if p.marked:
                    b.marked_count += 1
                    b.marked_tokens += p.tokens
                    b.marked_c += c
                    b.marked.add(key)
                else:
                    b.reasoning.add(key)
            else:
                b.acting_count += 1
                b.acting_tokens += p.tokens
                b.acting_c += c
                if self.decay != "off":
                    if not self.ref_set:
                        self.ref, self.ref_set = p.acting_u, True
                    if (p.acting_u - self.ref) / self.unit > _REBASE_EXPONENT:
                        self.rebase(p.acting_u)
                    b.acting_s += c * self.factor(p.acting_u)
                b.acting.add(key)
                b.acting_idle.add((p.idle_since, p.seq, p.pid))
        elif p.state is State.PAUSED:
            if p.origin is not None and p.origin in self.backends:
                self.backends[p.origin].paused_count += 1
            if p.requests > 0:
                if p.started or not self.arrival_order:
                    self.pending.add(key)
                else:
                    self.fresh.add((p.wait_since, p.seq, p.pid))
                self.pending_age.add((p.wait_since, p.seq, p.pid))
            else:
                self.idle.add(key)

    def detach(self, p: Entry) -> None:
        key = p.key
        if p.state is State.ACTIVE:
            b = self.backends[p.backend]  # type: ignore[index]
            c = self.c(key[0])
            b.count -= 1
            if p.requests > 0:
                b.reasoning_count -= 1
                b.reasoning_tokens -= key[0]
                b.reasoning_c -= c
                if p.marked:
                    b.marked_count -= 1
                    b.marked_tokens -= key[0]
                    b.marked_c -= c
                    b.marked.remove(key)
                else:
                    b.reasoning.remove(key)
            else:
                b.acting_count -= 1
                b.acting_tokens -= key[0]
                b.acting_c -= c
                if self.decay != "off":
                    b.acting_s = b.acting_s - c * self.factor(p.acting_u) if b.acting_count else 0.0
                b.acting.remove(key)
                b.acting_idle.remove((p.idle_since, p.seq, p.pid))
        elif p.state is State.PAUSED:
            if p.origin is not None and p.origin in self.backends:
                self.backends[p.origin].paused_count -= 1
            if p.requests > 0:
                if p.started or not self.arrival_order:
                    self.pending.remove(key)
                else:
                    self.fresh.remove((p.wait_since, p.seq, p.pid))
                self.pending_age.remove((p.wait_since, p.seq, p.pid))
            else:
                self.idle.remove(key)

    def check(self) -> None:
        """Recount everything from scratch and compare with the incremental state (tests; O(n))."""
        seen: set[str] = set()
        pend, idle, fresh = [], [], []
        per: dict[str, dict[str, float]] = {
            u: dict(count=0, rc=0, ac=0, mc=0, rt=0, at=0, mt=0, rcn=0, acn=0, mcn=0, paused=0, s=0.0)
            for u in self.backends
        }
        sets: dict[str, dict[str, list]] = {u: dict(a=[], r=[], m=[], i=[]) for u in self.backends}
        for pid, p in self.programs.items():
            assert pid == p.pid and pid not in seen
            seen.add(pid)
            assert p.key == (p.tokens, p.seq, p.pid), f"{pid}: stale key {p.key} vs tokens {p.tokens}"
            assert p.requests >= 0
            if p.state is State.ACTIVE:
                assert p.backend in self.backends and p.origin is None, pid
                d, s, c = per[p.backend], sets[p.backend], self.c(p.tokens)  # type: ignore[index]
                d["count"] += 1
                if p.requests > 0:
                    d["rcn"] += 1
                    d["rt"] += p.tokens
                    d["rc"] += c
                    if p.marked:
                        d["mcn"] += 1
                        d["mt"] += p.tokens
                        d["mc"] += c
                        s["m"].append(p.key)
                    else:
                        s["r"].append(p.key)
                else:
                    assert not p.marked, f"{pid}: ACTING but marked"
                    d["acn"] += 1
                    d["at"] += p.tokens
                    d["ac"] += c
                    if self.decay != "off":
                        d["s"] += c * self.factor(p.acting_u)
                    s["a"].append(p.key)
                    s["i"].append((p.idle_since, p.seq, p.pid))
            elif p.state is State.PAUSED:
                assert p.backend is None and not p.marked, pid
                if p.origin is not None:
                    per[p.origin]["paused"] += 1
                if p.requests > 0:
                    assert p.wait_since is not None, pid
                    if p.started or not self.arrival_order:
                        pend.append(p.key)
                    else:
                        fresh.append((p.wait_since, p.seq, p.pid))
                else:
                    idle.append(p.key)
            else:
                raise AssertionError(f"{pid}: terminated program still tracked")
        assert sorted(pend) == list(self.pending), "pending queue differs from recount"
        assert sorted(idle) == list(self.idle), "idle queue differs from recount"
        assert sorted(fresh) == list(self.fresh), "fresh queue differs from recount"
        assert len(self.pending_age) == len(self.pending) + len(self.fresh)
        assert {k[2] for k in self.pending_age} == {k[2] for k in self.pending} | {k[2] for k in self.fresh}
        for u, b in self.backends.items():
            d = per[u]
            got = dict(
                count=b.count, rc=b.reasoning_c, ac=b.acting_c, mc=b.marked_c, rt=b.reasoning_tokens,
                at=b.acting_tokens, mt=b.marked_tokens, rcn=b.reasoning_count, acn=b.acting_count,
                mcn=b.marked_count, paused=b.paused_count,
            )  # fmt: skip
            want = {k: v for k, v in d.items() if k != "s"}
            assert got == want, f"{u}: incremental {got} != recount {want}"
            assert sorted(sets[u]["a"]) == list(b.acting), f"{u}: acting set differs"
            assert sorted(sets[u]["i"]) == list(b.acting_idle), f"{u}: idle-age set differs"
            assert sorted(sets[u]["r"]) == list(b.reasoning), f"{u}: reasoning set differs"
            assert sorted(sets[u]["m"]) == list(b.marked), f"{u}: marked set differs"
            if self.decay != "off":
                assert math.isclose(b.acting_s, d["s"], rel_tol=1e-6, abs_tol=1e-6), (
                    f"{u}: decayed sum {b.acting_s} != recount {d['s']}"
                )
