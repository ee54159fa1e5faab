"""Every proxy route against the fake vLLM backend (proxy in-process, backend over real HTTP)."""

from __future__ import annotations

import json

import pytest

from tests.fakes.fake_vllm import FakeVLLM, prompt_tokens_of
from tests.fakes.proxy_kit import SpyPolicy, chat, running_proxy
from ThunderAgent.config import Config
from ThunderAgent.policy.passthrough import PassthroughPolicy


def cfg(*backends: str, **kw) -> Config:
    return Config(backends=backends, router="default", **kw)


def sse_events(text: str) -> list[str]:
    return [e[len("data: ") :] for e in text.split("\n\n") if e.startswith("data: ")]


async def test_non_streaming_passthrough_and_usage(fake_vllm: FakeVLLM):
    async with running_proxy(cfg(fake_vllm.url)) as (c, proxy):
        r = await c.post("/v1/chat/completions", json=chat(program_id="p1"))
        assert r.status_code == 200
        body = r.json()
        assert body["object"] == "chat.completion"
        assert body["usage"]["completion_tokens"] == 6
        assert r.headers["content-type"] == "application/json"
        # program_id stripped before forwarding, nothing else touched
        assert fake_vllm.requests[-1] == chat()
        progs = (await c.get("/programs")).json()
        p = progs["p1"]
        assert p["status"] == "acting" and p["state"] == "active"
        assert p["total_tokens"] == body["usage"]["total_tokens"]
        assert p["step_count"] == 1 and p["backend"] == fake_vllm.url and p["inflight"] == 0


async def test_original_bytes_forwarded_when_nothing_to_strip(fake_vllm: FakeVLLM):
    raw = b'{"model":"tiny",  "messages":[{"role":"user","content":"x"}]}'
    async with running_proxy(cfg(fake_vllm.url)) as (c, proxy):
        r = await c.post(
            "/v1/chat/completions",
            content=raw,
            headers={"content-type": "application/json", "x-program-id": "h"},
        )
        assert r.status_code == 200
        assert "h" in (await c.get("/programs")).json()
        assert "x-program-id" not in fake_vllm.request_headers[-1]
        assert fake_vllm.request_headers[-1]["accept-encoding"] == "identity"


async def test_streaming_strips_injected_usage_chunk(fake_vllm: FakeVLLM):
    fake_vllm.completion_tokens = 4
    async with running_proxy(cfg(fake_vllm.url)) as (c, proxy):
        r = await c.post("/v1/chat/completions", json=chat(program_id="s", stream=True))
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-fake-vllm"] == "1"  # backend headers pass through
        events = sse_events(r.text)
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert all(ch["choices"] for ch in chunks), "the usage-only chunk must be stripped"
        assert len(chunks) == 5  # role + 4 tokens
        # ...but the backend was asked for it, and the proxy read it
        assert fake_vllm.requests[-1]["stream_options"] == {"include_usage": True}
        p = (await c.get("/programs")).json()["s"]
        assert p["status"] == "acting" and p["inflight"] == 0
        assert p["total_tokens"] == prompt_tokens_of(fake_vllm.requests[-1]) + 4


async def test_streaming_usage_kept_when_client_asked(fake_vllm: FakeVLLM):
    async with running_proxy(cfg(fake_vllm.url), policy=SpyPolicy(PassthroughPolicy(cfg(fake_vllm.url).policy_settings()))) as (
        c,
        proxy,
    ):
        r = await c.post(
            "/v1/chat/completions",
            json=chat(program_id="u", stream=True, stream_options={"include_usage": True}),
        )
        events = sse_events(r.text)
        last = json.loads(events[-2])
        assert last["choices"] == [] and last["usage"]["total_tokens"] > 0
        assert proxy.policy.end_totals == [("u", last["usage"]["total_tokens"])]


async def test_streaming_include_usage_false_still_measured_but_not_shown(fake_vllm: FakeVLLM):
    spy = SpyPolicy(PassthroughPolicy(cfg(fake_vllm.url).policy_settings()))
    async with running_proxy(cfg(fake_vllm.url), policy=spy) as (c, proxy):
        r = await c.post(
            "/v1/chat/completions",
            json=chat(program_id="f", stream=True, stream_options={"include_usage": False}),
        )
        assert all(json.loads(e)["choices"] for e in sse_events(r.text)[:-1])
        assert fake_vllm.requests[-1]["stream_options"] == {"include_usage": True}
        assert spy.end_totals[0][1] is not None  # exact usage despite the client's choice


async def test_streaming_continuous_usage_uses_last_usage(fake_vllm: FakeVLLM):
    fake_vllm.completion_tokens = 3
    spy = SpyPolicy(PassthroughPolicy(cfg(fake_vllm.url).policy_settings()))
    async with running_proxy(cfg(fake_vllm.url), policy=spy) as (c, proxy):
        so = {"include_usage": True, "continuous_usage_stats": True}
        r = await c.post("/v1/chat/completions", json=chat(program_id="c", stream=True, stream_options=so))
        final = json.loads(sse_events(r.text)[-2])["usage"]["total_tokens"]
        assert spy.end_totals == [("c", final)]  # not the first chunk's running total


