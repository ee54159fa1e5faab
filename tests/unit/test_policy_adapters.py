"""The proxy and the simulator drive the policy through the same driver: fed the same scripted events, their
adapters (ThunderAgent/scheduling.py ProxyScheduler, harness/sim/des/adapter.py DesPolicy) make the policy the
same calls at the same times and carry out the same decisions — which request runs, which is held, when a held
one is resumed and on which backend, which fails with which status.

The script is generated in lockstep from the decisions (a held program cannot finish; only an idle program
makes a new request or is released), over a fake clock, for both tr modes and several seeds."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from harness.sim.des import BACKEND, DesPolicy
from ThunderAgent.config import Config
from ThunderAgent.forward import ProxyError
from ThunderAgent.policy import make_policy
from ThunderAgent.policy.base import Policy
from ThunderAgent.policy.driver import Failed
from ThunderAgent.scheduling import ProxyScheduler
from tests.unit.test_policy_driver import Clock

CAPACITY = 40_000
PROGRAMS = 12


class Recording(Policy):
    """A real policy whose every call (name, arguments incl. `now`) and every answer is logged."""

    def __init__(self, inner: Policy) -> None:
        self.inner, self.log = inner, []
        self.name, self.mode, self.learns_from_engine = inner.name, inner.mode, inner.learns_from_engine

    def _call(self, name: str, *args: Any) -> Any:
        out = getattr(self.inner, name)(*args)
        self.log.append((name, args, out))
        return out

    def add_backend(self, url):
        return self._call("add_backend", url)

    def set_capacity(self, url, tokens, now):
        return self._call("set_capacity", url, tokens, now)

    def set_healthy(self, url, healthy, now):
        return self._call("set_healthy", url, healthy, now)

    def observe_engine(self, url, metrics, now):
        return self._call("observe_engine", url, dict(metrics), now)

    def on_arrival(self, program_id, tokens, now):
        return self._call("on_arrival", program_id, tokens, now)

    def on_request_end(self, program_id, now, total_tokens):
        return self._call("on_request_end", program_id, now, total_tokens)

    def release(self, program_id, now):
        return self._call("release", program_id, now)

    def tick(self, now):
        return self._call("tick", now)

    def program(self, program_id):
        return self.inner.program(program_id)

    def programs(self):
        return self.inner.programs()

    def backends(self):
        return self.inner.backends()

    def stats(self):
        return self.inner.stats()

    def report(self, url):
        return self.inner.report(url)


def engine_metrics(step: int) -> dict[str, float]:
    """Cumulative counters as a /metrics scrape would read them (prefill cheap early, dearer later)."""
    return {
        "vllm:prompt_tokens_total": 9_000.0 * step,
        "vllm:prefix_cache_hits_total": 4_000.0 * step,
        "vllm:request_prefill_time_seconds_sum": 0.02 * step * step,
        "vllm:request_prefill_time_seconds_count": 20.0 * step,
        "vllm:num_preemptions_total": float(step // 3),
        "vllm:num_requests_running": 8.0,
    }


async def run_both(mode: str, seed: int, events: int = 400) -> tuple[list, list, list, list]:
    settings = Config(router="tr", backends=(BACKEND,), tr_mode=mode, low_watermark=0.9,
                      aging_bound=30.0).policy_settings()
    clock = Clock()
    proxy_pol, des_pol = Recording(make_policy(settings)), Recording(make_policy(settings))

    proxy_seen: list[tuple] = []  # (time, program, backend or failure status) the proxy's clients saw
    tickets: dict[str, Any] = {}

    class Watched(ProxyScheduler):
        """The proxy's adapter, its deliveries noted in the order the driver makes them."""

        @staticmethod
        def _deliver(ticket, delivery) -> None:
            ProxyScheduler._deliver(ticket, delivery)
            fut = ticket.handle
            err = fut.exception() if fut.done() else None
            assert fut.done() and (err is None) is (not isinstance(delivery, Failed))
            proxy_seen.append((clock.t, ticket.program_id, fut.result() if err is None else err.status))

    proxy = Watched(proxy_pol, clock, (BACKEND,))
    proxy.set_capacity(BACKEND, CAPACITY)

    des_seen: list[tuple] = []
    des = DesPolicy(des_pol, BACKEND, clock, lambda h: des_seen.append((clock.t, h, BACKEND)),
                    lambda h, f: des_seen.append((clock.t, h, f.status)))
    des.start(CAPACITY)

    rnd = random.Random(seed)
    state = {f"p{i}": "idle" for i in range(PROGRAMS)}  # idle | running | held, from the DES side's decisions
    size = {pid: rnd.randint(1_000, 6_000) for pid in state}
    scrape = done = 0
    for _ in range(events):
        clock.t += rnd.choice((0.1, 0.5, 1.0, 3.0))
        kind = rnd.random()
        idle = [p for p, s in state.items() if s == "idle"]
        running = [p for p, s in state.items() if s == "running"]
        if kind < 0.40 and idle:
            pid = rnd.choice(idle)
            go = des.arrive(pid, size[pid], handle=pid)
            tickets[pid] = proxy.arrive(pid, size[pid])
            assert tickets[pid].running is go, f"{pid} at {clock.t}: the adapters disagree on admission"
            state[pid] = "running" if go else "held"
        elif kind < 0.75 and running:
            pid = rnd.choice(running)
            size[pid] += rnd.randint(100, 3_000)  # output + observation: the next prompt is longer
            des.finish(pid, size[pid])
            proxy.end(tickets[pid], size[pid])
            state[pid] = "idle"
        elif kind < 0.82 and idle:
            pid = rnd.choice(idle)  # the program ends; a fresh one takes its id later
            des.release(pid)
            proxy.release(pid, "released")
            size[pid] = rnd.randint(1_000, 6_000)
        elif kind < 0.92:
            des.tick()
            proxy.tick()
        else:
            scrape += 1
            des.observe(engine_metrics(scrape))
            proxy.observe_engine(BACKEND, engine_metrics(scrape))
        for _t, pid, what in des_seen[done:]:  # held programs resumed (running) or failed (idle again)
            state[pid] = "running" if what == BACKEND else "idle"
        done = len(des_seen)
    return proxy_pol.log, des_pol.log, proxy_seen, des_seen


