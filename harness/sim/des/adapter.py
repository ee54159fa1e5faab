"""The simulator's side of the policy driver: one call in flight per program, on virtual time.

A simulated program sends one LLM call at a time, so the adapter keeps one ticket per program and speaks in
program ids: `arrive` (True: send the call now; False: it is held until the policy resumes it), `finish`
(the call ended, with its exact context size), `release` (the program is over), `tick`, `observe` (engine
metrics, as a /metrics scrape reads them). Every policy call reads the injected `clock` (the simulation's
virtual time). Decisions reach the simulation through two callbacks: `on_released(handle)` (a held call is
resumed: submit it to the engine) and `on_failed(handle, Failed)` (a held call is rejected: record the error
and end its program). There is no `on_error`: a failing policy call stops the simulation, so a policy bug
cannot hide in a figure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ThunderAgent.policy.base import Policy
from ThunderAgent.policy.driver import Delivery, Failed, PolicyDriver, Released, Ticket


class DesPolicy:
    """`policy` driven for one backend on `clock`; held calls come back through the two callbacks."""

    def __init__(self, policy: Policy, backend: str, clock: Callable[[], float],
                 on_released: Callable[[Any], None], on_failed: Callable[[Any, Failed], None]) -> None:
        self.backend = backend
        self.driver = PolicyDriver(policy, clock, self._deliver)
        self._on_released = on_released
        self._on_failed = on_failed
        self._tickets: dict[str, Ticket] = {}  # each program's current call, running or held

    @property
    def policy(self) -> Policy:
        return self.driver.policy

    @property
    def learns_from_engine(self) -> bool:
        return self.driver.learns_from_engine

    def start(self, capacity_tokens: int) -> None:
        """Register the backend and its KV capacity (num_gpu_blocks x block_size, as the proxy discovers it
        from vllm:cache_config_info). Nothing is held yet, so whatever the policy answers resumes nobody."""
        self.driver.add_backend(self.backend)
        self.driver.set_capacity(self.backend, capacity_tokens)

    def arrive(self, program_id: str, tokens: int, handle: Any = None) -> bool:
        """The program sends a call whose prompt is `tokens` long: True when it may go to the engine now."""
        ticket = self.driver.arrive(program_id, tokens, handle)
        self._tickets[program_id] = ticket
        return ticket.running

    def finish(self, program_id: str, total_tokens: int) -> None:
        """The program's running call ended; `total_tokens` = prompt + output (the response's usage)."""
        self.driver.end(self._tickets.pop(program_id), total_tokens)

    def release(self, program_id: str) -> None:
        self.driver.release(program_id)

    def tick(self) -> None:
        self.driver.tick()

    def observe(self, metrics: dict[str, float]) -> None:
        self.driver.observe_engine(self.backend, metrics)

    def _deliver(self, ticket: Ticket, delivery: Delivery) -> None:
        if isinstance(delivery, Released):
            self._on_released(ticket.handle)
        else:
            self._tickets.pop(ticket.program_id, None)
            self._on_failed(ticket.handle, delivery)