@pytest.mark.parametrize(
    "how",
    ["body", "extra_body", "header", "url"],
)
async def test_program_id_sources(fake_vllm: FakeVLLM, how: str):
    async with running_proxy(cfg(fake_vllm.url)) as (c, proxy):
        body, headers, path = chat(), {}, "/v1/chat/completions"
        if how == "body":
            body["program_id"] = "ID-1"
        elif how == "extra_body":
            body["extra_body"] = {"program_id": "ID-1"}
        elif how == "header":
            headers["X-Program-Id"] = "ID-1"
        else:
            path = "/p/ID-1/v1/chat/completions"
        r = await c.post(path, json=body, headers=headers)
        assert r.status_code == 200
        assert list((await c.get("/programs")).json()) == ["ID-1"]
        assert fake_vllm.requests[-1] == chat()  # emptied extra_body removed as well


async def test_program_id_precedence_and_default(fake_vllm: FakeVLLM):
    async with running_proxy(cfg(fake_vllm.url)) as (c, proxy):
        await c.post(
            "/p/url/v1/chat/completions",
            json=chat(program_id=7, extra_body={"program_id": "eb"}),
            headers={"X-Program-Id": "hdr"},
        )
        await c.post(
            "/p/url/v1/chat/completions",
            json=chat(extra_body={"program_id": "eb", "top_k": 3}),
            headers={"X-Program-Id": "hdr"},
        )
        assert fake_vllm.requests[-1]["extra_body"] == {"top_k": 3}  # other extra_body keys kept
        await c.post("/p/url/v1/chat/completions", json=chat(), headers={"X-Program-Id": "hdr"})
        await c.post("/p/url/v1/chat/completions", json=chat())
        await c.post("/v1/chat/completions", json=chat())
        assert set((await c.get("/programs")).json()) == {"7", "eb", "hdr", "url", "default"}


async def test_docker_ids_stripped_and_kept_for_reclaim(fake_vllm: FakeVLLM):
    class Reclaimer:
        def __init__(self):
            self.calls = []

        def schedule(self, pid, resources):
            self.calls.append((pid, resources))

    rc = Reclaimer()
    async with running_proxy(cfg(fake_vllm.url), reclaimer=rc) as (c, proxy):
        await c.post("/v1/chat/completions", json=chat(program_id="d", docker_ids=["c1"]))
        await c.post(
            "/v1/chat/completions",
            json=chat(extra_body={"program_id": "d", "docker_ids": ["c2", "c1"], "tool_ids": "t9"}),
        )
        assert all(
            "docker_ids" not in r and "tool_ids" not in r and "extra_body" not in r
            for r in fake_vllm.requests
        )
        r = await c.post("/programs/release", json={"program_id": "d"})
        assert r.json() == {"program_id": "d", "released": True}
        assert rc.calls == [("d", {"docker_ids": ["c1", "c2"], "tool_ids": ["t9"]})]


async def test_models_health_programs_release(fake_vllm: FakeVLLM):
    async with running_proxy(cfg(fake_vllm.url)) as (c, proxy):
        r = await c.get("/v1/models")
        assert r.status_code == 200 and r.json()["data"][0]["id"] == "tiny"
        assert (await c.get("/p/x/v1/models")).json()["object"] == "list"
        await c.post("/v1/chat/completions", json=chat(program_id="a"))
        h = (await c.get("/health")).json()
        assert h["status"] == "ok" and h["router_mode"] == "default" and h["scheduling_enabled"] is False
        assert (
            h["programs_count"] == 1
            and h["acting_count"] == 1
            and h["reasoning_count"] == 0
            and h["paused_count"] == 0
        )
        assert h["per_backend"][fake_vllm.url]["total"] == 1
        assert h["backends"] == [fake_vllm.url] and h["profile_enabled"] is False
        # release: known, unknown, bad input
        assert (await c.post("/programs/release", json={"program_id": "a"})).json() == {
            "program_id": "a",
            "released": True,
        }
        assert "a" not in (await c.get("/programs")).json()
        assert (await c.post("/programs/release", json={"program_id": "a"})).json() == {
            "program_id": "a",
            "released": False,
        }
        r = await c.post("/programs/release", content=b"{nope")
        assert (
            r.status_code == 400
            and r.json()["detail"] == "Invalid JSON"
            and r.json()["error"]["message"] == "Invalid JSON"
        )
        r = await c.post("/programs/release", json={})
        assert r.status_code == 400 and r.json()["detail"] == "Missing program_id"
        r = await c.post("/programs/release", json=[1])
        assert r.status_code == 400
        # a request for a released id starts a new program
        await c.post("/v1/chat/completions", json=chat(program_id="a"))
        assert (await c.get("/programs")).json()["a"]["step_count"] == 1


