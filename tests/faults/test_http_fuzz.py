"""Fuzz every HTTP route of the proxy (hypothesis): any method, path, query, headers and body — malformed
JSON, wrong types, deeply nested or huge bodies, odd unicode, hostile program ids (empty, 10 kB, control
characters) in the body, header and URL. Properties: never a 5xx (every error is OpenAI-style JSON or a
plain 2xx/4xx page), nothing left in flight or held, and the proxy's memory stays bounded.

tests/integration/test_proxy_fuzz.py (P) fuzzes JSON bodies of /v1/chat/completions; this covers the rest.
The number of requests tried is printed (-s) for the reliability table of docs/proxy.md."""

from __future__ import annotations

import asyncio
import gc
import json
import tracemalloc
from typing import Any
from urllib.parse import quote

from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st

from ThunderAgent.config import Config
from tests.fakes.fake_vllm import FakeVLLM
from tests.fakes.proxy_kit import chat, running_proxy
from tests.faults.kit import proxy_bytes

TRIED = {"requests": 0, "5xx": 0}

ROUTES = [
    "/v1/chat/completions", "/p/{id}/v1/chat/completions", "/v1/models", "/p/{id}/v1/models", "/programs",
    "/programs/release", "/health", "/profiles", "/profiles/{id}", "/metrics", "/{id}", "/v1/{id}", "/p/{id}/{id}",
]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]

odd_text = st.text(st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ["", " ", "\x00", "a\nb", "\r\n\r\n", "\u202e\u2028\ufeff", "😀" * 10, "../../etc/passwd", "%00", "=1+1", "x" * 10_000, "é" * 600]
)
program_ids = odd_text | st.integers() | st.floats(allow_nan=True) | st.booleans() | st.none() | st.lists(st.integers(), max_size=3)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | odd_text
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(odd_text, inner, max_size=4), max_leaves=15)


def _nested(depth: int) -> bytes:
    return b'{"messages":' + b"[" * depth + b"]" * depth + b"}"


bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda pid, extra: json.dumps({**chat(program_id=pid), **extra}, default=str).encode(),
              program_ids, st.dictionaries(st.sampled_from(["stream", "extra_body", "docker_ids", "tool_ids", "messages", "tools", "model"]), json_values, max_size=2)),
    st.sampled_from([_nested(100_000), _nested(5000), b'{"program_id":"' + b"\\u0000" * 5000 + b'"}', b"\xff\xfe\x00",
                     json.dumps(chat("x" * 200_000)).encode(), b'{"a":' * 3000, b"[" * 50_000, b'{"messages":[],"program_id":"' + b"p" * 10_000 + b'"}']),
)
header_names = st.sampled_from(["x-program-id", "content-type", "accept", "authorization", "x-admin-token", "content-length",
                                "transfer-encoding", "content-encoding", "x-forwarded-for", "host", "expect"])
header_values = st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")) | st.sampled_from(
    [b"application/json", b"text/event-stream", b"-1", b"99999999999999999999", b"gzip", b"chunked", b"Bearer ", b"\xff" * 20, b"1e3"])
requests = st.tuples(
    st.sampled_from(METHODS),
    st.sampled_from(ROUTES),
    odd_text,
    st.dictionaries(st.sampled_from(["format", "program_id", "x"]), odd_text, max_size=2),
    st.dictionaries(header_names, header_values, max_size=3),
    bodies,
)


async def _send(c, req: tuple[Any, ...]) -> int:  # noqa: ANN001
    method, route, pid, query, headers, body = req
    path = route.replace("{id}", quote(pid, safe="") or "x")
    hdrs = {k: v for k, v in headers.items() if k not in ("content-length", "transfer-encoding", "host", "content-encoding", "expect")}
    if "content-length" in headers and method == "POST":  # a lying Content-Length (the body is sent as is)
        hdrs["content-length"] = headers["content-length"]
    r = await c.request(method, path, params=query, headers=hdrs, content=body if method in ("POST", "PUT", "PATCH") else None)
    TRIED["requests"] += 1
    if r.status_code >= 500:
        TRIED["5xx"] += 1
        raise AssertionError(f"{method} {path} -> {r.status_code}: {r.text[:500]}")
    if r.status_code >= 400 and method != "HEAD":
        err = r.json()["error"]
        assert isinstance(err["message"], str), r.text
    return r.status_code


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.reuse, Phase.generate],
          verbosity=Verbosity.quiet)  # examples are huge: the failure message names the request
