"""The routes beyond chat against the fake vLLM (proxy in-process, backend over real HTTP): text completions
and the Responses API scheduled exactly as chat (program id sources, stripping, usage, streaming, request end
exactly once, step records), and the other routes vLLM serves passed through unscheduled and unchanged."""

from __future__ import annotations

import json

import pytest

from tests.fakes.fake_vllm import FakeVLLM, free_port_url, prompt_tokens_of
from tests.fakes.proxy_kit import SpyPolicy, running_proxy
from ThunderAgent.config import Config
from ThunderAgent.policy.base import Phase
from ThunderAgent.policy.passthrough import PassthroughPolicy
from ThunderAgent.records import read_step_records


def cfg(*backends: str, **kw) -> Config:
    return Config(backends=backends, router="default", **kw)


def completion(prompt: object = "hello there, tiny model", **extra: object) -> dict:
    return {"model": "tiny", "prompt": prompt, "max_tokens": 8, **extra}


def response(given: object = "hello there, tiny model", **extra: object) -> dict:
    return {"model": "tiny", "input": given, "max_output_tokens": 8, **extra}


def data_events(text: str) -> list[str]:
    out = []
    for event in text.split("\n\n"):
        for line in event.splitlines():
            if line.startswith("data: "):
                out.append(line[len("data: ") :])
    return out


def last_path(fake: FakeVLLM) -> str:
    """The last path the fake served, leaving out the proxy's own /metrics probes (capacity discovery)."""
    return [p for p in fake.paths if p != "/metrics"][-1]


def spy_for(fake: FakeVLLM) -> SpyPolicy:
    return SpyPolicy(PassthroughPolicy(cfg(fake.url).policy_settings()))


BODIES = {"completions": completion, "responses": response}


@pytest.mark.parametrize("route", ["completions", "responses"])
@pytest.mark.parametrize("how", ["body", "extra_body", "header", "url"])
async def test_program_id_sources_and_stripping(fake_vllm: FakeVLLM, route: str, how: str):
    make = BODIES[route]
    body, headers, path = make(docker_ids=["c1"]), {}, f"/v1/{route}"
    if how == "body":
        body["program_id"] = "ID-1"
    elif how == "extra_body":
        body["extra_body"] = {"program_id": "ID-1"}
    elif how == "header":
        headers["X-Program-Id"] = "ID-1"
    else:
        path = f"/p/ID-1/v1/{route}"
    async with running_proxy(cfg(fake_vllm.url)) as (c, proxy):
        r = await c.post(path, json=body, headers=headers)
        assert r.status_code == 200, r.text
        assert last_path(fake_vllm) == f"/v1/{route}"
        assert fake_vllm.requests[-1] == make()  # program_id, extra_body, docker_ids stripped; nothing else
        assert "x-program-id" not in fake_vllm.request_headers[-1]
        p = (await c.get("/programs")).json()
        assert list(p) == ["ID-1"]
        assert p["ID-1"]["step_count"] == 1 and p["ID-1"]["inflight"] == 0
        assert list(proxy.registry.get("ID-1").resources["docker_ids"]) == ["c1"]


async def test_completions_usage_accounted_and_request_ended_once(fake_vllm: FakeVLLM):
    spy = spy_for(fake_vllm)
    async with running_proxy(cfg(fake_vllm.url), policy=spy) as (c, proxy):
        r = await c.post("/v1/completions", json=completion(program_id="a"))
        body = r.json()
        assert r.status_code == 200 and body["object"] == "text_completion"
        assert body["choices"][0]["text"] == " entry" * 6
        total = body["usage"]["total_tokens"]
        assert total == prompt_tokens_of(completion()) + 6
        assert spy.end_totals == [("a", total)]
        p = (await c.get("/programs")).json()["a"]
        assert p["total_tokens"] == total and p["status"] == "acting"
        # a backend error ends the request too (exactly once), the status passes through
        fake_vllm.fail_status, fake_vllm.fail_count = 400, 1
        r = await c.post("/v1/completions", json=completion(program_id="a"))
        assert r.status_code == 400 and r.json()["error"]["message"] == "fake failure"
        assert spy.balanced() and spy.ends["a"] == 2
        assert proxy.policy.program("a").phase == Phase.ACTING


async def test_completions_token_id_prompt_is_estimated_exactly(fake_vllm: FakeVLLM):
    spy = spy_for(fake_vllm)
    async with running_proxy(cfg(fake_vllm.url), policy=spy) as (c, proxy):
        r = await c.post("/v1/completions", json=completion(list(range(300)), program_id="ids"))
        assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 300
        assert spy.arrival_tokens == [("ids", 300)]
        r = await c.post("/v1/completions", json=completion("x" * 800, program_id="txt"))
        assert spy.arrival_tokens[-1] == ("txt", 200)  # 800 chars at the default 4 chars per token


