"""Router "default": a sticky, least-loaded pass-through (upstream's `--router default`).

Every request proceeds at once. A program is placed at its first request on the healthy backend with the
fewest *live* programs (ties: configuration order; none healthy: the first backend) and stays there for
its lifetime. Unlike upstream, released and idle-expired programs stop counting, so "least loaded" does
not drift when clients forget to release.

No queue, no pauses: `tick` does nothing and `Wait` is never answered. Phase follows the in-flight count
(REASONING while any request of the program is in flight), so concurrent requests under one id are exact.
Per-backend sums are kept incrementally (O(1) per event).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ThunderAgent.policy.base import (
    Action,
    Admission,
    BackendView,
    Phase,
    Policy,
    PolicyStats,
    Proceed,
    ProgramView,
    State,
)
from ThunderAgent.policy.settings import PolicySettings


@dataclass(slots=True)
class _Program:
    program_id: str
    backend: str
    tokens: int = 0
    inflight: int = 0

    @property
    def phase(self) -> Phase:
        return Phase.REASONING if self.inflight > 0 else Phase.ACTING


@dataclass(slots=True)
class _Backend:
    url: str
    order: int
    capacity: int | None = None
    healthy: bool = True
    programs: set[str] = field(default_factory=set)
    reasoning_tokens: int = 0
    acting_tokens: int = 0
    reasoning_count: int = 0


class PassthroughPolicy(Policy):
    """The "default" router. Implements `ThunderAgent.policy.base.Policy`."""

    name = "default"

    def __init__(self, settings: PolicySettings) -> None:
        self._backends: dict[str, _Backend] = {}
        self._programs: dict[str, _Program] = {}
        for url in settings.backends:
            self.add_backend(url)

    # --- backends --------------------------------------------------------------------------------------
    def add_backend(self, url: str) -> None:
        if url not in self._backends:
            self._backends[url] = _Backend(url=url, order=len(self._backends))

    def set_capacity(self, url: str, tokens: int | None, now: float) -> list[Action]:
        self._backends[url].capacity = tokens
        return []

    def set_healthy(self, url: str, healthy: bool, now: float) -> list[Action]:
        self._backends[url].healthy = healthy
        return []

    # --- requests --------------------------------------------------------------------------------------
    def on_arrival(self, program_id: str, tokens: int, now: float) -> Admission:
        p = self._programs.get(program_id)
        if p is None:
            p = _Program(program_id=program_id, backend=self._place())
            self._programs[program_id] = p
            self._backends[p.backend].programs.add(program_id)
        self._unaccount(p)
        p.inflight += 1
        p.tokens = max(0, int(tokens))
        self._account(p)
        return Proceed(p.backend)

    def on_progress(self, program_id: str, tokens: int) -> None:
        p = self._programs.get(program_id)
        if p is None:
            return
        self._unaccount(p)
        p.tokens += max(0, int(tokens))
        self._account(p)

    def on_request_end(self, program_id: str, now: float, total_tokens: int | None) -> list[Action]:
        p = self._programs.get(program_id)
        if p is None:  # released while in flight
            return []
        self._unaccount(p)
        p.inflight = max(0, p.inflight - 1)
        if total_tokens is not None:
            p.tokens = max(0, int(total_tokens))
        self._account(p)
        return []

    # --- lifecycle -------------------------------------------------------------------------------------
    def release(self, program_id: str, now: float) -> tuple[bool, list[Action]]:
        p = self._programs.pop(program_id, None)
        if p is None:
            return False, []
        self._unaccount(p)
        self._backends[p.backend].programs.discard(program_id)
        return True, []

    def tick(self, now: float) -> list[Action]:
        return []

    # --- views -----------------------------------------------------------------------------------------
    def program(self, program_id: str) -> ProgramView | None:
        p = self._programs.get(program_id)
        return None if p is None else self._view(p)

    def programs(self) -> list[ProgramView]:
        return [self._view(p) for p in self._programs.values()]

    def backends(self) -> list[BackendView]:
        out = []
        for b in self._backends.values():
            n = len(b.programs)
            out.append(
                BackendView(
                    url=b.url,
                    capacity=b.capacity,
                    healthy=b.healthy,
                    used=b.reasoning_tokens + b.acting_tokens,
                    reasoning_tokens=b.reasoning_tokens,
                    acting_tokens=b.acting_tokens,
                    program_count=n,
                    reasoning_count=b.reasoning_count,
                    acting_count=n - b.reasoning_count,
                    marked_count=0,
                    marked_tokens=0,
                    paused_count=0,
                )
            )
        return out

    def stats(self) -> PolicyStats:
        return PolicyStats(pauses=0, resumes=0, forced_resumes=0, marks=0, rejects=0, queue_length=0)

    # --- internals -------------------------------------------------------------------------------------
    def _place(self) -> str:
        if not self._backends:
            raise LookupError("no backends configured")
        healthy = [b for b in self._backends.values() if b.healthy]
        if not healthy:
            return next(iter(self._backends))
        return min(healthy, key=lambda b: (len(b.programs), b.order)).url

    def _account(self, p: _Program) -> None:
        b = self._backends[p.backend]
        if p.inflight > 0:
            b.reasoning_tokens += p.tokens
            b.reasoning_count += 1
        else:
            b.acting_tokens += p.tokens

    def _unaccount(self, p: _Program) -> None:
        b = self._backends[p.backend]
        if p.inflight > 0:
            b.reasoning_tokens -= p.tokens
            b.reasoning_count -= 1
        else:
            b.acting_tokens -= p.tokens

    @staticmethod
    def _view(p: _Program) -> ProgramView:
        return ProgramView(
            program_id=p.program_id,
            phase=p.phase,
            state=State.ACTIVE,
            backend=p.backend,
            origin_backend=None,
            tokens=p.tokens,
            inflight=p.inflight,
            marked_for_pause=False,
            paused_since=None,
        )
