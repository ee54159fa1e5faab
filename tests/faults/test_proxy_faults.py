"""Faults around the proxy, each ending with "nothing was lost" (tests/faults/kit.py:assert_settled): every
client got a response or a clear error, in-flight and held counts are back to 0, no program is stuck
REASONING, the policy ended each forwarded request exactly once, and /programs agrees with the policy.

Backend faults: killed (SIGKILL) mid-stream and restarted on the same port, slow (read timeout -> 504),
returning errors, one of two backends unhealthy. Client faults: disconnects mid-stream under load. Races:
release against held (queued) and running requests."""

from __future__ import annotations

import asyncio
import random
from typing import Any, Callable

import httpx
import pytest

from ThunderAgent.config import Config
from tests.fakes.fake_vllm import FakeVLLM
from tests.fakes.proxy_kit import chat
from tests.fakes.server import wait_until
from tests.faults.kit import BackendProcess, assert_settled, is_openai_error, snapshot, sse_error, start_proxy


async def _stream(c: httpx.AsyncClient, url: str, body: dict[str, Any], started: asyncio.Semaphore | None = None) -> tuple[int, str]:
    """POST a streaming request and read it to the end; releases `started` at the first body bytes."""
    async with c.stream("POST", url + "/v1/chat/completions", json=body) as r:
        chunks = []
        async for chunk in r.aiter_bytes():
            if started is not None and not chunks:
                started.release()
            chunks.append(chunk)
        return r.status_code, b"".join(chunks).decode()


def _ok_or_clear_error(status: int, text: str) -> str:
    """Classify one client outcome; fail the test on anything a client could not act on."""
    if status == 200 and sse_error(text) is None:
        return "ok"
    if status == 200:
        assert sse_error(text)["message"], text
        return "stream_error"
    assert status in (400, 404, 409, 410, 429, 499, 502, 503, 504), (status, text)
    r = httpx.Response(status, content=text.encode())
    assert is_openai_error(r), (status, text)
    return f"http_{status}"


@pytest.mark.slow
@pytest.mark.parametrize("router", ["default", "tr"])
async def test_backend_killed_mid_stream_and_restarted(router: str) -> None:
    backend = BackendProcess(token_delay=0.05, completion_tokens=400).start()
    cfg = Config(backends=(backend.url,), router=router, scheduler_interval=0.1, proxy_read_timeout=30)
    srv, proxy, spy = start_proxy(cfg)
    try:
        if router == "tr":
            wait_until(lambda: srv.call(lambda: proxy.backends[backend.url].capacity) is not None, what="capacity known")
        async with httpx.AsyncClient(timeout=30) as c:
            started = asyncio.Semaphore(0)
            streams = [asyncio.create_task(_stream(c, srv.url, chat(program_id=f"p{i}", stream=True), started)) for i in range(8)]
            for _ in range(8):  # every client has received part of its stream
                await asyncio.wait_for(started.acquire(), 20)
            backend.kill()
            outcomes = [_ok_or_clear_error(*r) for r in await asyncio.gather(*streams)]
            assert outcomes == ["stream_error"] * 8, outcomes
            await asyncio.to_thread(assert_settled, srv, proxy, spy)

            # while it is down: known and new programs get a prompt, clear error (none hangs)
            for pid in ("p0", "fresh-while-down"):
                r = await c.post(srv.url + "/v1/chat/completions", json=chat(program_id=pid), timeout=10)
                assert r.status_code in (502, 503) and is_openai_error(r), r.text

            backend.start()  # same port, new process
            rs = await asyncio.gather(*(c.post(srv.url + "/v1/chat/completions", json=chat(program_id=f"p{i}")) for i in range(8)))
            # the health tracker may need a couple of successes; every client still gets an answer, and
            # within a few retries every program is served again
            for i, r in enumerate(rs):
                for _ in range(5):
                    if r.status_code == 200:
                        break
                    assert is_openai_error(r), r.text
                    r = await c.post(srv.url + "/v1/chat/completions", json=chat(program_id=f"p{i}"))
                assert r.status_code == 200, r.text
            r = await c.post(srv.url + "/v1/chat/completions", json=chat(program_id="fresh-after"))
            assert r.status_code == 200, r.text
        await asyncio.to_thread(assert_settled, srv, proxy, spy)
    finally:
        srv.stop()
        backend.stop()


