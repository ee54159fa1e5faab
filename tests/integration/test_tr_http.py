"""The "tr" policy through HTTP (the real proxy app, the fake vLLM backend): a program the SCHEDULER paused
has its next request held with no byte sent to the engine and released when capacity frees; concurrent
requests under one program id; release while requests are queued gets a clear 410.

The KV capacity is tiny (16-token blocks) so a few short messages overflow it; the fake's tokenizer is
4 characters per token, so sizes can be reasoned about, but the assertions read the policy's own views
rather than hard-coding the estimator's numbers.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ThunderAgent.config import Config
from ThunderAgent.policy import make_policy
from ThunderAgent.policy.base import Phase, State
from tests.fakes.fake_vllm import FakeVLLM
from tests.fakes.proxy_kit import SpyPolicy, running_proxy


async def until(pred, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def body(pid: str, *contents: str) -> dict[str, Any]:
    """A growing conversation: user/assistant turns with these contents."""
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": c} for i, c in enumerate(contents)]
    return {"model": "tiny", "messages": msgs, "max_tokens": 4, "program_id": pid}


async def pause_a_by_the_scheduler(fake: FakeVLLM, c, proxy) -> None:
    """a and b run one step each (both ACTING); b's next, larger request overflows the backend, so the
    arrival check pauses the idle program a (smallest ACTING first) and b proceeds."""
    pol = proxy.policy
    assert (await c.post("/v1/chat/completions", json=body("a", "x" * 400))).status_code == 200
    assert (await c.post("/v1/chat/completions", json=body("b", "y" * 800))).status_code == 200
    assert pol.program("a").phase is Phase.ACTING and pol.program("b").phase is Phase.ACTING
    r = await c.post("/v1/chat/completions", json=body("b", "y" * 800, "ok", "z" * 1200))
    assert r.status_code == 200
    a = pol.program("a")
    assert (a.state, a.origin_backend) == (State.PAUSED, fake.url), a
    assert pol.program("b").state is State.ACTIVE


def tr_config(url: str) -> Config:
    # no periodic tick during the test: every decision comes from request events
    return Config(backends=(url,), router="tr", scheduler_interval=3600.0, low_watermark=0.9)


async def test_scheduler_paused_program_is_held_without_a_byte_until_room_frees(fake_vllm: FakeVLLM):
    fake_vllm.block_size, fake_vllm.num_gpu_blocks, fake_vllm.completion_tokens = 16, 50, 4  # 800 tokens
    cfg = tr_config(fake_vllm.url)
    spy = SpyPolicy(make_policy(cfg.policy_settings()))
    async with running_proxy(cfg, policy=spy) as (c, proxy):
        await until(lambda: spy.capacities.get(fake_vllm.url) == 800, what="capacity discovered")
        await pause_a_by_the_scheduler(fake_vllm, c, proxy)
        sent = len(fake_vllm.requests)
        task = asyncio.create_task(c.post("/v1/chat/completions", json=body("a", "x" * 400, "ok", "more")))
        await until(lambda: proxy.registry.get("a").held == 1, what="a's request held")
        await asyncio.sleep(0.05)  # give a wrongly forwarded request the chance to show up
        assert len(fake_vllm.requests) == sent, "a paused program's request reached the engine"
        assert not task.done()
        v = proxy.policy.program("a")
        assert (v.state, v.phase, v.inflight) == (State.PAUSED, Phase.REASONING, 1)
        assert (await c.get("/programs")).json()["a"]["state"] == "paused"
        health = (await c.get("/health")).json()
        assert health["paused_count"] == 1 and health["per_backend"][fake_vllm.url]["paused"] == 1
        # b is done: releasing it frees its capacity at once and a's held request goes through
        assert (await c.post("/programs/release", json={"program_id": "b"})).json()["released"] is True
        r = await asyncio.wait_for(task, 10)
        assert r.status_code == 200 and len(fake_vllm.requests) == sent + 1
        assert fake_vllm.requests[-1]["messages"][-1]["content"] == "more"
        v = proxy.policy.program("a")
        assert (v.state, v.backend, v.phase) == (State.ACTIVE, fake_vllm.url, Phase.ACTING)
        assert (proxy.policy.stats().pauses, proxy.policy.stats().resumes) == (1, 1)
        assert spy.balanced()
        proxy.policy.check_invariants()


async def test_concurrent_requests_of_one_program_are_counted_in_flight(fake_vllm: FakeVLLM):
    fake_vllm.delay = 0.3
    cfg = tr_config(fake_vllm.url)
    spy = SpyPolicy(make_policy(cfg.policy_settings()))
    async with running_proxy(cfg, policy=spy) as (c, proxy):
        await until(lambda: fake_vllm.url in spy.capacities, what="capacity discovered")
        url = "/v1/chat/completions"
        tasks = [asyncio.create_task(c.post(url, json=body("p", f"sub-agent {i}"))) for i in range(3)]
        pol = proxy.policy
        await until(lambda: (v := pol.program("p")) is not None and v.inflight == 3, what="3 in flight")
        assert proxy.policy.program("p").phase is Phase.REASONING
        b = proxy.policy.backends()[0]
        assert (b.program_count, b.reasoning_count) == (1, 1)  # one program, not three
        rs = await asyncio.gather(*tasks)
        assert [r.status_code for r in rs] == [200, 200, 200]
        v = proxy.policy.program("p")
        assert (v.inflight, v.phase, v.state) == (0, Phase.ACTING, State.ACTIVE)
        assert spy.arrivals["p"] == spy.ends["p"] == 3
        proxy.policy.check_invariants()


async def test_concurrent_held_requests_of_a_paused_program_are_released_together(fake_vllm: FakeVLLM):
    fake_vllm.block_size, fake_vllm.num_gpu_blocks, fake_vllm.completion_tokens = 16, 50, 4
    cfg = tr_config(fake_vllm.url)
    spy = SpyPolicy(make_policy(cfg.policy_settings()))
    async with running_proxy(cfg, policy=spy) as (c, proxy):
        await until(lambda: spy.capacities.get(fake_vllm.url) == 800, what="capacity discovered")
        await pause_a_by_the_scheduler(fake_vllm, c, proxy)
        sent = len(fake_vllm.requests)
        tasks = [
            asyncio.create_task(c.post("/v1/chat/completions", json=body("a", "x" * 400, "ok", f"tool {i}")))
            for i in range(2)
        ]
        await until(lambda: proxy.registry.get("a").held == 2, what="both held")
        assert len(fake_vllm.requests) == sent and proxy.policy.program("a").inflight == 2
        await c.post("/programs/release", json={"program_id": "b"})
        rs = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert [r.status_code for r in rs] == [200, 200]
        assert len(fake_vllm.requests) == sent + 2
        assert proxy.policy.program("a").inflight == 0 and spy.balanced()
        proxy.policy.check_invariants()


async def test_release_while_queued_fails_every_held_request_with_a_clear_410(fake_vllm: FakeVLLM):
    fake_vllm.block_size, fake_vllm.num_gpu_blocks, fake_vllm.completion_tokens = 16, 50, 4
    cfg = tr_config(fake_vllm.url)
    async with running_proxy(cfg) as (c, proxy):
        await until(lambda: proxy.backends[fake_vllm.url].capacity == 800, what="capacity discovered")
        await pause_a_by_the_scheduler(fake_vllm, c, proxy)
        sent = len(fake_vllm.requests)
        tasks = [
            asyncio.create_task(c.post("/v1/chat/completions", json=body("a", "x" * 400, "ok", f"q{i}")))
            for i in range(2)
        ]
        await until(lambda: proxy.registry.get("a").held == 2, what="both held")
        assert (await c.post("/programs/release", json={"program_id": "a"})).json() == {
            "program_id": "a",
            "released": True,
        }
        rs = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        for r in rs:
            assert r.status_code == 410
            msg = r.json()["error"]["message"]
            assert "'a'" in msg and "released" in msg and "queue" in msg, msg
        assert len(fake_vllm.requests) == sent  # nothing was forwarded anywhere
        assert "a" not in (await c.get("/programs")).json()
        assert proxy.policy.stats().rejects == 1
        proxy.policy.check_invariants()