async def test_completions_stream_strips_injected_usage_chunk(fake_vllm: FakeVLLM):
    fake_vllm.completion_tokens = 4
    spy = spy_for(fake_vllm)
    async with running_proxy(cfg(fake_vllm.url), policy=spy) as (c, proxy):
        r = await c.post("/v1/completions", json=completion(program_id="s", stream=True))
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = data_events(r.text)
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert len(chunks) == 4 and all(ch["choices"] and ch["object"] == "text_completion" for ch in chunks)
        assert fake_vllm.requests[-1]["stream_options"] == {"include_usage": True}  # asked for, then stripped
        total = prompt_tokens_of(completion()) + 4
        assert spy.end_totals == [("s", total)]
        # the client asked: the usage chunk reaches it
        so = {"include_usage": True}
        r = await c.post("/v1/completions", json=completion(program_id="s", stream=True, stream_options=so))
        last = json.loads(data_events(r.text)[-2])
        assert last["choices"] == [] and last["usage"]["total_tokens"] == total
        assert spy.balanced() and (await c.get("/programs")).json()["s"]["total_tokens"] == total


async def test_completions_step_records_with_profile(fake_vllm: FakeVLLM, tmp_path):
    fake_vllm.report_cached = True
    config = cfg(fake_vllm.url, profile=True, profile_dir=str(tmp_path))
    async with running_proxy(config) as (c, proxy):
        await c.post("/v1/completions", json=completion(program_id="p", stream=True))
        await c.post("/v1/completions", json=completion(program_id="p"))
        await c.post("/v1/responses", json=response(program_id="p"))
    recs = read_step_records(tmp_path / "step_records.jsonl")
    assert [r.step for r in recs] == [1, 2, 3]
    assert all(r.status == "ok" and r.http_status == 200 and r.backend == fake_vllm.url for r in recs)
    assert [r.completion_tokens for r in recs] == [6, 6, 6]
    assert [r.prompt_tokens for r in recs[:2]] == [prompt_tokens_of(completion())] * 2
    assert recs[2].prompt_tokens == prompt_tokens_of(response())
    assert all(r.cached_tokens is not None for r in recs)


async def test_responses_usage_from_input_output_tokens(fake_vllm: FakeVLLM):
    spy = spy_for(fake_vllm)
    async with running_proxy(cfg(fake_vllm.url), policy=spy) as (c, proxy):
        r = await c.post("/v1/responses", json=response(program_id="r", instructions="be brief"))
        body = r.json()
        assert r.status_code == 200 and body["object"] == "response"
        u = body["usage"]
        assert u["total_tokens"] == u["input_tokens"] + u["output_tokens"] and u["output_tokens"] == 6
        assert spy.end_totals == [("r", u["total_tokens"])]
        assert (await c.get("/programs")).json()["r"]["total_tokens"] == u["total_tokens"]
        # a continuation sends only the new input: it extends the last exact total (both estimates below use
        # the one ratio learned so far)
        await c.post("/v1/responses", json=response("x" * 400, program_id="fresh"))
        alone = spy.arrival_tokens[-1][1]
        continued = response("x" * 400, program_id="r", previous_response_id=body["id"])
        r = await c.post("/v1/responses", json=continued)
        assert r.status_code == 200 and alone > 50
        assert spy.arrival_tokens[-1] == ("r", u["total_tokens"] + alone)
        # a list of input items, as an agent sends after a tool call, is estimated from all its text
        items = [
            {"role": "user", "content": [{"type": "input_text", "text": "y" * 400}]},
            {"type": "function_call", "call_id": "c1", "name": "ls", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "z" * 400},
        ]
        r = await c.post("/v1/responses", json=response(items, program_id="items"))
        assert r.status_code == 200
        assert spy.arrival_tokens[-1][0] == "items" and spy.arrival_tokens[-1][1] >= 200


async def test_responses_stream_usage_from_response_completed(fake_vllm: FakeVLLM):
    fake_vllm.completion_tokens = 3
    spy = spy_for(fake_vllm)
    async with running_proxy(cfg(fake_vllm.url), policy=spy) as (c, proxy):
        r = await c.post("/v1/responses", json=response(program_id="rs", stream=True))
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert "stream_options" not in fake_vllm.requests[-1]  # Responses streams always carry usage
        events = [json.loads(e) for e in data_events(r.text)]
        assert [e["type"] for e in events] == ["response.created", *["response.output_text.delta"] * 3,
                                               "response.completed"]
        assert "event: response.completed\n" in r.text  # typed events pass through unchanged
        total = events[-1]["response"]["usage"]["total_tokens"]
        assert spy.end_totals == [("rs", total)]
        assert (await c.get("/programs")).json()["rs"]["total_tokens"] == total