async def test_slow_backend_read_timeout_under_load(fake_vllm: FakeVLLM) -> None:
    fake_vllm.delay = 3.0
    srv, proxy, spy = start_proxy(Config(backends=(fake_vllm.url,), router="default", proxy_read_timeout=0.3))
    try:
        async with httpx.AsyncClient(timeout=10) as c:
            bodies = [chat(program_id=f"s{i}", stream=bool(i % 2)) for i in range(16)]
            rs = await asyncio.gather(*(c.post(srv.url + "/v1/chat/completions", json=b) for b in bodies))
            assert [r.status_code for r in rs] == [504] * 16, [r.text for r in rs]
            assert all(is_openai_error(r) and "timed out" in r.json()["error"]["message"] for r in rs)
            await asyncio.to_thread(assert_settled, srv, proxy, spy)
            fake_vllm.delay = 0.0
            rs = await asyncio.gather(*(c.post(srv.url + "/v1/chat/completions", json=b) for b in bodies))
            assert [r.status_code for r in rs] == [200] * 16
        await asyncio.to_thread(assert_settled, srv, proxy, spy)
    finally:
        srv.stop()


@pytest.mark.parametrize("backend_status", [500, 503, 429, 400])
async def test_backend_errors_under_load(fake_vllm: FakeVLLM, backend_status: int) -> None:
    fake_vllm.fail_status = backend_status
    fake_vllm.fail_count = 10
    srv, proxy, spy = start_proxy(Config(backends=(fake_vllm.url,), router="tr", scheduler_interval=0.1))
    try:
        wait_until(lambda: srv.call(lambda: proxy.backends[fake_vllm.url].capacity) is not None, what="capacity known")
        async with httpx.AsyncClient(timeout=10) as c:
            bodies = [chat(program_id=f"e{i % 10}", stream=bool(i % 3 == 0)) for i in range(30)]
            rs = await asyncio.gather(*(c.post(srv.url + "/v1/chat/completions", json=b) for b in bodies))
        outcomes = [_ok_or_clear_error(r.status_code, r.text) for r in rs]
        expected = {500: "http_502"}.get(backend_status, f"http_{backend_status}")
        assert outcomes.count(expected) == 10 and outcomes.count("ok") == 20, outcomes
        await asyncio.to_thread(assert_settled, srv, proxy, spy)
    finally:
        srv.stop()


@pytest.mark.parametrize("router", ["default", "tr"])
async def test_one_of_two_backends_unhealthy(fake_vllm_factory: Callable[..., FakeVLLM], router: str) -> None:
    a, b = fake_vllm_factory(), fake_vllm_factory()
    # worst_fit spreads tr programs over both backends (best_fit packs them onto one)
    cfg = Config(backends=(a.url, b.url), router=router, metrics=True, metrics_interval=0.05, scheduler_interval=0.1, tr_placement="worst_fit")
    srv, proxy, spy = start_proxy(cfg)
    try:
        wait_until(lambda: srv.call(lambda: all(st.capacity for st in proxy.backends.values())), what="capacities known")
        async with httpx.AsyncClient(timeout=10) as c:
            for i in range(4):
                assert (await c.post(srv.url + "/v1/chat/completions", json=chat(program_id=f"old{i}"))).status_code == 200
            placed = srv.call(lambda: {v.program_id: v.backend for v in proxy.policy.programs()})
            on_b = [p for p, u in placed.items() if u == b.url]
            assert on_b, placed  # least-loaded placement used both

            b.stop()  # connections refused from now on; the scraper marks it unhealthy
            await asyncio.to_thread(
                wait_until, lambda: httpx.get(srv.url + "/health").json()["per_backend"][b.url]["healthy"] is False, 10, 0.05, "b unhealthy"
            )
            # new programs all go to the healthy backend
            rs = await asyncio.gather(*(c.post(srv.url + "/v1/chat/completions", json=chat(program_id=f"new{i}")) for i in range(6)))
            assert [r.status_code for r in rs] == [200] * 6, [r.text for r in rs]
            placed = srv.call(lambda: {v.program_id: v.backend for v in proxy.policy.programs()})
            assert all(placed[f"new{i}"] == a.url for i in range(6)), placed
            # programs placed on the dead backend are not stuck: each request ends promptly with a clear error
            for pid in on_b:
                r = await c.post(srv.url + "/v1/chat/completions", json=chat(program_id=pid), timeout=5)
                assert r.status_code in (502, 503) and is_openai_error(r), r.text
            # releasing one lets it re-enter on the healthy backend
            pid = on_b[0]
            assert (await c.post(srv.url + "/programs/release", json={"program_id": pid})).json()["released"] is True
            assert (await c.post(srv.url + "/v1/chat/completions", json=chat(program_id=pid))).status_code == 200
            assert srv.call(lambda: proxy.policy.program(pid).backend) == a.url
            health = (await c.get(srv.url + "/health")).json()
            assert (health["status"], health["ready"], health["healthy_backends"]) == ("ok", True, 1)
        await asyncio.to_thread(assert_settled, srv, proxy, spy)
        a.stop()  # no backend left: /health still answers "ok" (upstream's contract) but not ready
        await asyncio.to_thread(
            wait_until, lambda: httpx.get(srv.url + "/health").json()["ready"] is False, 10, 0.05, "not ready"
        )
        assert httpx.get(srv.url + "/health").json()["healthy_backends"] == 0
    finally:
        srv.stop()


