"""Bad input and backend failures: the client gets an OpenAI-style error with a fitting status, the
proxy never answers 500, and the state stays consistent (policy.on_request_end exactly once per
forwarded request, nothing left in flight, the program ACTING afterwards)."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import httpx
import pytest

from tests.fakes.fake_vllm import FakeVLLM, free_port_url
from tests.fakes.proxy_kit import SpyPolicy, chat, running_proxy
from ThunderAgent.app import create_app
from ThunderAgent.config import Config
from ThunderAgent.forward import BackendClient, transport_error
from ThunderAgent.policy import make_policy
from ThunderAgent.policy.base import Phase
from ThunderAgent.policy.passthrough import PassthroughPolicy


def cfg(*backends: str, **kw) -> Config:
    return Config(backends=backends, router="default", **kw)


def assert_openai_error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"} and err["message"]
    return err


def assert_consistent(proxy, spy: SpyPolicy, pid: str = "p") -> None:
    assert spy.balanced(), (spy.arrivals, spy.ends)
    rec = proxy.registry.get(pid)
    assert rec is not None and rec.inflight == 0 and rec.held == 0
    assert proxy.policy.program(pid).phase == Phase.ACTING
    assert proxy.policy.program(pid).inflight == 0


@pytest.fixture(params=["default", "tr"])
def spy(fake_vllm: FakeVLLM, request) -> SpyPolicy:
    """A spy around the real policy of each router (the proxy's contract must hold for both)."""
    return SpyPolicy(make_policy(Config(backends=(fake_vllm.url,), router=request.param).policy_settings()))


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"\xff\xfe", 400, None),
        (b"[1, 2]", 400, None),
        (b'"text"', 400, None),
        (b"{}", 400, "messages"),
        (b'{"messages": "hi"}', 400, "messages"),
        (b'{"messages": ["hi"]}', 400, "messages[0]"),
        (b'{"messages": [], "stream": "yes"}', 400, "stream"),
        (b'{"messages": [], "stream_options": 1}', 400, "stream_options"),
        (b'{"messages": [], "extra_body": []}', 400, "extra_body"),
        (b'{"messages": [], "program_id": {"a": 1}}', 400, "program_id"),
        (b'{"messages": [], "program_id": true}', 400, "program_id"),
        (b'{"messages": [], "docker_ids": [1.5]}', 400, "docker_ids"),
        (b'{"messages": [], "model": 3}', 400, "model"),
        (b"[" * 100_000, 400, None),
    ],
)
async def test_bad_request_bodies(fake_vllm: FakeVLLM, body: bytes, status: int, param):
    async with running_proxy(cfg(fake_vllm.url)) as (c, proxy):
        r = await c.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        err = assert_openai_error(r, status)
        assert err["param"] == param
        assert len(proxy.registry) == 0 and fake_vllm.requests == []


async def test_invalid_json_keeps_upstream_detail(fake_vllm: FakeVLLM):
    async with running_proxy(cfg(fake_vllm.url)) as (c, proxy):
        r = await c.post("/v1/chat/completions", content=b"{oops")
        assert r.json()["detail"] == "Invalid JSON"


async def test_oversized_body_413(fake_vllm: FakeVLLM):
    async with running_proxy(cfg(fake_vllm.url, max_body_bytes=1000)) as (c, proxy):
        r = await c.post("/v1/chat/completions", json=chat("x" * 2000))
        assert_openai_error(r, 413)

        async def chunks():  # no Content-Length: the limit is enforced while reading
            for _ in range(10):
                yield b"x" * 200

        r = await c.post("/v1/chat/completions", content=chunks())
        assert_openai_error(r, 413)
        assert fake_vllm.requests == []
        r = await c.post("/v1/chat/completions", json=chat("x" * 100))
        assert r.status_code == 200


async def test_backend_refusing_connections_502(spy: SpyPolicy):
    url = free_port_url()
    spy.inner = make_policy(Config(backends=(url,), router=spy.name).policy_settings())
    async with running_proxy(cfg(url), policy=spy) as (c, proxy):
        for stream in (False, True):
            r = await c.post("/v1/chat/completions", json=chat(program_id="p", stream=stream))
            err = assert_openai_error(r, 502)
            assert err["code"] == "backend_unreachable"
        assert_consistent(proxy, spy)
        assert spy.ends["p"] == 2


async def test_backend_timeout_504(fake_vllm: FakeVLLM, spy: SpyPolicy):
    fake_vllm.delay = 2.0
    async with running_proxy(cfg(fake_vllm.url, proxy_read_timeout=0.2), policy=spy) as (c, proxy):
        for stream in (False, True):
            r = await c.post("/v1/chat/completions", json=chat(program_id="p", stream=stream))
            err = assert_openai_error(r, 504)
            assert err["type"] == "backend_timeout"
        assert_consistent(proxy, spy)