async def test_models_without_backends_and_empty_list():
    async with running_proxy(Config(backends=(), router="default")) as (c, proxy):
        assert (await c.get("/v1/models")).json() == {"object": "list", "data": []}
        r = await c.post("/v1/chat/completions", json=chat())
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_backend"


async def test_admin_token_protects_release(fake_vllm: FakeVLLM):
    async with running_proxy(cfg(fake_vllm.url, admin_token="s3cret")) as (c, proxy):
        await c.post("/v1/chat/completions", json=chat(program_id="a"))
        r = await c.post("/programs/release", json={"program_id": "a"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        r = await c.post(
            "/programs/release", json={"program_id": "a"}, headers={"Authorization": "Bearer wrong"}
        )
        assert r.status_code == 401
        assert "a" in (await c.get("/programs")).json()
        r = await c.post("/programs/release", json={"program_id": "a"}, headers={"X-Admin-Token": "s3cret"})
        assert r.json()["released"] is True
        await c.post("/v1/chat/completions", json=chat(program_id="b"))
        r = await c.post(
            "/programs/release", json={"program_id": "b"}, headers={"Authorization": "Bearer s3cret"}
        )
        assert r.json()["released"] is True


async def test_metrics_prometheus_and_json(fake_vllm: FakeVLLM):
    fake_vllm.num_gpu_blocks = 24
    async with running_proxy(cfg(fake_vllm.url)) as (c, proxy):
        assert await proxy.monitor.discover_capacity_once()
        await c.post("/v1/chat/completions", json=chat(program_id="a"))
        r = await c.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        text = r.text
        assert 'thunderagent_programs{phase="acting",state="active"} 1.0' in text
        assert f'thunderagent_backend_capacity_tokens{{backend="{fake_vllm.url}"}} 3072.0' in text
        assert 'thunderagent_requests_total{outcome="ok"} 1.0' in text
        assert 'thunderagent_request_duration_seconds_count{stream="false"} 1.0' in text
        assert "thunderagent_queue_length 0.0" in text and "thunderagent_pauses_total 0.0" in text
        for r in (
            await c.get("/metrics?format=json"),
            await c.get("/metrics", headers={"Accept": "application/json"}),
        ):
            j = r.json()
            assert j["metrics_enabled"] is False and j["metrics_interval"] is None
            b = j["backends"][fake_vllm.url]
            assert b["cache_config"] == {
                "block_size": 128,
                "num_gpu_blocks": 24,
                "total_tokens_capacity": 3072,
            }
            assert b["active_program_count"] == 1 and b["acting_program_count"] == 1
            assert b["buffer_per_program"] == 100 and b["healthy"] is True and "metrics" not in b
        assert (await c.get("/metrics?format=xml")).status_code == 400


async def test_metrics_scrape_fills_metrics_block(fake_vllm: FakeVLLM):
    async with running_proxy(cfg(fake_vllm.url, metrics=True, metrics_interval=3600)) as (c, proxy):
        await c.post("/v1/chat/completions", json=chat(program_id="a"))
        await proxy.monitor.scrape_once()
        m = (await c.get("/metrics?format=json")).json()["backends"][fake_vllm.url]["metrics"]
        assert m["requests_completed"] == 1.0
        assert m["prefix_cache_hit_rate"] == round(11392 / 14839, 4)
        assert m["history_size"] == 1 and m["last_updated"] is not None
        assert "vllm:num_requests_running" in (await c.get("/metrics")).text


async def test_profiles_off_and_on(fake_vllm: FakeVLLM, tmp_path):
    async with running_proxy(cfg(fake_vllm.url)) as (c, proxy):
        r = await c.get("/profiles")
        assert r.status_code == 400 and "Profiling not enabled" in r.json()["error"]["message"]
        assert (await c.get("/profiles/x")).status_code == 400
    fake_vllm.report_cached = True
    async with running_proxy(cfg(fake_vllm.url, profile=True, profile_dir=str(tmp_path))) as (c, proxy):
        await c.post("/v1/chat/completions", json=chat(program_id="a", stream=True))
        await c.post("/v1/chat/completions", json=chat(program_id="a"))
        prof = (await c.get("/profiles/a")).json()
        assert prof["step_count"] == 2 and prof["avg_prefill_s"] >= 0 and prof["avg_kv_hit_rate"] is not None
        assert set((await c.get("/profiles")).json()) == {"a"}
        assert (await c.get("/programs")).json()["a"]["profile"]["step_count"] == 2
        r = await c.get("/profiles/nope")
        assert r.status_code == 404 and r.json()["detail"] == "Profile not found for program: nope"


async def test_unknown_route_and_method_are_openai_errors(fake_vllm: FakeVLLM):
    async with running_proxy(cfg(fake_vllm.url)) as (c, proxy):
        r = await c.post("/v1/messages", json={})
        assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}
        r = await c.get("/v1/completions")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
        r = await c.get("/v1/chat/completions")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
