"""The one loop that drives a policy: the proxy and the discrete-event simulator are thin adapters around it.

A policy (base.py) decides; something must carry its answers out, keep the promises of the driving contract
and never call it out of turn. `PolicyDriver` does that once, for both callers:

  * every request is a `Ticket`: `arrive` asks the policy (Proceed: the ticket runs now on a backend; Wait:
    it is held, and no byte may reach a backend);
  * `Resume`/`Reject` actions release held tickets through the adapter's `deliver` callback, in arrival
    order; a held ticket whose client left (`end` called while held) is never delivered — when the policy
    resumes it, the driver ends it on the policy's behalf;
  * `on_request_end` runs exactly once per ticket the policy counted as running, whatever happened to it:
    `end` is idempotent and adapters call it from every exit path;
  * `tick`, `set_capacity`, `set_healthy`, `observe_engine`, `release`: the policy's other inputs, each
    followed by applying the actions it returns.

Time comes from the injected `clock` (the event loop's monotonic clock in the proxy, virtual time in the
simulator). A failing policy call other than `arrive` goes to `on_error` when one is given (the proxy logs
and keeps serving) and propagates otherwise (the simulator stops: a policy bug must not hide in a figure).
`arrive` always propagates: its caller answers the request (e.g. 503 when no backend exists).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ThunderAgent.policy.base import Action, Policy, Proceed, Reject, Resume


class TicketState(Enum):
    HELD = "held"  # waiting for a Resume (or Reject); nothing sent
    RUNNING = "running"  # the policy counts it in flight on `backend`
    ENDED = "ended"  # on_request_end done
    REJECTED = "rejected"  # failed by a Reject or fail_held while held: the policy never counted it running


@dataclass(eq=False, slots=True)
class Ticket:
    """One request of a program, from arrival to its end. `handle` is the adapter's own object (a future,
    a simulated program) for its deliver callback."""

    program_id: str
    tokens: int
    arrival: float
    handle: Any = None
    state: TicketState = TicketState.HELD
    backend: str | None = None
    abandoned: bool = False  # its client left while it was held

    @property
    def held(self) -> bool:
        return self.state is TicketState.HELD

    @property
    def running(self) -> bool:
        return self.state is TicketState.RUNNING


@dataclass(frozen=True, slots=True)
class Released:
    """Delivered to a held ticket: go, to this backend."""

    backend: str


@dataclass(frozen=True, slots=True)
class Failed:
    """Delivered to a held ticket: answer the client with this HTTP status and message."""

    status: int
    message: str
    type: str = "scheduler_rejected"  # the OpenAI-style error type the client sees
    code: str | int | None = None


Delivery = Released | Failed


@dataclass
class PolicyDriver:
    """Drives `policy` on `clock`; held tickets are released through `deliver(ticket, Released | Failed)`."""

    policy: Policy
    clock: Callable[[], float]
    deliver: Callable[[Ticket, Delivery], None]
    on_error: Callable[[str, BaseException], None] | None = None
    _held: dict[str, list[Ticket]] = field(default_factory=dict, init=False, repr=False)

    # --- requests ----------------------------------------------------------------------------------
    def arrive(self, program_id: str, tokens: int, handle: Any = None) -> Ticket:
        """A request of `program_id` whose context is about `tokens`: RUNNING (ticket.backend set) or HELD.
        Exceptions from the policy propagate (nothing was recorded)."""
        now = self.clock()
        admission = self.policy.on_arrival(program_id, tokens, now)
        ticket = Ticket(program_id, tokens, now, handle)
        if isinstance(admission, Proceed):
            ticket.state, ticket.backend = TicketState.RUNNING, admission.backend
        else:
            self._held.setdefault(program_id, []).append(ticket)
        return ticket

    def progress(self, ticket: Ticket, tokens: int) -> None:
        """A streamed response of a running ticket grew its program's context by `tokens`."""
        if ticket.running:
            self._guard("on_progress", lambda: self.policy.on_progress(ticket.program_id, tokens))

    def end(self, ticket: Ticket, total_tokens: int | None = None) -> None:
        """The ticket is over, for any reason; call it from every exit path (idempotent). A running ticket
        ends in the policy (with the exact context size when the response carried usage); a held one is
        abandoned: never delivered, and ended on the policy's behalf if the policy resumes it."""
        if ticket.running:
            ticket.state = TicketState.ENDED
            now = self.clock()
            self._apply_from("on_request_end",
                             lambda: self.policy.on_request_end(ticket.program_id, now, total_tokens))
        elif ticket.held:
            ticket.abandoned = True

    def held(self, program_id: str) -> list[Ticket]:
        """The program's held tickets, in arrival order (abandoned ones included until the policy decides)."""
        return list(self._held.get(program_id, ()))

    def fail_held(self, program_id: str, failure: Failed) -> None:
        """Fail every held ticket of the program (rejected, released while queued, shutting down, ...)."""
        for ticket in self._held.pop(program_id, []):
            ticket.state = TicketState.REJECTED
            if not ticket.abandoned:
                self.deliver(ticket, failure)

    def fail_all_held(self, failure: Failed) -> None:
        for program_id in list(self._held):
            self.fail_held(program_id, failure)

    # --- programs and backends -----------------------------------------------------------------------
    def release(self, program_id: str) -> bool:
        """The program is over (the client released it, or it expired). True when the policy knew it."""
        now = self.clock()
        out: list[bool] = [False]

        def call() -> list[Action]:
            out[0], actions = self.policy.release(program_id, now)
            return actions

        self._apply_from("release", call)
        return out[0]

    def tick(self) -> None:
        now = self.clock()
        self._apply_from("tick", lambda: self.policy.tick(now))

    def add_backend(self, url: str) -> None:
        self.policy.add_backend(url)

    def set_capacity(self, url: str, tokens: int | None) -> None:
        now = self.clock()
        self._apply_from("set_capacity", lambda: self.policy.set_capacity(url, tokens, now))

    def set_healthy(self, url: str, healthy: bool) -> None:
        now = self.clock()
        self._apply_from("set_healthy", lambda: self.policy.set_healthy(url, healthy, now))

    @property
    def learns_from_engine(self) -> bool:
        return self.policy.learns_from_engine

    def observe_engine(self, url: str, metrics: dict[str, float]) -> None:
        """Engine metrics of `url` (only policies that learn from them are called)."""
        if self.policy.learns_from_engine:
            now = self.clock()
            self._apply_from("observe_engine", lambda: self.policy.observe_engine(url, metrics, now))

    # --- carrying out what the policy decided -----------------------------------------------------------
    def apply(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Resume):
                self._resume(a.program_id, a.backend)
            elif isinstance(a, Reject):
                self.fail_held(a.program_id, Failed(a.status, a.message, code=a.status))
            # Pause is informational: the program's next request will wait; nothing to carry out

    def _resume(self, program_id: str, backend: str) -> None:
        tickets = self._held.pop(program_id, [])
        for ticket in tickets:
            ticket.state, ticket.backend = TicketState.RUNNING, backend
        for ticket in tickets:
            if ticket.abandoned:  # its client is gone, but the policy now counts it as running: end it
                self.end(ticket)
            else:
                self.deliver(ticket, Released(backend))

    def _apply_from(self, what: str, call: Callable[[], list[Action]]) -> None:
        """Call the policy, then carry out the actions it returned (none when the call failed)."""
        actions: list[Action] = []
        self._guard(what, lambda: actions.extend(call()))
        self.apply(actions)

    def _guard(self, what: str, call: Callable[[], None]) -> None:
        try:
            call()
        except Exception as e:
            if self.on_error is None:
                raise
            self.on_error(what, e)