async def test_backend_timeout_mid_stream_sends_error_event(fake_vllm: FakeVLLM, spy: SpyPolicy):
    fake_vllm.token_delay = 1.0
    async with running_proxy(cfg(fake_vllm.url, proxy_read_timeout=0.3), policy=spy) as (c, proxy):
        r = await c.post("/v1/chat/completions", json=chat(program_id="p", stream=True))
        assert r.status_code == 200  # the status line was already sent
        last = r.text.strip().split("\n\n")[-1]
        err = json.loads(last[len("data: ") :])["error"]
        assert err["type"] == "backend_timeout" and err["code"] == "backend_timeout"
        assert_consistent(proxy, spy)
        assert spy.end_totals == [("p", None)]


@pytest.mark.parametrize(
    ("backend_status", "client_status"),
    [(400, 400), (404, 404), (422, 422), (429, 429), (500, 502), (501, 502), (503, 503)],
)
async def test_backend_error_status(
    fake_vllm: FakeVLLM, spy: SpyPolicy, backend_status: int, client_status: int
):
    fake_vllm.fail_status = backend_status
    async with running_proxy(cfg(fake_vllm.url), policy=spy) as (c, proxy):
        for stream in (False, True):
            r = await c.post("/v1/chat/completions", json=chat(program_id="p", stream=stream))
            err = assert_openai_error(r, client_status)
            if client_status == backend_status:  # OpenAI-style bodies pass through unchanged
                assert err == {
                    "message": "fake failure",
                    "type": "InternalServerError",
                    "param": None,
                    "code": backend_status,
                }
            else:
                assert err["code"] == backend_status and "fake failure" in err["message"]
        assert_consistent(proxy, spy)
        assert spy.end_totals == [("p", None), ("p", None)]


async def test_backend_non_json_error_is_wrapped(fake_vllm: FakeVLLM, spy: SpyPolicy):
    fake_vllm.fail_status = 500
    fake_vllm.fail_body = b"Internal Server Error"
    async with running_proxy(cfg(fake_vllm.url), policy=spy) as (c, proxy):
        r = await c.post("/v1/chat/completions", json=chat(program_id="p"))
        err = assert_openai_error(r, 502)
        assert "Internal Server Error" in err["message"]
        fake_vllm.fail_status = 404
        fake_vllm.fail_body = b'{"detail": "Not Found"}'
        r = await c.post("/v1/chat/completions", json=chat(program_id="p"))
        assert assert_openai_error(r, 404)["message"].endswith("Not Found")
        assert_consistent(proxy, spy)


async def test_backend_model_not_found_passes_through(fake_vllm: FakeVLLM, spy: SpyPolicy):
    async with running_proxy(cfg(fake_vllm.url), policy=spy) as (c, proxy):
        r = await c.post("/v1/chat/completions", json={**chat(program_id="p"), "model": "nope"})
        err = assert_openai_error(r, 404)
        assert err["type"] == "NotFoundError" and err["param"] == "model"
        assert_consistent(proxy, spy)


async def test_backend_dies_mid_stream(fake_vllm: FakeVLLM, spy: SpyPolicy):
    fake_vllm.completion_tokens = 10
    fake_vllm.die_after_chunks = 3
    async with running_proxy(cfg(fake_vllm.url), policy=spy) as (c, proxy):
        r = await c.post("/v1/chat/completions", json=chat(program_id="p", stream=True))
        assert r.status_code == 200
        events = [e for e in r.text.split("\n\n") if e.startswith("data: ")]
        assert len(events) == 4  # 3 chunks, then the proxy's error event
        err = json.loads(events[-1][len("data: ") :])["error"]
        assert err["code"] == "backend_error" and err["type"] == "backend_error"
        assert "[DONE]" not in r.text
        assert_consistent(proxy, spy)


async def test_backend_dies_mid_body_non_streaming(fake_vllm: FakeVLLM, spy: SpyPolicy):
    fake_vllm.die_after_chunks = 0
    async with running_proxy(cfg(fake_vllm.url), policy=spy) as (c, proxy):
        r = await c.post("/v1/chat/completions", json=chat(program_id="p"))
        assert_openai_error(r, 502)
        assert_consistent(proxy, spy)
        # the backend recovers: the program carries on normally
        fake_vllm.die_after_chunks = None
        r = await c.post("/v1/chat/completions", json=chat(program_id="p"))
        assert r.status_code == 200 and proxy.policy.program("p").tokens == r.json()["usage"]["total_tokens"]
        assert_consistent(proxy, spy)


async def test_missing_usage_still_ends_request(fake_vllm: FakeVLLM, spy: SpyPolicy):
    async with running_proxy(cfg(fake_vllm.url), policy=spy) as (c, proxy):
        # continuous_usage_stats without include_usage: the proxy does not inject, the fake sends no usage
        r = await c.post(
            "/v1/chat/completions",
            json=chat(program_id="p", stream=True, stream_options={"continuous_usage_stats": True}),
        )
        assert r.status_code == 200
        assert spy.end_totals == [("p", None)]
        assert_consistent(proxy, spy)


