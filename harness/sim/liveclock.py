"""Engine time for a live driver (the HTTP server) whose wake-ups come late.

The server sleeps until each engine step is due, and its wake-ups are late: by tens of microseconds on an idle
machine, by milliseconds to tens of milliseconds when the cores are busy (2 shared cores, a real vLLM next door)
or the event loop is handling HTTP. A tiny-model step is ~2 ms. Two earlier loops lost engine time to this:
the first started every step at the moment it woke up (each overshoot stretched the engine); the second kept
its own engine clock but, to keep requests from being scheduled before they arrived, gave up any lag beyond
50 ms as idle engine time — on a loaded machine that was 15% of a 60 s run (8.8 s lost, measured with the
server in the client's process). Either way the simulated engine ran slower than its step model, queues built,
and under heavy KV thrashing live mode preempted 24-38 times where the discrete-event mode (no wake-ups)
preempted 5, on the same workload (16 programs, 24 blocks, tiny-cpu).

`CatchUpStepper` removes both losses the way the DES does it: the engine runs on its own clock `et`, and a
submitted request is held, stamped with its arrival time, until the engine clock reaches that time. The engine
then replays exactly the timeline the DES would compute — a step never starts before a request it schedules
arrived, and a late wake-up only delays delivery of results, it never stretches the engine. Lag is given up
(and counted in `lost_v`) only beyond `max_lag_v`, when the process really cannot keep up with the time scale.
Pure and clock-agnostic (virtual seconds in, `StepResult`s out), so tests drive it on a fake clock.

`SimEngineRunner` is the asyncio side: it owns the engine, its `CatchUpStepper` and the accelerated clock
(virtual time = wall time since start x time_scale), runs one task that steps the engine, and wakes each
submitted request's waiters when its first token and its end are due. It knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

from harness.sim.engine import Engine, Request, StepResult
from harness.sim.timing import Profile


class CatchUpStepper:
    """Steps `engine` on engine time `et`; requests join the engine when `et` reaches their arrival."""

    def __init__(self, engine: Engine, *, max_lag_v: float) -> None:
        """max_lag_v: how far engine time may trail the driver's clock before the gap is given up as idle
        (a process that cannot keep up with its time scale)."""
        self.engine = engine
        self.max_lag_v = max_lag_v
        self.et = 0.0
        self.lost_v = 0.0
        self.arrivals: deque[Request] = deque()  # submitted, not yet reached by engine time (arrival order)

    def submit(self, req: Request, vnow: float) -> None:
        """A request arrived at `vnow` (driver time, non-decreasing across calls)."""
        req.arrival_time = vnow
        self.arrivals.append(req)

    def withdraw(self, req: Request) -> bool:
        """Drop a request the engine has not seen yet (client gone); False if it is already in the engine."""
        try:
            self.arrivals.remove(req)
        except ValueError:
            return False
        return True

    def has_work(self) -> bool:
        return bool(self.arrivals) or self.engine.has_work()

    def idle(self, vnow: float) -> None:
        """Nothing could run until `vnow` (e.g. every block pinned): the engine clock moves up to it."""
        self.et = max(self.et, vnow)

    def _admit_arrived(self) -> None:
        arrivals = self.arrivals
        while arrivals and arrivals[0].arrival_time <= self.et:
            self.engine.add_request(arrivals.popleft())

    def step(self, vnow: float) -> StepResult:
        """Run the next engine step at engine time (or, when engine time trails `vnow`, the run of identical
        decode steps that started in the past); its results are due at `self.et` afterwards. `res.steps == 0` with `res.duration == 0` means nothing could be scheduled."""
        behind = vnow - self.max_lag_v
        if behind > self.et:
            if self.engine.has_work():
                self.lost_v += behind - self.et
            self.et = behind
        self._admit_arrived()
        if not self.engine.has_work() and self.arrivals:  # idle until the next arrival
            self.et = max(self.et, self.arrivals[0].arrival_time)
            self._admit_arrived()
        # A run of identical decode steps may only cover steps that start before the driver's present and before
        # the next held arrival: later arrivals are not known yet, and one of them could join a later step.
        # Caught up, that is one step per call; behind, runs catch up exactly.
        until = vnow if not self.arrivals else min(vnow, self.arrivals[0].arrival_time)
        horizon = max(until - self.et, 0.0)
        res = self.engine.step(self.et, horizon)
        self.et += res.duration
        return res


@dataclass
class Pending:
    """A submitted request's two moments: first token delivered, request finished (or aborted)."""
    req: Request
    first: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class SimEngineRunner:
    """Owns the engine and its accelerated clock; one asyncio task steps it."""

    def __init__(self, profile: Profile, *, time_scale: float = 1.0, slice_s: float = 0.005,
                 max_lag_s: float = 1.0, kv_offload_gib: float | None = None) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        self.profile = profile
        self.engine = Engine.from_profile(profile, kv_offload_gib=kv_offload_gib)  # the DES's engine, same tier
        self.time_scale = time_scale
        self.slice_s = slice_s
        self.max_lag_s = max_lag_s
        self.clock = CatchUpStepper(self.engine, max_lag_v=max_lag_s * time_scale)
        self.t0 = time.monotonic()
        self.pending: dict[str, Pending] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def vnow(self) -> float:
        return (time.monotonic() - self.t0) * self.time_scale

    def start(self) -> None:
        """Reset the clock to now and start stepping (the server calls it when it starts serving)."""
        if self._task is None:
            self.t0 = time.monotonic()
            self._wake = asyncio.Event()
            self._task = asyncio.create_task(self._loop(), name="sim-engine")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def submit(self, req: Request) -> Pending:
        p = Pending(req)
        self.engine.validate(req)  # a request that can never run is refused now, not when engine time reaches it
        self.clock.submit(req, self.vnow())
        self.pending[req.request_id] = p
        self._wake.set()
        return p

    def abort(self, p: Pending) -> None:
        if not p.done.is_set():
            self.clock.withdraw(p.req)  # not yet reached by engine time: the engine never sees it
            self.engine.abort(p.req, self.vnow())
            p.done.set()
        self.pending.pop(p.req.request_id, None)

    async def _loop(self) -> None:
        """Step the engine on its own clock (CatchUpStepper: requests join when engine time reaches their
        arrival), sleeping only while it is ahead of virtual time. A late wake-up (OS scheduling jitter is
        milliseconds, tens of them on a loaded machine; a tiny-model step is ~2 ms) only delays delivery, it does
        not cost engine time; beyond `max_lag_s` of wall time behind, the gap counts as idle (clock.lost_v)."""
        eng = self.engine
        clock = self.clock
        clock.idle(self.vnow())
        while True:
            if not clock.has_work():
                self._wake.clear()
                pe = eng.next_pin_expiry()
                timeout = None if pe is None else max(0.0, (pe - self.vnow()) / self.time_scale)
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except TimeoutError:
                    eng.expire_pins(self.vnow())
                continue
            res = clock.step(self.vnow())
            if res.steps == 0:  # nothing fits (e.g. pinned blocks): wait for a change
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.slice_s)
                except TimeoutError:
                    pass
                clock.idle(self.vnow())
                continue
            delay = (clock.et - self.vnow()) / self.time_scale
            await asyncio.sleep(max(0.0, delay))  # also yields to the request handlers when behind
            for r in res.first_tokens:
                p = self.pending.get(r.request_id)
                if p is not None:
                    p.first.set()
            for r in res.finished:
                p = self.pending.pop(r.request_id, None)
                if p is not None:
                    p.first.set()
                    p.done.set()
