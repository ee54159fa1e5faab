"""The policy driver keeps the driving contract: exactly one on_request_end per running request, held requests
released or failed only through actions, abandoned ones never delivered, every call on the injected clock."""

from __future__ import annotations

import pytest

from ThunderAgent.policy import PolicySettings, make_policy
from ThunderAgent.policy.base import (
    Action,
    Admission,
    BackendView,
    Policy,
    PolicyStats,
    Proceed,
    ProgramView,
    Reject,
    Resume,
    Wait,
)
from ThunderAgent.policy.driver import Delivery, Failed, PolicyDriver, Released, Ticket, TicketState

B = "http://b1"


class Scripted(Policy):
    """A policy that answers what the test tells it to and records every call with its `now`."""

    name = "scripted"

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.admit: list[Admission] = []
        self.next_actions: list[Action] = []
        self.fail_on: str | None = None

    def _record(self, *call) -> list[Action]:
        self.calls.append(call)
        if self.fail_on == call[0]:
            raise RuntimeError(f"{call[0]} broke")
        out, self.next_actions = self.next_actions, []
        return out

    def add_backend(self, url: str) -> None:
        self.calls.append(("add_backend", url))

    def set_capacity(self, url, tokens, now):
        return self._record("set_capacity", url, tokens, now)

    def set_healthy(self, url, healthy, now):
        return self._record("set_healthy", url, healthy, now)

    def on_arrival(self, program_id, tokens, now):
        self.calls.append(("on_arrival", program_id, tokens, now))
        return self.admit.pop(0)

    def on_request_end(self, program_id, now, total_tokens):
        return self._record("on_request_end", program_id, now, total_tokens)

    def release(self, program_id, now):
        return True, self._record("release", program_id, now)

    def tick(self, now):
        return self._record("tick", now)

    def program(self, program_id) -> ProgramView | None:
        return None

    def programs(self) -> list[ProgramView]:
        return []

    def backends(self) -> list[BackendView]:
        return []

    def stats(self) -> PolicyStats:
        return PolicyStats(0, 0, 0, 0, 0, 0)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def make(on_error=None):
    pol, clock, got = Scripted(), Clock(), []

    def deliver(ticket: Ticket, d: Delivery) -> None:
        got.append((ticket.handle, d))

    return pol, clock, got, PolicyDriver(pol, clock, deliver, on_error=on_error)


def ends(pol: Scripted) -> list[tuple]:
    return [c for c in pol.calls if c[0] == "on_request_end"]


def test_a_proceeding_request_runs_and_ends_exactly_once_on_the_clock():
    pol, clock, got, drv = make()
    pol.admit = [Proceed(B)]
    clock.t = 3.0
    t = drv.arrive("p", 500, handle="h")
    assert t.running and t.backend == B and t.arrival == 3.0
    clock.t = 7.5
    drv.end(t, 900)
    drv.end(t, 900)  # every exit path may call it: still once
    assert ends(pol) == [("on_request_end", "p", 7.5, 900)]
    assert t.state is TicketState.ENDED and got == []


def test_held_requests_go_in_arrival_order_when_the_policy_resumes_their_program():
    pol, clock, got, drv = make()
    pol.admit = [Wait(), Wait()]
    a, b = drv.arrive("p", 10, "a"), drv.arrive("p", 20, "b")
    assert a.held and b.held and drv.held("p") == [a, b]
    pol.next_actions = [Resume("p", B)]
    clock.t = 5.0
    drv.tick()
    assert got == [("a", Released(B)), ("b", Released(B))]
    assert a.running and b.running and drv.held("p") == []
    assert ("tick", 5.0) in pol.calls


def test_a_held_request_whose_client_left_is_ended_for_the_policy_when_resumed_never_delivered():
    pol, clock, got, drv = make()
    pol.admit = [Wait(), Wait()]
    gone, stays = drv.arrive("p", 10, "gone"), drv.arrive("p", 10, "stays")
    drv.end(gone)  # client disconnected while held: the policy still counts it pending
    assert ends(pol) == []
    pol.next_actions = [Resume("p", B)]
    clock.t = 2.0
    drv.tick()
    assert got == [("stays", Released(B))]
    assert ends(pol) == [("on_request_end", "p", 2.0, None)]  # once, by the driver
    drv.end(gone)
    assert len(ends(pol)) == 1


def test_reject_fails_held_requests_and_they_never_end_in_the_policy():
    pol, clock, got, drv = make()
    pol.admit = [Wait()]
    t = drv.arrive("p", 10, "h")
    pol.next_actions = [Reject("p", 410, "released")]
    drv.tick()
    assert got == [("h", Failed(410, "released", code=410))]
    assert t.state is TicketState.REJECTED
    drv.end(t)
    assert ends(pol) == []


def test_release_and_shutdown_fail_what_is_held():
    pol, clock, got, drv = make()
    pol.admit = [Wait(), Wait()]
    drv.arrive("p", 10, "p1")
    drv.arrive("q", 10, "q1")
    assert drv.release("p") is True
    drv.fail_held("p", Failed(410, "program p was released", "program_released"))
    drv.fail_all_held(Failed(503, "shutting down", "unavailable"))
    assert got == [("p1", Failed(410, "program p was released", "program_released")),
                   ("q1", Failed(503, "shutting down", "unavailable"))]


def test_policy_errors_go_to_on_error_when_given_and_propagate_otherwise():
    seen: list[str] = []
    pol, _clock, _got, drv = make(on_error=lambda what, e: seen.append(f"{what}: {e}"))
    pol.fail_on = "tick"
    drv.tick()
    assert seen == ["tick: tick broke"]
    pol2, _c, _g, strict = make()
    pol2.fail_on = "tick"
    with pytest.raises(RuntimeError, match="tick broke"):
        strict.tick()


def test_arrival_errors_always_reach_the_caller():
    pol, _clock, _got, drv = make(on_error=lambda what, e: None)
    with pytest.raises(IndexError):  # the scripted policy has no answer left
        drv.arrive("p", 1)
    assert drv.held("p") == []


def test_engine_metrics_reach_only_a_policy_that_learns_from_them():
    fixed = make_policy(PolicySettings(backends=(B,), tr_mode="fixed"))
    learning = make_policy(PolicySettings(backends=(B,), tr_mode="cost-aware"))
    for pol, wants in ((fixed, False), (learning, True)):
        drv = PolicyDriver(pol, lambda: 1.0, lambda t, d: None)
        assert drv.learns_from_engine is wants
        drv.set_capacity(B, 10_000)
        drv.observe_engine(B, {"vllm:prompt_tokens_total": 5.0})
        assert bool(pol.report(B)) is wants


def test_the_real_tr_policy_through_the_driver_holds_and_resumes_a_program():
    pol = make_policy(PolicySettings(backends=(B,), tr_mode="fixed", low_watermark=0.9))
    clock, got = Clock(), []
    drv = PolicyDriver(pol, clock, lambda t, d: got.append((t.program_id, d)))
    drv.set_capacity(B, 10_000)
    a = drv.arrive("a", 8_000)
    assert a.running
    b = drv.arrive("b", 5_000)
    assert b.held
    clock.t = 1.0
    drv.end(a, 8_100)
    drv.release("a")
    assert got == [("b", Released(B))] and b.running
