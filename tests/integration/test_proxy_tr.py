"""The proxy driving the real "tr" policy (ThunderAgent/policy/capacity.py) against the fake vLLM:
capacity from /metrics, a program held for lack of room and released by another program's release,
and state consistency on failures."""

from __future__ import annotations

import asyncio
import time

from tests.fakes.fake_vllm import FakeVLLM
from tests.fakes.proxy_kit import SpyPolicy, chat, running_proxy
from ThunderAgent.config import Config
from ThunderAgent.policy import make_policy
from ThunderAgent.policy.base import Phase, State


async def until(pred, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def tr_config(url: str, **kw) -> Config:
    return Config(backends=(url,), router="tr", scheduler_interval=3600.0, **kw)


async def test_tr_basic_flow_and_views(fake_vllm: FakeVLLM):
    c0 = tr_config(fake_vllm.url)
    spy = SpyPolicy(make_policy(c0.policy_settings()))
    async with running_proxy(c0, policy=spy) as (c, proxy):
        await until(lambda: fake_vllm.url in spy.capacities, what="capacity discovered")
        r = await c.post("/v1/chat/completions", json=chat(program_id="a"))
        assert r.status_code == 200
        r = await c.post("/v1/chat/completions", json=chat(program_id="a", stream=True))
        assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
        p = (await c.get("/programs")).json()["a"]
        assert (p["status"], p["state"], p["step_count"], p["backend"]) == (
            "acting",
            "active",
            2,
            fake_vllm.url,
        )
        h = (await c.get("/health")).json()
        assert h["router_mode"] == "tr" and h["scheduling_enabled"] is True and h["acting_count"] == 1
        assert "thunderagent_queue_length 0.0" in (await c.get("/metrics")).text
        assert (await c.post("/programs/release", json={"program_id": "a"})).json()["released"] is True
        assert spy.balanced()


async def test_tr_holds_a_program_until_room_frees(fake_vllm: FakeVLLM):
    fake_vllm.block_size, fake_vllm.num_gpu_blocks = 16, 24  # 384 tokens of KV
    c0 = tr_config(fake_vllm.url)
    spy = SpyPolicy(make_policy(c0.policy_settings()))
    async with running_proxy(c0, policy=spy) as (c, proxy):
        await until(lambda: spy.capacities.get(fake_vllm.url) == 384, what="capacity discovered")
        r = await c.post("/v1/chat/completions", json=chat("x" * 400, program_id="a"))
        assert r.status_code == 200
        task = asyncio.create_task(c.post("/v1/chat/completions", json=chat("y" * 400, program_id="b")))
        await until(
            lambda: proxy.registry.get("b") is not None and proxy.registry.get("b").held == 1, what="b held"
        )
        assert len(fake_vllm.requests) == 1  # nothing of b's reached the engine
        view = proxy.policy.program("b")
        assert view.state == State.PAUSED and view.phase == Phase.REASONING
        assert (await c.get("/health")).json()["paused_count"] == 1
        await c.post("/programs/release", json={"program_id": "a"})  # frees room: b is resumed
        r = await asyncio.wait_for(task, 5)
        assert r.status_code == 200 and len(fake_vllm.requests) == 2
        assert proxy.policy.program("b").state == State.ACTIVE
        assert spy.ends["b"] == 1


async def test_tr_release_while_held_rejects(fake_vllm: FakeVLLM):
    fake_vllm.block_size, fake_vllm.num_gpu_blocks = 16, 24
    c0 = tr_config(fake_vllm.url)
    async with running_proxy(c0) as (c, proxy):
        await until(lambda: proxy.backends[fake_vllm.url].capacity == 384, what="capacity discovered")
        await c.post("/v1/chat/completions", json=chat("x" * 400, program_id="a"))
        task = asyncio.create_task(c.post("/v1/chat/completions", json=chat("y" * 400, program_id="b")))
        await until(
            lambda: proxy.registry.get("b") is not None and proxy.registry.get("b").held == 1, what="b held"
        )
        assert (await c.post("/programs/release", json={"program_id": "b"})).json()["released"] is True
        r = await task
        assert r.status_code == 410 and r.json()["error"]["message"]
        assert "b" not in (await c.get("/programs")).json()


async def test_tr_failures_leave_program_acting(fake_vllm: FakeVLLM):
    c0 = tr_config(fake_vllm.url)
    spy = SpyPolicy(make_policy(c0.policy_settings()))
    async with running_proxy(c0, policy=spy) as (c, proxy):
        fake_vllm.fail_status = 500
        assert (await c.post("/v1/chat/completions", json=chat(program_id="p"))).status_code == 502
        fake_vllm.fail_status = None
        fake_vllm.die_after_chunks = 2
        r = await c.post("/v1/chat/completions", json=chat(program_id="p", stream=True))
        assert '"backend_error"' in r.text
        assert spy.balanced()
        v = proxy.policy.program("p")
        assert v.phase == Phase.ACTING and v.inflight == 0 and v.state == State.ACTIVE