async def test_never_500_on_policy_failure(fake_vllm: FakeVLLM):
    class Broken(PassthroughPolicy):
        def on_request_end(self, program_id, now, total_tokens):
            raise RuntimeError("policy bug")

    async with running_proxy(cfg(fake_vllm.url), policy=Broken(cfg(fake_vllm.url))) as (c, proxy):
        r = await c.post("/v1/chat/completions", json=chat(program_id="p"))
        assert r.status_code == 200  # the response is not lost to a bookkeeping error
        assert proxy.registry.get("p").inflight == 0


async def test_proxy_bug_mid_stream_ends_cleanly(fake_vllm: FakeVLLM, spy: SpyPolicy, monkeypatch):
    import ThunderAgent.proxy as app_module
    from ThunderAgent.streaming import SSETap

    class BrokenTap(SSETap):
        def feed(self, chunk: bytes) -> bytes:
            if self.events >= 2:
                raise RuntimeError("tap bug")
            return super().feed(chunk)

    monkeypatch.setattr(app_module, "SSETap", BrokenTap)
    fake_vllm.completion_tokens = 10
    fake_vllm.token_delay = 0.01  # events arrive in separate reads (coalesced ones would all pass one feed)
    async with running_proxy(cfg(fake_vllm.url), policy=spy) as (c, proxy):
        r = await c.post("/v1/chat/completions", json=chat(program_id="p", stream=True))
        assert r.status_code == 200
        err = json.loads(r.text.strip().split("\n\n")[-1][len("data: ") :])["error"]
        assert err["code"] == "proxy_error"
        assert_consistent(proxy, spy)


class _FlakyClient(BackendClient):
    """Fails the first `fails` sends like a stale pooled connection (the engine closed it), then behaves."""

    def __init__(self, fails: int) -> None:
        super().__init__(connect_timeout=5.0, read_timeout=None)
        self.fails = fails

    async def send(
        self,
        method: str,
        url: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes | None = None,
        *,
        fresh: bool = False,
    ):
        if self.fails:
            self.fails -= 1
            raise transport_error(aiohttp.ServerDisconnectedError())
        return await super().send(method, url, headers, body, fresh=fresh)


@pytest.mark.parametrize(("fails", "status"), [(1, 200), (2, 502)])
async def test_stale_connection_retried_once(fake_vllm: FakeVLLM, spy: SpyPolicy, fails: int, status: int):
    async with running_proxy(cfg(fake_vllm.url), policy=spy) as (c, proxy):
        await proxy.client.aclose()
        proxy.client = _FlakyClient(fails)
        r = await c.post("/v1/chat/completions", json=chat(program_id="p"))
        assert r.status_code == status
        assert len(fake_vllm.requests) == (1 if status == 200 else 0)
        assert_consistent(proxy, spy)


async def test_front_door_unexpected_error_is_502(fake_vllm: FakeVLLM):
    """POSTs to the scheduled routes skip the FastAPI stack (ProxyApp): a proxy bug there still answers 502
    OpenAI-style JSON, as the stack's handler does for the URL-prefixed routes; other methods stay FastAPI's."""
    app = create_app(cfg(fake_vllm.url))
    async with app.router.lifespan_context(app):

        async def broken_infer(request, route, url_program_id=None):
            raise RuntimeError("proxy bug")

        app.state.proxy.infer = broken_infer
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as c:
            for route in ("chat/completions", "completions", "responses"):
                for path in (f"/v1/{route}", f"/p/x/v1/{route}"):
                    r = await c.post(path, json=chat(program_id="p"))
                    err = assert_openai_error(r, 502)
                    assert err["code"] == "proxy_error" and "RuntimeError: proxy bug" in err["message"]
            assert_openai_error(await c.get("/v1/chat/completions"), 405)


class _DropsReusedConnections(asyncio.Protocol):
    """A backend whose keep-alive connections all went stale: it answers the first request on a connection
    and closes the connection, without answering, on any later one (as an engine whose keep-alive timer
    fired just as the proxy reused the connection)."""

    BODY = json.dumps(
        {
            "object": "chat.completion",
            "choices": [],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    ).encode()

    def __init__(self, served: list[int]) -> None:
        self.served = served
        self.buf = b""
        self.requests = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        head, sep, rest = self.buf.partition(b"\r\n\r\n")
        if not sep:
            return
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        if len(rest) < length:
            return
        self.buf = rest[length:]
        self.requests += 1
        if self.requests > 1:
            self.transport.close()
            return
        self.served.append(1)
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (len(self.BODY), self.BODY)
        )


async def test_retry_after_a_stale_connection_uses_a_fresh_one():
    """Several pooled connections can go stale at once (an engine's keep-alive timer fires while the proxy's
    event loop lags): the one retry must not pick another stale pooled connection, or the client gets a 502."""
    served: list[int] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _DropsReusedConnections(served), "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with running_proxy(cfg(url)) as (c, proxy):
            first = await asyncio.gather(
                *(c.post("/v1/chat/completions", json=chat(program_id=f"p{i}")) for i in range(4))
            )
            assert [r.status_code for r in first] == [200] * 4  # connections now pooled, all stale
            before = len(served)
            r = await c.post("/v1/chat/completions", json=chat(program_id="p0"))
            assert r.status_code == 200, r.text
            assert len(served) == before + 1
    finally:
        server.close()
        await server.wait_closed()