async def test_client_disconnects_mid_stream_under_load(fake_vllm: FakeVLLM) -> None:
    fake_vllm.completion_tokens = 200
    fake_vllm.token_delay = 0.01
    srv, proxy, spy = start_proxy(Config(backends=(fake_vllm.url,), router="tr", scheduler_interval=0.1))
    rng = random.Random(7)
    try:
        wait_until(lambda: srv.call(lambda: proxy.backends[fake_vllm.url].capacity) is not None, what="capacity known")

        async def leave_early(c: httpx.AsyncClient, i: int) -> str:
            async with c.stream("POST", srv.url + "/v1/chat/completions", json=chat(program_id=f"d{i}", stream=True)) as r:
                assert r.status_code == 200
                n = 0
                async for _ in r.aiter_lines():
                    n += 1
                    if n >= rng.randint(1, 20):
                        break
            return "left"

        async def complete(c: httpx.AsyncClient, i: int) -> str:
            status, text = await _stream(c, srv.url, chat(program_id=f"k{i}", stream=True))
            return _ok_or_clear_error(status, text)

        async with httpx.AsyncClient(timeout=30) as c:
            results = await asyncio.gather(*[leave_early(c, i) for i in range(20)], *[complete(c, i) for i in range(10)])
        assert results == ["left"] * 20 + ["ok"] * 10
        await asyncio.to_thread(assert_settled, srv, proxy, spy)
        await asyncio.to_thread(wait_until, lambda: fake_vllm.running == 0, 10, 0.02, "backend requests aborted")
        assert fake_vllm.disconnects >= 1
    finally:
        srv.stop()


async def test_release_racing_queued_and_running_requests(fake_vllm_factory: Callable[..., FakeVLLM]) -> None:
    """tr with room for ~2 programs: most requests are held in the queue. Releases race them (held ones
    get 410 at once, running ones finish); nothing stays held, every client hears back."""
    fake = fake_vllm_factory(block_size=16, num_gpu_blocks=20, token_delay=0.01, completion_tokens=20)  # 320 tokens
    cfg = Config(backends=(fake.url,), router="tr", scheduler_interval=0.05, buffer_per_program=100)
    srv, proxy, spy = start_proxy(cfg)
    rng = random.Random(11)
    try:
        wait_until(lambda: srv.call(lambda: proxy.backends[fake.url].capacity) is not None, what="capacity known")
        async with httpx.AsyncClient(timeout=60) as c:

            async def program(i: int) -> list[str]:
                out = []
                for _ in range(3):
                    status, text = await _stream(c, srv.url, chat(program_id=f"r{i}", stream=True))
                    out.append(_ok_or_clear_error(status, text))
                    if status == 410:
                        break
                return out

            gone: set[str] = set()

            async def releaser() -> int:
                n = 0
                for _ in range(30):
                    await asyncio.sleep(rng.uniform(0, 0.05))
                    pid = f"r{rng.randrange(12)}"
                    r = await c.post(srv.url + "/programs/release", json={"program_id": pid})
                    assert r.status_code == 200, r.text
                    n += r.json()["released"]
                    gone.add(pid)
                return n

            tasks = [asyncio.create_task(program(i)) for i in range(12)]
            await asyncio.to_thread(wait_until, lambda: srv.call(lambda: snapshot(proxy)["held"]) > 0, 10, 0.01, "requests held")
            released = await releaser()
            outcomes = [o for t in await asyncio.gather(*tasks) for o in t]
        assert released > 0
        assert set(outcomes) <= {"ok", "http_410", "stream_error"}, outcomes
        assert "ok" in outcomes
        await asyncio.to_thread(assert_settled, srv, proxy, spy, 15.0, gone)
    finally:
        srv.stop()