async def test_responses_not_served_passes_the_backends_404(fake_vllm: FakeVLLM):
    fake_vllm.serve_responses = False
    spy = spy_for(fake_vllm)
    async with running_proxy(cfg(fake_vllm.url), policy=spy) as (c, proxy):
        r = await c.post("/v1/responses", json=response(program_id="n"))
        assert r.status_code == 404
        assert "Not Found" in r.json()["error"]["message"]
        assert spy.balanced() and spy.ends["n"] == 1 and proxy.registry.get("n").inflight == 0


async def test_bad_fields_on_new_routes_are_400(fake_vllm: FakeVLLM):
    async with running_proxy(cfg(fake_vllm.url)) as (c, proxy):
        for path, body in (
            ("/v1/completions", completion(stream="yes")),
            ("/v1/responses", response(tools={})),
            ("/v1/completions", completion(program_id=["x"])),
        ):
            r = await c.post(path, json=body)
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_type", r.text
        assert (await c.post("/v1/responses", content=b"{nope")).status_code == 400
        assert fake_vllm.requests == []


# --- pass-through -----------------------------------------------------------------------------------------


async def test_passthrough_routes_unchanged_and_unscheduled(fake_vllm: FakeVLLM):
    spy = spy_for(fake_vllm)
    async with running_proxy(cfg(fake_vllm.url), policy=spy) as (c, proxy):
        raw = b'{"model": "tiny",  "prompt": "abcdefgh", "program_id": "kept"}'
        r = await c.post("/tokenize?x=1", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 200 and r.json()["count"] == 2 and r.json()["query"] == "x=1"
        assert fake_vllm.requests[-1] == json.loads(raw)  # not scheduled: the body is not touched
        r = await c.post("/detokenize", json={"model": "tiny", "tokens": [1, 2, 3]})
        assert r.json() == {"prompt": "abcd" * 3}
        r = await c.post("/v1/embeddings", json={"model": "tiny", "input": ["abcd", "abcdefgh"]})
        assert r.status_code == 200 and len(r.json()["data"]) == 2 and r.json()["usage"]["total_tokens"] == 3
        r = await c.get("/version")
        assert r.json() == {"version": "0.32.0-fake"}
        r = await c.post("/p/prog/tokenize", json={"model": "tiny", "prompt": "abcd"})
        assert r.status_code == 200 and last_path(fake_vllm) == "/tokenize"
        # the backend's own errors pass through with their status
        r = await c.post("/detokenize", json={"model": "tiny"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "tokens"
        r = await c.post("/v1/rerank", json={})  # a route this engine does not serve
        assert r.status_code == 404 and r.json()["error"]["type"] == "backend_error"
        assert last_path(fake_vllm) == "/v1/rerank"
        assert sum(spy.arrivals.values()) == 0 and (await c.get("/programs")).json() == {}


async def test_passthrough_follows_the_program_to_its_backend(fake_vllm_factory):
    a, b = fake_vllm_factory(), fake_vllm_factory()
    async with running_proxy(cfg(a.url, b.url)) as (c, proxy):
        # default router: a new program is pinned to the least-loaded backend
        for pid in ("p1", "p2"):
            assert (await c.post("/v1/completions", json=completion(program_id=pid))).status_code == 200
        placed = {pid: proxy.policy.program(pid).backend for pid in ("p1", "p2")}
        assert set(placed.values()) == {a.url, b.url}
        for pid, backend in placed.items():
            fake = a if backend == a.url else b
            before = len(fake.requests)
            tok = {"model": "tiny", "prompt": "abcd"}
            r = await c.post("/tokenize", json=tok, headers={"X-Program-Id": pid})
            assert r.status_code == 200 and len(fake.requests) == before + 1
            assert "x-program-id" not in fake.request_headers[-1]
            r = await c.post(f"/p/{pid}/v1/embeddings", json={"model": "tiny", "input": "abcd"})
            assert r.status_code == 200 and len(fake.requests) == before + 2


async def test_passthrough_limits_and_failures(fake_vllm: FakeVLLM):
    async with running_proxy(cfg(fake_vllm.url, max_body_bytes=1000)) as (c, proxy):
        r = await c.post("/tokenize", json={"model": "tiny", "prompt": "x" * 2000})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        r = await c.post("/v1/completions", json=completion("x" * 2000))
        assert r.status_code == 413
        r = await c.get("/tokenize")
        assert r.status_code == 405
    async with running_proxy(cfg(free_port_url())) as (c, proxy):
        r = await c.post("/tokenize", json={"model": "tiny", "prompt": "abcd"})
        assert r.status_code == 502 and r.json()["error"]["type"] == "backend_unreachable"
    async with running_proxy(Config(backends=(), router="default")) as (c, proxy):
        r = await c.get("/version")
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_backend"
