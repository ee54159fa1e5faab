"""Held requests (Wait/Resume/Reject), release while held, idle expiry, capacity discovery, health
hysteresis, scheduler ticks and token estimates, driven through the proxy app with test-double policies
and a fake clock where time matters."""

from __future__ import annotations

import asyncio
import time

from tests.fakes.fake_vllm import FakeVLLM, free_port_url
from tests.fakes.proxy_kit import HoldingPolicy, SpyPolicy, chat, running_proxy
from ThunderAgent.config import Config
from ThunderAgent.policy.base import Phase, Reject, Resume
from ThunderAgent.policy.passthrough import PassthroughPolicy


def cfg(*backends: str, **kw) -> Config:
    return Config(backends=backends, router="default", **kw)


async def until(pred, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def test_held_request_sends_nothing_until_resumed(fake_vllm: FakeVLLM):
    c0 = cfg(fake_vllm.url)
    spy = SpyPolicy(HoldingPolicy(c0, hold={"h"}))
    async with running_proxy(c0, policy=spy) as (c, proxy):
        task = asyncio.create_task(c.post("/v1/chat/completions", json=chat(program_id="h")))
        await until(
            lambda: proxy.registry.get("h") is not None and proxy.registry.get("h").held == 1, what="held"
        )
        assert fake_vllm.requests == [] and not task.done()
        assert (await c.get("/programs")).json()["h"]["waiting"] == 1
        proxy.scheduler.apply([Resume("h", fake_vllm.url)])
        r = await task
        assert r.status_code == 200 and len(fake_vllm.requests) == 1
        assert spy.balanced() and proxy.registry.get("h").held == 0


async def test_concurrent_held_requests_all_resumed(fake_vllm: FakeVLLM):
    c0 = cfg(fake_vllm.url)
    spy = SpyPolicy(HoldingPolicy(c0, hold={"h"}))
    async with running_proxy(c0, policy=spy) as (c, proxy):
        tasks = [
            asyncio.create_task(c.post("/v1/chat/completions", json=chat(program_id="h"))) for _ in range(3)
        ]
        await until(
            lambda: proxy.registry.get("h") is not None and proxy.registry.get("h").held == 3, what="3 held"
        )
        proxy.scheduler.apply([Resume("h", fake_vllm.url)])
        assert [r.status_code for r in await asyncio.gather(*tasks)] == [200, 200, 200]
        assert spy.ends["h"] == 3 and proxy.policy.program("h").phase == Phase.ACTING


async def test_reject_fails_held_request(fake_vllm: FakeVLLM):
    c0 = cfg(fake_vllm.url)
    async with running_proxy(c0, policy=HoldingPolicy(c0, hold={"h"})) as (c, proxy):
        task = asyncio.create_task(c.post("/v1/chat/completions", json=chat(program_id="h")))
        await until(lambda: proxy.registry.get("h") is not None and proxy.registry.get("h").held == 1)
        proxy.scheduler.apply([Reject("h", 409, "program is being migrated")])
        r = await task
        assert r.status_code == 409 and r.json()["error"]["message"] == "program is being migrated"
        assert fake_vllm.requests == []


async def test_release_while_held_gives_410(fake_vllm: FakeVLLM):
    c0 = cfg(fake_vllm.url)
    async with running_proxy(c0, policy=HoldingPolicy(c0, hold={"h"})) as (c, proxy):
        task = asyncio.create_task(c.post("/v1/chat/completions", json=chat(program_id="h")))
        await until(lambda: proxy.registry.get("h") is not None and proxy.registry.get("h").held == 1)
        rel = await c.post("/programs/release", json={"program_id": "h"})
        assert rel.json() == {"program_id": "h", "released": True}
        r = await task
        assert r.status_code == 410 and r.json()["error"]["code"] == "program_released"
        assert fake_vllm.requests == [] and "h" not in proxy.registry


async def test_abandoned_held_request_is_ended_when_resumed(fake_vllm: FakeVLLM):
    c0 = cfg(fake_vllm.url)
    spy = SpyPolicy(HoldingPolicy(c0, hold={"h"}))
    async with running_proxy(c0, policy=spy) as (c, proxy):
        task = asyncio.create_task(c.post("/v1/chat/completions", json=chat(program_id="h")))
        await until(lambda: proxy.registry.get("h") is not None and proxy.registry.get("h").held == 1)
        task.cancel()  # the client gives up while held
        await asyncio.gather(task, return_exceptions=True)
        assert proxy.registry.get("h").held == 0 and spy.ends["h"] == 0
        assert proxy.policy.program("h").inflight == 1  # the policy still counts the request...
        proxy.scheduler.apply([Resume("h", fake_vllm.url)])
        assert spy.ends["h"] == 1 and proxy.policy.program("h").inflight == 0  # ...until it is resumed
        assert fake_vllm.requests == []


async def test_scheduler_ticks_only_with_tr(fake_vllm: FakeVLLM):
    for router, expect_ticks in (("tr", True), ("default", False)):
        c0 = Config(backends=(fake_vllm.url,), router=router, scheduler_interval=0.02)
        spy = SpyPolicy(PassthroughPolicy(c0.policy_settings()))
        async with running_proxy(c0, policy=spy) as (c, proxy):
            if expect_ticks:
                await until(lambda: spy.ticks >= 3, what="3 ticks")
            else:
                await asyncio.sleep(0.1)  # a negative check: give the loop a chance to tick
                assert spy.ticks == 0


async def test_tick_actions_are_applied(fake_vllm: FakeVLLM):
    c0 = Config(backends=(fake_vllm.url,), router="tr", scheduler_interval=0.02)

    class ResumeOnTick(HoldingPolicy):
        def tick(self, now):
            return [Resume("h", fake_vllm.url)] if self.hold else []

    pol = ResumeOnTick(c0, hold={"h"})
    async with running_proxy(c0, policy=pol) as (c, proxy):
        r = await c.post("/v1/chat/completions", json=chat(program_id="h"))
        assert r.status_code == 200


async def test_idle_expiry_with_fake_clock(fake_vllm: FakeVLLM):
    t = [1000.0]
    calls = []

    class Rc:
        def schedule(self, pid, res):
            calls.append((pid, res))

    c0 = cfg(fake_vllm.url, idle_ttl=100.0)
    async with running_proxy(c0, clock=lambda: t[0], reclaimer=Rc()) as (c, proxy):
        await c.post("/v1/chat/completions", json=chat(program_id="old", docker_ids=["box"]))
        t[0] += 60
        await c.post("/v1/chat/completions", json=chat(program_id="new"))
        t[0] += 50  # old idle 110 s, new idle 50 s
        assert proxy.expire_idle() == ["old"]
        assert set((await c.get("/programs")).json()) == {"new"}
        assert proxy.policy.program("old") is None
        assert calls == [("old", {"docker_ids": ["box"]})]
        assert "thunderagent_programs_expired_total 1.0" in (await c.get("/metrics")).text
        # a busy program never expires
        proxy.registry.get("new").inflight = 1
        t[0] += 1000
        assert proxy.expire_idle() == []
        proxy.registry.get("new").inflight = 0
        assert proxy.expire_idle() == ["new"]


async def test_max_programs_refuses_new_programs_never_evicts(fake_vllm: FakeVLLM):
    t = [0.0]
    async with running_proxy(cfg(fake_vllm.url, idle_ttl=0, max_programs=2), clock=lambda: t[0]) as (
        c,
        proxy,
    ):
        codes = []
        for pid in ("a", "b", "c"):
            t[0] += 1
            codes.append((await c.post("/v1/chat/completions", json=chat(program_id=pid))).status_code)
        assert codes == [200, 200, 429]
        assert proxy.expire_idle() == []
        assert set(p.program_id for p in proxy.policy.programs()) == {"a", "b"}
        assert (await c.post("/programs/release", json={"program_id": "a"})).status_code == 200
        assert (await c.post("/v1/chat/completions", json=chat(program_id="c"))).status_code == 200


async def test_capacity_discovery_retries_until_known(fake_vllm: FakeVLLM):
    fake_vllm.metrics_status = 503
    fake_vllm.num_gpu_blocks = 24
    c0 = cfg(fake_vllm.url)
    spy = SpyPolicy(PassthroughPolicy(c0.policy_settings()))
    async with running_proxy(c0, policy=spy) as (c, proxy):
        assert await proxy.monitor.discover_capacity_once() is False
        assert fake_vllm.url not in spy.capacities
        fake_vllm.metrics_status = 200
        await until(
            lambda: spy.capacities.get(fake_vllm.url) == 128 * 24,
            timeout=10,
            what="capacity via the lifespan loop",
        )
        assert (await c.get("/health")).json()["per_backend"][fake_vllm.url]["capacity"] == 3072


async def test_health_hysteresis_from_scrapes(fake_vllm: FakeVLLM):
    c0 = cfg(fake_vllm.url, metrics=True, metrics_interval=3600)
    spy = SpyPolicy(PassthroughPolicy(c0.policy_settings()))
    async with running_proxy(c0, policy=spy) as (c, proxy):
        fake_vllm.metrics_status = 500  # a failed scrape alone is not a failure: /health still answers
        await proxy.monitor.scrape_once()
        await proxy.monitor.scrape_once()
        await proxy.monitor.scrape_once()
        assert spy.health == []
        fake_vllm.health_status = 500  # now the backend is down
        await proxy.monitor.scrape_once()
        await proxy.monitor.scrape_once()
        assert spy.health == []  # two failures are not enough
        await proxy.monitor.scrape_once()
        assert spy.health == [(fake_vllm.url, False)]
        assert (await c.get("/metrics?format=json")).json()["backends"][fake_vllm.url]["healthy"] is False
        fake_vllm.metrics_status = 200
        fake_vllm.health_status = 200
        await proxy.monitor.scrape_once()
        assert spy.health == [(fake_vllm.url, False)]
        await proxy.monitor.scrape_once()
        assert spy.health == [(fake_vllm.url, False), (fake_vllm.url, True)]


async def test_passive_health_moves_new_programs_off_a_dead_backend(fake_vllm: FakeVLLM):
    dead = free_port_url()
    async with running_proxy(cfg(dead, fake_vllm.url)) as (c, proxy):
        # "a" lands on the first (dead) backend and fails there; after 3 failures it is unhealthy
        for _ in range(3):
            assert (await c.post("/v1/chat/completions", json=chat(program_id="a"))).status_code == 502
        assert (await c.get("/health")).json()["per_backend"][dead]["healthy"] is False
        # ...so the next new program goes to the healthy one even though it is not the least loaded
        await c.post("/v1/chat/completions", json=chat(program_id="x"))
        await c.post("/programs/release", json={"program_id": "a"})
        r = await c.post("/v1/chat/completions", json=chat(program_id="b"))
        assert r.status_code == 200
        assert (await c.get("/programs")).json()["b"]["backend"] == fake_vllm.url


async def test_default_router_sticky_least_loaded_live_programs(fake_vllm_factory):
    f1, f2 = fake_vllm_factory(), fake_vllm_factory()
    async with running_proxy(cfg(f1.url, f2.url)) as (c, proxy):
        for pid in ("a", "b", "c"):
            await c.post("/v1/chat/completions", json=chat(program_id=pid))
        progs = (await c.get("/programs")).json()
        assert [progs[p]["backend"] for p in "abc"] == [f1.url, f2.url, f1.url]
        for _ in range(2):  # sticky
            await c.post("/v1/chat/completions", json=chat(program_id="b"))
        assert (await c.get("/programs")).json()["b"]["backend"] == f2.url
        await c.post("/programs/release", json={"program_id": "a"})
        await c.post("/programs/release", json={"program_id": "c"})
        await c.post("/v1/chat/completions", json=chat(program_id="d"))  # f1 has 0 live programs now
        assert (await c.get("/programs")).json()["d"]["backend"] == f1.url
        assert len(f1.requests) == 3 and len(f2.requests) == 3


async def test_token_estimate_is_last_exact_total_plus_new_messages(fake_vllm: FakeVLLM):
    c0 = cfg(fake_vllm.url)
    spy = SpyPolicy(PassthroughPolicy(c0.policy_settings()))
    async with running_proxy(c0, policy=spy) as (c, proxy):
        msgs = [{"role": "system", "content": "s" * 400}, {"role": "user", "content": "u" * 400}]
        r1 = await c.post("/v1/chat/completions", json={"model": "tiny", "messages": msgs, "program_id": "p"})
        total1 = r1.json()["usage"]["total_tokens"]
        msgs2 = msgs + [{"role": "assistant", "content": "a" * 40}, {"role": "user", "content": "o" * 800}]
        await c.post("/v1/chat/completions", json={"model": "tiny", "messages": msgs2, "program_id": "p"})
        first, second = spy.arrival_tokens[0][1], spy.arrival_tokens[1][1]
        assert 150 <= first <= 300  # 800 chars of content, not the whole JSON
        ratio = 800 / r1.json()["usage"]["prompt_tokens"]  # learned from the first response
        assert second == total1 + int(800 / ratio) + 4  # the assistant echo is inside total1 already
        assert abs(second - (total1 + 800 / 4 + 4)) < 60  # and close to the fake tokenizer's truth


async def test_streaming_progress_reported_every_20_events(fake_vllm: FakeVLLM):
    fake_vllm.completion_tokens = 45
    c0 = cfg(fake_vllm.url)
    spy = SpyPolicy(PassthroughPolicy(c0.policy_settings()))
    async with running_proxy(c0, policy=spy) as (c, proxy):
        await c.post("/v1/chat/completions", json={**chat(program_id="p", stream=True), "max_tokens": 100})
        # 46 content events + the usage chunk = 47 data events -> two progress reports of 20
        assert spy.progress["p"] == 40


async def test_held_time_is_profiled_as_pause(fake_vllm: FakeVLLM, tmp_path):
    from ThunderAgent.records import read_step_records

    c0 = cfg(fake_vllm.url, profile=True, profile_dir=str(tmp_path))
    pol = HoldingPolicy(c0, hold={"h"})
    async with running_proxy(c0, policy=pol) as (c, proxy):
        task = asyncio.create_task(c.post("/v1/chat/completions", json=chat(program_id="h")))
        await until(lambda: proxy.registry.get("h") is not None and proxy.registry.get("h").held == 1)
        t_held = time.monotonic()
        await until(
            lambda: time.monotonic() - t_held >= 0.1, what="0.1 s held"
        )  # hold it for a measurable time
        pol.hold.clear()
        proxy.scheduler.apply([Resume("h", fake_vllm.url)])
        assert (await task).status_code == 200
        await c.post("/v1/chat/completions", json=chat(program_id="h"))
        prof = (await c.get("/profiles/h")).json()
        assert prof["step_count"] == 2 and prof["avg_pause_s"] >= 0.05  # (>= 0.1 + ~0) / 2
    recs = read_step_records(tmp_path / "step_records.jsonl")
    assert [r.step for r in recs] == [1, 2] and recs[0].pause_s >= 0.1 and recs[1].pause_s < 0.1
    assert all(r.status == "ok" and r.prompt_tokens and r.backend == fake_vllm.url for r in recs)
    rows = (tmp_path / "step_profiles.csv").read_text().splitlines()
    assert rows[0] == "program_id,step_id,prefill_s,decode_s,pause_s,tool_call_s,kv_hit_rate,completed_at"
    assert len(rows) == 3 and rows[1].startswith("h,1,") and float(rows[1].split(",")[4]) >= 0.1


async def test_concurrent_requests_same_program_reasoning_until_last_ends(fake_vllm: FakeVLLM):
    fake_vllm.delay = 0.3
    c0 = cfg(fake_vllm.url)
    spy = SpyPolicy(PassthroughPolicy(c0.policy_settings()))
    async with running_proxy(c0, policy=spy) as (c, proxy):
        tasks = [asyncio.create_task(c.post("/v1/chat/completions", json=chat())) for _ in range(10)]
        await until(lambda: proxy.registry.get("default") is not None and proxy.registry.get("default").inflight == 10)
        p = (await c.get("/programs")).json()["default"]
        assert (p["status"], p["inflight"], p["step_count"]) == ("reasoning", 10, 10)
        assert all(r.status_code == 200 for r in await asyncio.gather(*tasks))
        p = (await c.get("/programs")).json()["default"]
        assert (p["status"], p["inflight"]) == ("acting", 0)
        assert spy.ends["default"] == 10
