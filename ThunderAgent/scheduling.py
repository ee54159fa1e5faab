"""The proxy's adapter of the policy driver: held requests are futures on the event loop.

    sched = ProxyScheduler(policy, clock=loop.time)
    ticket = sched.arrive("p1", 1200)          # the policy admits (ticket.backend set) or holds the request
    backend = await sched.backend(ticket)      # a held one waits for Resume (-> backend) or Reject (-> ProxyError)
    ...
    sched.end(ticket, total_tokens)            # every exit path, idempotent

Everything the policy decides goes through one PolicyDriver (policy/driver.py): this class only turns its
deliveries into future results (Released -> the backend URL, Failed -> a ProxyError the client sees) and
logs a failing policy call instead of raising, so a policy bug never takes the proxy down. It does no I/O
and needs no HTTP server: a test can build it on an event loop and drive it with scripted events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from ThunderAgent.forward import ProxyError
from ThunderAgent.policy.base import Action, Policy
from ThunderAgent.policy.driver import Delivery, Failed, PolicyDriver, Released, Ticket

log = logging.getLogger("thunderagent")

Clock = Callable[[], float]


class ProxyScheduler:
    """The policy as the proxy drives it: tickets for requests, futures for held ones, failures logged."""

    def __init__(self, policy: Policy, clock: Clock, backends: tuple[str, ...] | list[str] = ()) -> None:
        self.policy = policy
        self.clock = clock
        self.driver = PolicyDriver(policy, clock, self._deliver, on_error=self._on_error)
        for url in backends:
            self.driver.add_backend(url)

    # --- requests ----------------------------------------------------------------------------------
    def arrive(self, program_id: str, tokens: int) -> Ticket:
        """Ask the policy about a request of about `tokens`: running (ticket.backend set) or held (its
        handle is a future on the running loop). Exceptions from the policy propagate: the caller answers
        the request (no backend, ...)."""
        ticket = self.driver.arrive(program_id, tokens)
        if ticket.held:
            ticket.handle = asyncio.get_running_loop().create_future()
        return ticket

    async def backend(self, ticket: Ticket) -> str:
        """The backend the ticket runs on: at once when admitted, else when the policy resumes it (a
        rejection raises the ProxyError the client gets)."""
        if ticket.handle is None:
            return ticket.backend or ""
        return await asyncio.shield(ticket.handle)

    def progress(self, ticket: Ticket, tokens: int) -> None:
        self.driver.progress(ticket, tokens)

    def end(self, ticket: Ticket, total_tokens: int | None = None) -> None:
        """The request is over, for any reason (idempotent)."""
        self.driver.end(ticket, total_tokens)

    def abandon(self, ticket: Ticket) -> None:
        """The client of a held request left: it is never delivered, and if the policy already resumed it
        (its future holds a backend nobody will use) the request ends now."""
        fut = ticket.handle
        if fut is not None:
            if not fut.done():
                fut.cancel()
            elif not fut.cancelled():
                fut.exception()  # a rejection nobody will read: marked read, so asyncio does not warn of it
        self.driver.end(ticket)

    def held(self, program_id: str) -> int:
        """How many requests of the program the driver still holds (abandoned ones until the policy
        decides about them)."""
        return len(self.driver.held(program_id))

    # --- programs, backends, time ---------------------------------------------------------------------
    def release(self, program_id: str, reason: str) -> bool:
        """The program was released by its client or expired (`reason`): the policy forgets it and its held
        requests fail with 410. True when the policy knew it."""
        released = self.driver.release(program_id)
        self.driver.fail_held(
            program_id,
            Failed(
                410,
                f"program {program_id} was {reason} while its request was held",
                "program_released",
                "program_released",
            ),
        )
        return released

    def shut_down(self) -> None:
        """Every held request fails with 503: the proxy is stopping."""
        self.driver.fail_all_held(Failed(503, "proxy is shutting down", "unavailable"))

    def tick(self) -> None:
        self.driver.tick()

    def set_capacity(self, url: str, tokens: int | None) -> None:
        self.driver.set_capacity(url, tokens)

    def set_healthy(self, url: str, healthy: bool) -> None:
        self.driver.set_healthy(url, healthy)

    @property
    def learns_from_engine(self) -> bool:
        return self.driver.learns_from_engine

    def observe_engine(self, url: str, metrics: dict[str, float]) -> None:
        self.driver.observe_engine(url, metrics)

    def apply(self, actions: list[Action]) -> None:
        """Carry out actions decided outside a driver call (tests, administrative moves)."""
        self.driver.apply(actions)

    # --- the driver's callbacks -----------------------------------------------------------------------
    @staticmethod
    def _deliver(ticket: Ticket, delivery: Delivery) -> None:
        fut: asyncio.Future[str] | Any = ticket.handle
        if fut is None or fut.done():
            return
        if isinstance(delivery, Released):
            fut.set_result(delivery.backend)
        else:
            fut.set_exception(ProxyError(delivery.status, delivery.message, delivery.type, code=delivery.code))

    @staticmethod
    def _on_error(what: str, exc: BaseException) -> None:
        log.error("policy.%s failed", what, exc_info=exc)