@given(st.lists(requests, min_size=40, max_size=40))
def test_no_5xx_on_any_route(fake_vllm: FakeVLLM, batch: list[tuple[Any, ...]]) -> None:
    async def run() -> None:
        cfg = Config(backends=(fake_vllm.url,), router="tr", max_body_bytes=1_000_000, profile=False)
        async with running_proxy(cfg) as (c, proxy):
            for req in batch:
                try:
                    await _send(c, req)
                except Exception as e:  # noqa: BLE001 - name the request briefly (the example itself is huge)
                    raise AssertionError(f"{req[0]} {req[1]} id={req[2][:40]!r} headers={req[4]!r} body={req[5][:120]!r}: "
                                         f"{type(e).__name__}: {str(e)[:600]}") from None
            assert all(rec.inflight == 0 and rec.held == 0 and not proxy.scheduler.held(rec.program_id) for rec in proxy.registry.records())
            assert {r.program_id for r in proxy.registry.records()} == {v.program_id for v in proxy.policy.programs()}

    asyncio.run(run())


def test_hostile_program_ids_everywhere(fake_vllm: FakeVLLM) -> None:
    """Each kind of bad id through each channel: an accepted id round-trips through /programs and release;
    a refused one gets 400; never 5xx."""
    ids: list[Any] = ["", " ", "x" * 10_000, "a\nb\r\x00c", "\x1b[2J", "\u2028", "😀", "=cmd", "../..", 12, 1.5, True, None, [], {}]

    async def run() -> None:
        async with running_proxy(Config(backends=(fake_vllm.url,), router="tr")) as (c, proxy):
            for pid in ids:
                for how in ("body", "extra_body", "header", "url"):
                    if how == "body":
                        r = await c.post("/v1/chat/completions", json=chat(program_id=pid))
                    elif how == "extra_body":
                        r = await c.post("/v1/chat/completions", json=chat(extra_body={"program_id": pid}))
                    elif how == "header":
                        if not isinstance(pid, str):
                            continue
                        r = await c.post("/v1/chat/completions", json=chat(), headers={"x-program-id": pid.encode("utf-8")})
                    else:
                        if not isinstance(pid, str):
                            continue
                        r = await c.post(f"/p/{quote(pid, safe='') or 'x'}/v1/chat/completions", json=chat())
                    TRIED["requests"] += 1
                    assert r.status_code in (200, 400, 404), (pid, how, r.status_code, r.text[:300])
            listed = (await c.get("/programs")).json()
            assert all(len(k) <= 512 for k in listed)
            for k in listed:
                r = await c.post("/programs/release", json={"program_id": k})
                assert r.status_code == 200 and r.json()["released"] is True, (k, r.text)
            assert (await c.get("/programs")).json() == {} and len(proxy.registry) == 0

    asyncio.run(run())


def test_fuzz_memory_is_bounded(fake_vllm: FakeVLLM) -> None:
    """The same hostile traffic twice: the second round must not grow the proxy's memory like the first
    (a leak per bad request would show as linear growth)."""
    import random

    rnd = random.Random(3)
    junk = [_nested(3000), b"\xff" * 1000, b'{"messages": 5}', json.dumps(chat("x" * 50_000)).encode(), b"[" * 10_000]

    async def round_(c) -> None:  # noqa: ANN001
        for i in range(60):
            body = rnd.choice(junk)
            r = await c.post(f"/p/{quote(chr(rnd.randrange(1, 0x3000)) * 5, safe='')}/v1/chat/completions", content=body)
            assert r.status_code < 500
            TRIED["requests"] += 1

    async def run() -> tuple[int, int, int]:
        async with running_proxy(Config(backends=(fake_vllm.url,), router="tr")) as (c, proxy):
            await round_(c)
            gc.collect()
            tracemalloc.start(8)
            a = proxy_bytes()
            await round_(c)
            gc.collect()
            b = proxy_bytes()
            await round_(c)
            gc.collect()
            d = proxy_bytes()
            tracemalloc.stop()
            return a, b, d

    a, b, d = asyncio.run(run())
    print(f"\nfuzz memory: round 2 +{(b - a) / 1e3:.0f} kB, round 3 +{(d - b) / 1e3:.0f} kB; requests tried so far {TRIED}")
    assert d - b < 2_000_000, (a, b, d)
