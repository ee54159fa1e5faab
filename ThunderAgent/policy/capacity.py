"""Router "tr": program-aware capacity scheduling (upstream's default router, with its flaws fixed).

The policy keeps each backend's KV-cache footprint of the programs placed on it under a limit, by holding
whole programs (never single requests) in one global queue. It is pure: no I/O, no asyncio, no clock —
every time-dependent method takes `now` — so the proxy and the discrete-event simulator drive the same
object (see base.py for the driving contract).

Accounting (per backend, kept incrementally by the Ledger in ledger.py — every transition is
detach → mutate → attach):

    used = Σ_REASONING c + w · Σ_ACTING c · f(age) + buffer · count  (+ P once, with shared-prefix credit)

  c is a program's context in tokens (exact `usage.total_tokens` after each response, the caller's
  estimate on arrival, + streamed progress), w = --acting-token-weight, f = the acting decay (1 when off;
  2^(-t/half-life) for "exp"; base^(-ticks) for "geometric"), buffer = --buffer-per-program. With
  --shared-prefix-credit a prefix of P tokens shared by every program (`set_shared_prefix`) is charged once
  per backend instead of once per program. Decayed sums use a moving reference point, so a decayed sum is
  one multiplication to read, not a scan.

Rules (limits from limits.py: high = high_watermark·C, low = low_watermark·C):

  * Pause pass (every tick, and on the arrival that pushed a backend over): when used > high, pause ACTING
    programs smallest context first (cheapest to re-prefill), then MARK REASONING programs smallest first
    (paused when their last in-flight request ends) — stopping as soon as the projected usage
    (used − marked) is ≤ low. Marks count, so there is no pause wave; the set is minimal (a program the
    others already cover is left alone). If pausing idle programs brings `used` itself under high right
    now, they are paused too (marks only help when responses end).
  * Resume pass (every tick, and whenever capacity frees: request end, release, capacity/health change),
    admitting only while a backend stays ≤ low:
      1. forced: a program whose request has waited ≥ --resume-timeout is placed anyway, and the backend's
         pause pass then restores the watermark (capacity-aware: no lasting overload);
      2. aged: programs whose request has waited ≥ --aging-bound, oldest first; one that does not fit
         swaps out programs that have sat idle (ACTING) at least --aging-bound on the roomiest backend when
         that places it now, and holds everything below it until it is placed (a reservation: small
         programs cannot starve it; it starts as running programs finish or idle past the bound; one too
         big for any backend only waits for the forced resume). Programs in mid-trajectory are never
         rotated out for it: each rotation costs a re-prefill and, in sustained overload, shortens no wait;
      3. pending: programs paused in mid-trajectory with a waiting request, smallest first (holding them
         costs a re-prefill the longer they wait);
      4. fresh: programs waiting for their first response, in arrival order, the head reserving the room
         (--tr-queue-order arrival; holding them costs nothing, and a large one is never overtaken by a
         later, smaller one); with --tr-queue-order smallest they are in `pending` (upstream's order);
      5. then marks are cancelled where the room allows (cheaper than pausing and resuming later);
      6. idle: paused programs with no request, smallest first (their next request will not wait).
    Placement: the program's origin backend when it fits (its KV may still be cached), else best fit
    (the backend whose room is smallest but sufficient; --tr-placement worst_fit balances instead).
  * New programs and returning paused programs are admitted at arrival when they fit and the resume pass
    would pick them first: nobody it would overtake is waiting (a newcomer: no program, bar oversize ones; a
    returning program: no smaller paused one) and no waiting program has aged (so a newcomer never
    overtakes what the queue would serve before it, and does not wait for the next tick either).
  * A backend whose capacity is unknown takes at most --unknown-capacity-programs programs and is never
    paused; `stats().unknown_capacity` names such backends (warn loudly) until set_capacity fixes it.
  * Release frees capacity at once; a request held for a released program gets Reject(410).
  * `on_request_end` may also be called for a HELD request whose client gave up: the program stops
    counting it (and leaves the pending class when it was the last).

Upstream's rule, approximately, for comparison runs: `--low-watermark 1 --tr-placement worst_fit
--aging-bound 1e9 --tr-queue-order smallest` (its over-marking, stale keys and stuck-REASONING bugs are not reproduced).

Cost: each event is O(log n) (sortedcontainers) plus O(backends); a tick is O(backends + changes·log n).

KV offloading (vLLM --kv-offloading-size): a backend's capacity is its GPU KV cache (num_gpu_blocks x block_size
from vllm:cache_config_info, which does not count the host tier) plus --kv-offload-credit x --kv-offload-tokens
(the host tier's size, which vLLM does not publish). The credit is 0 by default: tr is tier-blind unless told
otherwise, by decision. Crediting the tier pays while the running programs' contexts fit in GPU + host (an
eviction then costs a PCIe load, 47-70x cheaper than re-prefilling a 30K-token context on 8xH100 in the
simulator's profiles, so there is nothing to pause for), and costs dearly past that: the tier is LRU over every
stored prompt, paused programs' included, and the overcommitted GPU pool thrashes (docs/offload.md:
simulated, +17% at 48 GLM-4.6 programs with 256 GiB, -42% at 96-192). Pause and resume orders are unchanged:
the policy cannot see which prefixes the tier still holds (vLLM exports no per-program figure).

Size: one class of about 600 lines, on purpose. The pause pass, the resume pass (its six classes), placement
and the aging swap all move programs between the same ledger classes under the same invariants
(`check_invariants`); split into modules they would reach into each other's private state.
"""