@pytest.mark.parametrize("mode", ["fixed", "cost-aware"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_proxy_and_simulator_adapters_make_the_same_policy_calls_and_decisions(mode: str, seed: int) -> None:
    proxy_log, des_log, proxy_seen, des_seen = asyncio.run(run_both(mode, seed))
    arrivals = [c for c in des_log if c[0] == "on_arrival"]
    assert len(arrivals) > 100 and des_seen, "the script exercised too little to compare"
    assert any(type(c[2]).__name__ == "Wait" for c in arrivals), "no request was ever held"
    assert proxy_log == des_log
    assert proxy_seen == des_seen


def test_a_reject_reaches_both_adapters_as_the_same_failure() -> None:
    """The policy rejects a held request (here: an administrative Reject): the proxy's client gets the
    status, the simulator records the same status for the program's call."""
    from ThunderAgent.policy.base import Reject

    async def go() -> tuple[list, list]:
        settings = Config(router="tr", backends=(BACKEND,), tr_mode="fixed").policy_settings()
        clock = Clock()
        proxy = ProxyScheduler(make_policy(settings), clock)
        proxy.set_capacity(BACKEND, 5_000)
        des_seen: list = []
        des = DesPolicy(make_policy(settings), BACKEND, clock, des_seen.append,
                        lambda h, f: des_seen.append((h, f)))
        des.start(5_000)
        for pid in ("a", "b"):
            proxy.arrive(pid, 4_000)
            des.arrive(pid, 4_000, handle=pid)
        held = proxy.driver.held("b")[0]
        proxy.apply([Reject("b", 409, "moved")])
        des.driver.apply([Reject("b", 409, "moved")])
        with pytest.raises(ProxyError) as e:
            await proxy.backend(held)
        return [e.value.status], [f.status for _h, f in des_seen if isinstance(f, Failed)]

    proxy_statuses, des_statuses = asyncio.run(go())
    assert proxy_statuses == des_statuses == [409]
