"""The policy interface shared by the proxy and the simulator.

A policy owns the scheduling state of every program (phase, lifecycle state, placement, token
accounting) and of every backend (capacity, health, incremental usage sums). It never does I/O, never
awaits, never reads a clock: every method that depends on time takes `now` (seconds, any epoch, monotonic).

Driving contract (what the caller — proxy or simulator — promises):
  * `on_arrival(pid, tokens, now)` once per request, before forwarding it. The answer is `Proceed(backend)`
    (forward now) or `Wait()` (hold the request; do not send a byte). A waiting request is later released
    by a `Resume(pid, backend)` action, or failed by a `Reject(pid, ...)` action.
  * `on_request_end(pid, now, total_tokens)` exactly once per request that got `Proceed` (or was resumed),
    whatever its outcome: success, error status, backend failure, client disconnect. `total_tokens` is
    usage.total_tokens when the response carried usage, else None (the policy keeps its estimate).
  * `on_progress(pid, tokens)` optionally while a response streams (context grows by `tokens`).
  * `release(pid, now)` when the client releases the program or the proxy expires it.
  * `tick(now)` every scheduler interval.
  Every method that may change who runs returns a list of actions; the caller applies them in order.

Program phase: REASONING while at least one request of the program is pending or in flight, ACTING
otherwise. Program state: ACTIVE (placed on a backend), PAUSED (in the one global queue), TERMINATED.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum


class Phase(StrEnum):
    REASONING = "reasoning"
    ACTING = "acting"


class State(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    TERMINATED = "terminated"


# --- answers and actions ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Proceed:
    """Forward the request now, to this backend."""

    backend: str


@dataclass(frozen=True, slots=True)
class Wait:
    """Hold the request (the program is paused or not yet admitted) until a Resume or Reject for it."""


@dataclass(frozen=True, slots=True)
class Resume:
    """The program is ACTIVE on `backend` again: release its held requests (if any) to that backend."""

    program_id: str
    backend: str


@dataclass(frozen=True, slots=True)
class Pause:
    """Informational: the program was moved to the global queue (its next request will wait)."""

    program_id: str
    backend: str  # the backend it was paused from


@dataclass(frozen=True, slots=True)
class Reject:
    """Fail the program's held requests with this HTTP status and message (e.g. released while queued)."""

    program_id: str
    status: int
    message: str


Action = Resume | Pause | Reject
Admission = Proceed | Wait


# --- read-only views (for /programs, /health, /metrics and the simulator's reports) --------------------


@dataclass(frozen=True, slots=True)
class ProgramView:
    program_id: str
    phase: Phase
    state: State
    backend: str | None
    origin_backend: str | None
    tokens: int  # the policy's current context-size estimate (exact after each response)
    inflight: int
    marked_for_pause: bool
    paused_since: float | None


@dataclass(frozen=True, slots=True)
class BackendView:
    url: str
    capacity: int | None  # KV tokens; None while unknown
    healthy: bool
    used: int  # projected usage the policy charges (tokens, weights and buffers included)
    reasoning_tokens: int
    acting_tokens: int
    program_count: int
    reasoning_count: int
    acting_count: int
    marked_count: int
    marked_tokens: int  # upstream's "future_paused_tokens"
    paused_count: int  # queued programs whose origin is this backend


@dataclass(frozen=True, slots=True)
class PolicyStats:
    pauses: int
    resumes: int
    forced_resumes: int
    marks: int
    rejects: int
    queue_length: int
    # added for "tr" (defaults keep other policies unchanged):
    unmarks: int = 0  # marks withdrawn because room freed before the response ended
    swaps: int = 0  # idle programs paused to make room for a request that waited past --aging-bound
    unknown_capacity: tuple[str, ...] = ()  # backends whose KV capacity is still unknown: warn loudly


class Policy(ABC):
    """What the policy driver (driver.py) calls — the only caller. Implementations: passthrough.PassthroughPolicy
    ("default"), capacity.CapacityPolicy ("tr"). The optional hooks are no-ops here, so a caller never asks
    whether a policy has one."""

    name: str = ""
    mode: str | None = None  # the variant of the rule, where a policy has several (tr: "fixed", "cost-aware")
    learns_from_engine: bool = False  # wants engine metrics through observe_engine

    # backends
    @abstractmethod
    def add_backend(self, url: str) -> None: ...
    @abstractmethod
    def set_capacity(self, url: str, tokens: int | None, now: float) -> list[Action]: ...
    @abstractmethod
    def set_healthy(self, url: str, healthy: bool, now: float) -> list[Action]: ...

    def observe_engine(self, url: str, metrics: dict[str, float], now: float) -> list[Action]:
        """Engine metrics of `url` (vLLM names, as a /metrics scrape reads them)."""
        return []

    def set_shared_prefix(self, tokens: int) -> None:
        """Size of the prefix every program shares (system prompt + tool schemas)."""

    # requests
    @abstractmethod
    def on_arrival(self, program_id: str, tokens: int, now: float) -> Admission: ...

    def on_progress(self, program_id: str, tokens: int) -> None:
        """A streamed response grew the program's context by `tokens`."""

    @abstractmethod
    def on_request_end(self, program_id: str, now: float, total_tokens: int | None) -> list[Action]: ...

    # lifecycle
    @abstractmethod
    def release(self, program_id: str, now: float) -> tuple[bool, list[Action]]: ...
    @abstractmethod
    def tick(self, now: float) -> list[Action]: ...

    # views
    @abstractmethod
    def program(self, program_id: str) -> ProgramView | None: ...
    @abstractmethod
    def programs(self) -> list[ProgramView]: ...
    @abstractmethod
    def backends(self) -> list[BackendView]: ...
    @abstractmethod
    def stats(self) -> PolicyStats: ...

    def report(self, url: str) -> dict[str, float]:
        """What the policy has learned about `url`, for /metrics and run reports (empty: nothing)."""
        return {}
