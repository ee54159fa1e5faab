"""The proxy's adapter of the policy driver, on an event loop with no HTTP: held requests are futures that the
policy's Resume/Reject resolve, a client that leaves is never delivered, a policy bug is logged, not raised."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from ThunderAgent.forward import ProxyError
from ThunderAgent.policy.base import Proceed, Reject, Resume, Wait
from ThunderAgent.scheduling import ProxyScheduler
from tests.unit.test_policy_driver import B, Clock, Scripted, ends


def make() -> tuple[Scripted, Clock, ProxyScheduler]:
    pol, clock = Scripted(), Clock()
    return pol, clock, ProxyScheduler(pol, clock, (B,))


def test_backends_are_added_and_an_admitted_request_has_its_backend_at_once():
    async def go() -> None:
        pol, clock, s = make()
        assert pol.calls[0] == ("add_backend", B)
        pol.admit = [Proceed(B)]
        t = s.arrive("p", 100)
        assert t.running and t.handle is None
        assert await s.backend(t) == B
        clock.t = 2.0
        s.end(t, 150)
        s.end(t, 150)
        assert ends(pol) == [("on_request_end", "p", 2.0, 150)]

    asyncio.run(go())


def test_a_held_request_waits_on_a_future_that_a_resume_resolves():
    async def go() -> None:
        pol, clock, s = make()
        pol.admit = [Wait()]
        t = s.arrive("p", 100)
        assert t.held and s.held("p") == 1
        waiting = asyncio.ensure_future(s.backend(t))
        await asyncio.sleep(0)
        assert not waiting.done()
        pol.next_actions = [Resume("p", B)]
        s.tick()
        assert await waiting == B and t.running and s.held("p") == 0

    asyncio.run(go())


def test_a_reject_and_a_release_fail_held_requests_with_the_status_the_client_sees():
    async def go() -> None:
        pol, clock, s = make()
        pol.admit = [Wait(), Wait()]
        a, b = s.arrive("p", 10), s.arrive("q", 10)
        pol.next_actions = [Reject("p", 409, "program is being migrated")]
        s.tick()
        with pytest.raises(ProxyError) as rejected:
            await s.backend(a)
        assert (rejected.value.status, rejected.value.type, rejected.value.code) == (409, "scheduler_rejected", 409)
        assert s.release("q", "released") is True
        with pytest.raises(ProxyError) as released:
            await s.backend(b)
        assert (released.value.status, released.value.code) == (410, "program_released")
        assert "was released while its request was held" in released.value.message
        assert ends(pol) == []  # neither ever ran

    asyncio.run(go())


def test_an_abandoned_held_request_is_ended_when_the_policy_resumes_it_and_never_delivered():
    async def go() -> None:
        pol, clock, s = make()
        pol.admit = [Wait()]
        t = s.arrive("p", 10)
        s.abandon(t)
        assert t.handle.cancelled() and ends(pol) == []
        pol.next_actions = [Resume("p", B)]
        clock.t = 4.0
        s.tick()
        assert ends(pol) == [("on_request_end", "p", 4.0, None)]

    asyncio.run(go())


def test_a_client_that_leaves_after_its_resume_ends_the_request_at_once():
    async def go() -> None:
        pol, clock, s = make()
        pol.admit = [Wait()]
        t = s.arrive("p", 10)
        pol.next_actions = [Resume("p", B)]
        s.tick()
        s.abandon(t)
        s.end(t)  # and any later exit path adds nothing
        assert len(ends(pol)) == 1

    asyncio.run(go())


def test_a_client_that_leaves_after_its_rejection_ends_nothing_and_leaves_no_unread_error():
    async def go() -> None:
        pol, clock, s = make()
        pol.admit = [Wait()]
        t = s.arrive("p", 10)
        pol.next_actions = [Reject("p", 429, "queue full")]
        s.tick()
        unread: list[dict] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: unread.append(ctx))
        s.abandon(t)
        assert ends(pol) == [] and t.handle.done()
        t.handle = None
        gc.collect()  # an unread future exception is reported when the future is collected
        assert unread == []

    asyncio.run(go())


def test_shutting_down_fails_every_held_request_with_503():
    async def go() -> None:
        pol, clock, s = make()
        pol.admit = [Wait(), Wait()]
        held = [s.arrive("p", 1), s.arrive("q", 1)]
        s.shut_down()
        for t in held:
            with pytest.raises(ProxyError) as e:
                await s.backend(t)
            assert (e.value.status, e.value.type) == (503, "unavailable")

    asyncio.run(go())


def test_a_failing_policy_call_is_logged_and_the_proxy_keeps_going(caplog):
    async def go() -> None:
        pol, clock, s = make()
        pol.fail_on = "tick"
        with caplog.at_level(logging.ERROR, logger="thunderagent"):
            s.tick()
        assert "policy.tick failed" in caplog.text
        pol.fail_on = None
        pol.admit = [Proceed(B)]
        assert s.arrive("p", 1).running

    asyncio.run(go())