from __future__ import annotations

import math

from sortedcontainers import SortedList

from ThunderAgent.policy.base import (
    Action,
    Admission,
    BackendView,
    Pause,
    Phase,
    Policy,
    PolicyStats,
    Proceed,
    ProgramView,
    Reject,
    Resume,
    State,
    Wait,
)
from ThunderAgent.policy.ledger import Book, Entry, Key, Ledger
from ThunderAgent.policy.limits import Limits, make_limits
from ThunderAgent.policy.settings import PolicySettings


class CapacityPolicy(Policy):
    """The "tr" router. Implements `ThunderAgent.policy.base.Policy`; see the module docstring."""

    name = "tr"

    def __init__(self, settings: PolicySettings, *, limits: Limits | None = None) -> None:
        self.settings = settings
        self.mode = settings.tr_mode
        self.learns_from_engine = settings.learns_from_engine
        self.limits: Limits = limits if limits is not None else make_limits(settings)
        decay = settings.acting_decay
        self.decay = decay
        self.best_fit = settings.tr_placement == "best_fit"
        self._aging = float(settings.aging_bound)
        self._timeout = float(settings.resume_timeout)
        self._unknown_slots = int(settings.unknown_capacity_programs)
        self._credit = bool(settings.shared_prefix_credit)
        # decay clock: u = now (exp, unit = half-life) or u = ticks (geometric, unit = 1)
        base, unit = (
            (2.0, float(settings.acting_decay_half_life))
            if decay == "exp"
            else (float(settings.acting_decay_base), 1.0)
        )
        self.book = Ledger(
            weight=settings.acting_token_weight,
            buffer=settings.buffer_per_program,
            decay=decay,
            base=base,
            unit=unit,
            prefix=settings.shared_prefix_tokens if self._credit else 0,
            arrival_order=settings.tr_queue_order == "arrival",
        )  # the accounting (ledger.py); read it, never mutate it from outside
        self._buffered: list[Action] = []  # actions produced where the interface cannot return them
        self._pauses = self._resumes = self._forced = self._marks = self._rejects = 0
        self._swaps = self._unmarks = 0
        for url in settings.backends:
            self.add_backend(url)

    # ================================================================================ backends
    def add_backend(self, url: str) -> None:
        self.book.add_backend(url)

    def set_capacity(self, url: str, tokens: int | None, now: float) -> list[Action]:
        """Capacity of `url` in KV tokens (block_size × num_gpu_blocks), or None while unknown."""
        self.add_backend(url)
        b = self.book.backends[url]
        b.capacity = None if tokens is None or tokens <= 0 else int(tokens) + self._host_credit()
        actions = self._flush()
        self.book.advance(now)
        self._pause_pass(b, actions)
        self._resume_pass(now, actions)
        return actions

    def _host_credit(self) -> int:
        """KV offloading: tokens of the host tier counted as capacity beyond the GPU cache (see the module doc)."""
        return int(self.settings.kv_offload_credit * self.settings.kv_offload_tokens)

    def set_healthy(self, url: str, healthy: bool, now: float) -> list[Action]:
        """Unhealthy backends get no new or resumed programs; programs already there stay (and are still
        paused when over capacity)."""
        self.add_backend(url)
        self.book.backends[url].healthy = bool(healthy)
        actions = self._flush()
        self.book.advance(now)
        if healthy:
            self._resume_pass(now, actions)
        return actions

    def observe_engine(self, url: str, metrics: dict[str, float], now: float) -> list[Action]:
        """Engine metrics of `url` (e.g. from a /metrics scrape). Passed to the limits (a cost-aware mode
        learns from them), then the backend is re-checked, as its limits may have moved."""
        self.add_backend(url)
        b = self.book.backends[url]
        # the limit binds: programs from this backend are paused, requests wait, or usage is at the limit
        binding = (b.capacity is None or b.paused_count > 0 or len(self.book.pending_age) > 0
                   or self.book.used(b) >= self.limits.low(url, b.capacity))
        self.limits.observe(url, metrics, now, binding=binding)
        actions = self._flush()
        self.book.advance(now)
        self._pause_pass(self.book.backends[url], actions)
        self._resume_pass(now, actions)
        return actions

    def report(self, url: str) -> dict[str, float]:
        """What the limits learned about `url` (a cost-aware mode: overcommit, share, prefill cost)."""
        return self.limits.report(url)

    def set_shared_prefix(self, tokens: int) -> None:
        """Size in tokens of the prefix every program shares (e.g. the system prompt + tool schemas); only
        used with --shared-prefix-credit. Rebuilds every sum (O(programs)): call it rarely."""
        if self._credit:
            self.book.set_prefix(tokens)

    # ================================================================================ requests
    def on_arrival(self, program_id: str, tokens: int, now: float) -> Admission:
        self.book.advance(now)
        tokens = max(0, int(tokens))
        p = self.book.programs.get(program_id)
        if p is None:
            p = self.book.new_program(program_id)
            p.paused_since = now
        else:
            self.book.detach(p)
        p.tokens = max(p.tokens, tokens) if p.requests > 0 else tokens
        p.requests += 1
        if p.state is State.ACTIVE:
            self.book.attach(p)
            b = self.book.backends[p.backend]  # type: ignore[index]
            if b.capacity is not None and self.book.used(b) > self.limits.high(b.url, b.capacity):
                self._pause_pass(b, self._buffered)  # arrival check (Pause actions are informational)
            return Proceed(p.backend)  # type: ignore[arg-type]
        # PAUSED (queued, or brand new): admit now only where the resume pass would pick it first — no
        # waiting program is smaller (the pass goes smallest first) and none has aged (it reserves the
        # room) — and it has no earlier held request (those are released together by one Resume)
        if p.wait_since is None:
            p.wait_since = now
        if p.requests == 1 and self._may_bypass(p, now):
            target = self._place(p, charge=self.book.charge(p, reasoning=True))
            if target is not None:
                if p.origin is not None:
                    self._resumes += 1  # a paused program back on a backend (a newcomer is not a resume)
                self._activate(p, target)
                self.book.attach(p)
                return Proceed(target.url)
        self.book.attach(p)
        return Wait()

    def _may_bypass(self, p: Entry, now: float) -> bool:
        """Would the resume pass pick this arriving program before every waiting one?"""
        if not self.book.pending and not self.book.fresh:
            return True
        for wait_since, _, pid in self.book.pending_age:  # oldest first; aged ones reserve the room
            if now - wait_since < self._aging:
                break
            if not self._oversize(self.book.programs[pid]):
                return False
        if not p.started and self.book.arrival_order:  # first come, first served (oversize ones block nobody)
            return not self.book.pending and all(self._oversize(self.book.programs[k[2]]) for k in self.book.fresh)
        return not self.book.pending or (p.tokens, p.seq, p.pid) < self.book.pending[0]

    def on_progress(self, program_id: str, tokens: int) -> None:
        p = self.book.programs.get(program_id)
        if p is None or tokens <= 0:
            return
        self.book.detach(p)
        p.tokens += int(tokens)
        self.book.attach(p)

    def on_request_end(self, program_id: str, now: float, total_tokens: int | None) -> list[Action]:
        """One request of the program ended (any outcome). May also be called for a HELD request that the
        client abandoned before it was released (the program then stops counting it as waiting)."""
        actions = self._flush()
        self.book.advance(now)
        p = self.book.programs.get(program_id)
        if p is None or p.requests == 0:
            return actions
        self.book.detach(p)
        p.requests -= 1
        if total_tokens is not None and total_tokens >= 0:
            p.tokens = int(total_tokens) if p.requests == 0 else max(p.tokens, int(total_tokens))
        if p.requests == 0:
            p.acting_u = self.book.u(now)
            p.idle_since = now
            p.wait_since = None
            if p.state is State.ACTIVE and p.marked:
                p.marked = False
                b = p.backend
                self._deactivate(p, now)
                actions.append(Pause(p.pid, b))  # type: ignore[arg-type]
                self._pauses += 1
        self.book.attach(p)
        self._resume_pass(now, actions)
        return actions

    # ================================================================================ lifecycle
    def release(self, program_id: str, now: float) -> tuple[bool, list[Action]]:
        actions = self._flush()
        self.book.advance(now)
        p = self.book.programs.pop(program_id, None)
        if p is None:
            return False, actions
        self.book.detach(p)
        if p.state is State.PAUSED and p.requests > 0:
            actions.append(
                Reject(
                    p.pid,
                    410,
                    f"program {p.pid!r} was released while its request was waiting in the scheduler queue",
                )
            )
            self._rejects += 1
        p.state = State.TERMINATED
        self._resume_pass(now, actions)
        return True, actions

    def tick(self, now: float) -> list[Action]:
        actions = self._flush()
        if self.decay == "geometric":
            self.book.ticks += 1
        self.book.advance(now)
        self.book.rebase(self.book.u(now))
        for b in self.book.backends.values():
            self._pause_pass(b, actions)
        self._resume_pass(now, actions)
        return actions

    # ================================================================================ views
    def program(self, program_id: str) -> ProgramView | None:
        p = self.book.programs.get(program_id)
        return None if p is None else self._view(p)

    def programs(self) -> list[ProgramView]:
        return [self._view(p) for p in self.book.programs.values()]

    def backends(self) -> list[BackendView]:
        out = []
        for b in self.book.backends.values():
            out.append(
                BackendView(
                    url=b.url,
                    capacity=b.capacity,
                    healthy=b.healthy,
                    used=int(round(self.book.used(b))),
                    reasoning_tokens=b.reasoning_tokens,
                    acting_tokens=b.acting_tokens,
                    program_count=b.count,
                    reasoning_count=b.reasoning_count,
                    acting_count=b.acting_count,
                    marked_count=b.marked_count,
                    marked_tokens=b.marked_tokens,
                    paused_count=b.paused_count,
                )
            )
        return out

    def stats(self) -> PolicyStats:
        return PolicyStats(
            pauses=self._pauses,
            resumes=self._resumes,
            forced_resumes=self._forced,
            marks=self._marks,
            rejects=self._rejects,
            queue_length=len(self.book.pending) + len(self.book.fresh) + len(self.book.idle),
            unmarks=self._unmarks,
            swaps=self._swaps,
            unknown_capacity=tuple(self.unknown_capacity()),
        )

    def unknown_capacity(self) -> list[str]:
        """Backends whose KV capacity is still unknown: the proxy should warn loudly while non-empty (they
        take at most --unknown-capacity-programs programs each and are never paused)."""
        return [b.url for b in self.book.backends.values() if b.capacity is None]

    def used(self, url: str) -> float:
        """Charged usage of a backend at the last `now` seen (exact float; BackendView rounds it)."""
        return self.book.used(self.book.backends[url])

    def _view(self, p: Entry) -> ProgramView:
        return ProgramView(
            program_id=p.pid,
            phase=Phase.REASONING if p.requests > 0 else Phase.ACTING,
            state=p.state,
            backend=p.backend,
            origin_backend=p.origin,
            tokens=p.tokens,
            inflight=p.requests,
            marked_for_pause=p.marked,
            paused_since=p.paused_since if p.state is State.PAUSED else None,
        )

    # ================================================================================ transitions
    # (callers detach before and attach after)
    def _activate(self, p: Entry, b: Book) -> None:
        p.started = True
        p.state = State.ACTIVE
        p.backend = b.url
        p.origin = None
        p.paused_since = None
        p.wait_since = None
        p.marked = False

    def _deactivate(self, p: Entry, now: float) -> None:
        p.origin = p.backend
        p.backend = None
        p.state = State.PAUSED
        p.paused_since = now
        p.marked = False
        if p.requests > 0 and p.wait_since is None:
            p.wait_since = now

    def _pause(self, p: Entry, actions: list[Action]) -> None:
        """Move an ACTING program from its backend to the queue (its next request will wait)."""
        url = p.backend
        self.book.detach(p)
        self._deactivate(p, self.book.now)
        self.book.attach(p)
        actions.append(Pause(p.pid, url))  # type: ignore[arg-type]
        self._pauses += 1

    def _mark(self, p: Entry) -> None:
        """Mark a REASONING program: it is paused when its last in-flight request ends."""
        self.book.detach(p)
        p.marked = True
        self.book.attach(p)
        self._marks += 1

    def _pause_pass(self, b: Book, actions: list[Action]) -> None:
        """If `b` is over its high limit: pause ACTING programs, then mark REASONING ones, smallest first,
        until the projected usage (marks counted) is at or below the low limit."""
        if b.capacity is None or self.book.used(b) <= self.limits.high(b.url, b.capacity):
            return
        target = self.limits.low(b.url, b.capacity)
        need = self.book.projected(b) - target
        if need > 0 and b.acting:
            for key in self._select(b.acting, need, reasoning=False):
                self._pause(self.book.programs[key[2]], actions)
            need = self.book.projected(b) - target
        if need > 0 and b.reasoning:
            for key in self._select(b.reasoning, need, reasoning=True):
                self._mark(self.book.programs[key[2]])
        # Marks relieve the backend only when responses end. If pausing idle programs gets the usage under
        # the high line right now, do that too; if even pausing all of them could not, leave them be.
        over = self.book.used(b) - self.limits.high(b.url, b.capacity)
        if over > 0 and b.acting and self.book.acting_charge(b) + self.book.buffer * b.acting_count >= over:
            for key in self._select(b.acting, over, reasoning=False):
                self._pause(self.book.programs[key[2]], actions)

    def _select(self, keys: SortedList, need: float, *, reasoning: bool) -> list[Key]:
        """Smallest first until `need` charged tokens are freed, then drop (largest first) any chosen
        program the others already cover: no overshoot that the resume pass would undo at once.
        O(chosen), not O(programs)."""
        chosen: list[tuple[Key, float]] = []
        freed = 0.0
        for key in keys:
            if freed >= need:
                break
            c = self.book.charge(self.book.programs[key[2]], reasoning=reasoning)
            chosen.append((key, c))
            freed += c
        keep = [chosen[-1]] if chosen else []
        for key, c in reversed(chosen[:-1]):
            if freed - c >= need:
                freed -= c
            else:
                keep.append((key, c))
        return sorted(k for k, _ in keep)

    # ================================================================================ placement
    def _room(self, b: Book) -> float:
        return self.limits.low(b.url, b.capacity) - self.book.used(b)  # type: ignore[arg-type]

    def _fits(self, b: Book, charge: float) -> bool:
        if not b.healthy:
            return False
        if b.capacity is None:
            return b.count < self._unknown_slots
        extra = self.book.prefix if (self.book.prefix and not b.count) else 0
        return charge + extra <= self._room(b)

    def _place(self, p: Entry, charge: float) -> Book | None:
        """Origin backend when it fits, else best fit (smallest sufficient room) among healthy backends with
        known capacity, else an unknown-capacity backend with a free slot (fewest programs)."""
        if p.origin is not None:
            o = self.book.backends.get(p.origin)
            if o is not None and self._fits(o, charge):
                return o
        best: Book | None = None
        best_room = 0.0
        fallback: Book | None = None
        for b in self.book.backends.values():
            if not self._fits(b, charge):
                continue
            if b.capacity is None:
                if fallback is None or b.count < fallback.count:
                    fallback = b
                continue
            room = self._room(b)
            if best is None or (room < best_room if self.best_fit else room > best_room):
                best, best_room = b, room
        return best if best is not None else fallback

    def _oversize(self, p: Entry) -> bool:
        """True when `p` fits no healthy backend even empty (only a forced resume can place it)."""
        charge = self.book.c(p.tokens) + self.book.buffer + self.book.prefix
        for b in self.book.backends.values():
            if not b.healthy:
                continue
            if b.capacity is None or charge <= self.limits.low(b.url, b.capacity):
                return False
        return True

    def _resume(self, p: Entry, b: Book, actions: list[Action]) -> None:
        self.book.detach(p)
        self._activate(p, b)
        self.book.attach(p)
        actions.append(Resume(p.pid, b.url))
        self._resumes += 1

    # ================================================================================ resume pass
    def _resume_pass(self, now: float, actions: list[Action]) -> None:
        if not self.book.backends:
            return
        # 1. forced resume after --resume-timeout (oldest first), then restore the watermark
        while self.book.pending_age and now - self.book.pending_age[0][0] >= self._timeout:
            p = self.book.programs[self.book.pending_age[0][2]]
            b = self._forced_target(p)
            if b is None:
                break
            self._resume(p, b, actions)
            self._forced += 1
            self._pause_pass(b, actions)
        # 2. aged programs, oldest first; a non-oversize one that cannot be placed reserves the room
        i = 0
        while i < len(self.book.pending_age):
            wait_since, _, pid = self.book.pending_age[i]
            if now - wait_since < self._aging:
                break
            p = self.book.programs[pid]
            b = self._place(p, self.book.charge(p, reasoning=True))
            if b is None:
                b = self._make_room(p, now, actions)
            if b is not None:
                self._resume(p, b, actions)
                continue
            if self._oversize(p):
                i += 1  # cannot fit anywhere: waits for the forced resume, blocks nobody
                continue
            return  # reservation: nothing below an aged program is resumed before it
        # 3. programs with a waiting request, smallest first
        while self.book.pending:
            p = self.book.programs[self.book.pending[0][2]]
            b = self._place(p, self.book.charge(p, reasoning=True))
            if b is None:
                break  # a larger one fits nowhere either
            self._resume(p, b, actions)
        # 4. programs waiting for their first response, in arrival order, once no started one waits: the
        #    head reserves the room (a later, smaller newcomer never starts before it)
        i = 0
        while i < len(self.book.fresh) and not self.book.pending:
            p = self.book.programs[self.book.fresh[i][2]]
            b = self._place(p, self.book.charge(p, reasoning=True))
            if b is None:
                if self._oversize(p):
                    i += 1  # fits no backend even empty: waits for the forced resume, blocks nobody
                    continue
                break
            self._resume(p, b, actions)
        if self.book.pending or self.book.fresh:
            return
        # 5. cancel marks where the room allows (the marked programs are running and their KV is hot)
        for b in self.book.backends.values():
            if b.marked and b.capacity is not None:
                self._unmark_fitting(b)
        # 6. idle paused programs, smallest first
        while self.book.idle:
            p = self.book.programs[self.book.idle[0][2]]
            b = self._place(p, self.book.charge(p, reasoning=False))
            if b is None:
                break
            self._resume(p, b, actions)

    def _unmark_fitting(self, b: Book) -> None:
        target = self.limits.low(b.url, b.capacity)  # type: ignore[arg-type]
        while b.marked:
            key = b.marked[-1]  # largest first: the most expensive to re-prefill later
            if self.book.projected(b) + self.book.c(key[0]) + self.book.buffer > target:
                key = b.marked[0]
                if self.book.projected(b) + self.book.c(key[0]) + self.book.buffer > target:
                    return
            p = self.book.programs[key[2]]
            self.book.detach(p)
            p.marked = False
            self.book.attach(p)
            self._unmarks += 1

    def _forced_target(self, p: Entry) -> Book | None:
        """Origin if healthy, else the healthy backend with most room (unknown capacity = fewest programs),
        else any backend."""
        if p.origin is not None:
            o = self.book.backends.get(p.origin)
            if o is not None and o.healthy:
                return o
        best: Book | None = None
        best_room = -math.inf
        for b in self.book.backends.values():
            if not b.healthy:
                continue
            room = self._room(b) if b.capacity is not None else math.inf
            if best is None or room > best_room:
                best, best_room = b, room
        if best is None:
            best = next(iter(self.book.backends.values()), None)
        return best

    def _make_room(self, p: Entry, now: float, actions: list[Action]) -> Book | None:
        """For an aged program that fits nowhere: on the healthy backend with the most projected room (where
        it would fit at all), swap out programs that have sat idle (ACTING) at least --aging-bound, longest
        idle first, when that places it now. Returns the backend if it fits now, else None (it keeps its
        reservation and starts as running programs end).

        Why only long-idle ones: swapping a program out in mid-trajectory costs a re-prefill of its whole
        context when it returns, and in sustained overload it shortens no wait on average (it only changes
        who waits). A program idle that long is one whose tool, or client, holds capacity without using
        it, and vLLM's free queue is LRU, so the longest-idle prefix is the first evicted anyway: holding
        it costs least. Simulated (glm4.6-8xh100, 192 programs): swapping any idle program drove 1,088 of
        1,336 pauses in 40 min and 79% of the re-prefilled tokens."""
        charge = self.book.charge(p, reasoning=True)
        best: Book | None = None
        best_room = -math.inf
        for b in self.book.backends.values():
            if not b.healthy or b.capacity is None:
                continue
            extra = self.book.prefix if self.book.prefix else 0
            if charge + extra > self.limits.low(b.url, b.capacity):
                continue
            room = self.limits.low(b.url, b.capacity) - self.book.projected(b)
            if p.origin == b.url:
                room += 0.5  # prefer the origin on ties
            if room > best_room:
                best, best_room = b, room
        if best is None:
            return None
        b = best
        extra = self.book.prefix if (self.book.prefix and not b.count) else 0
        need = charge + extra - self._room(b)
        chosen: list[Entry] = []
        freed = 0.0
        for idle_since, _, pid in b.acting_idle:
            if freed >= need or now - idle_since < self._aging:
                break
            q = self.book.programs[pid]
            chosen.append(q)
            freed += self.book.charge(q, reasoning=False)
        if freed < need:
            return None
        for q in chosen:
            self._pause(q, actions)
            self._swaps += 1
        return b if self._fits(b, charge) else None

    def _flush(self) -> list[Action]:
        """Actions produced where the interface could not return them (arrival checks), minus those that
        went stale meanwhile (a Pause for a program that is no longer paused there)."""
        if not self._buffered:
            return []
        out, self._buffered = self._buffered, []
        return [a for a in out if not isinstance(a, Pause) or self._still_paused(a)]

    def _still_paused(self, a: Pause) -> bool:
        p = self.book.programs.get(a.program_id)
        return p is not None and p.state is State.PAUSED and p.origin == a.backend

    # ================================================================================ debug
    def check_invariants(self) -> None:
        """Recount everything from scratch and compare with the incremental state (tests; O(n))."""
        self.book.check()
