"""The simulated vLLM HTTP server: OpenAI routes, vLLM error shapes, usage with cached tokens, /metrics read by
ThunderAgent's own parsers and capacity discovery, scripted tool calls, and KV-pressure preemptions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.sim.server import load_script, serve_in_thread
from harness.sim.tokenizer import EstimateTokenizer
from ThunderAgent.backends import BackendState, fetch_capacity, parse_cache_config, parse_vllm_metrics


@contextmanager
def sim_server(profile: str = "tiny-cpu", *, time_scale: float = 50.0, num_gpu_blocks: int | None = None,
               **kw: Any) -> Iterator[str]:
    with serve_in_thread(profile, time_scale=time_scale, num_gpu_blocks=num_gpu_blocks, **kw) as u:
        yield u


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with sim_server() as u:
        yield u


def words(n: int, tag: str = "w") -> str:
    return "".join(f" {tag}{i}" for i in range(n))


def chat(url: str, messages: list[dict[str, Any]], **kw: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny-cpu", "messages": messages, **kw}, timeout=30)


def test_models_health_version(url: str) -> None:
    m = httpx.get(f"{url}/v1/models").json()
    assert m["data"][0]["id"] == "tiny-cpu" and m["data"][0]["max_model_len"] == 2048
    assert m["data"][0]["simulated"] is True
    assert httpx.get(f"{url}/version").json()["version"].startswith("0.")


def test_chat_usage_tokenize_and_prefix_cache_hits(url: str) -> None:
    msgs = [{"role": "system", "content": "sys" + words(200, "s")}, {"role": "user", "content": words(90, "u")}]
    r1 = chat(url, msgs, max_tokens=100)
    assert r1.status_code == 200, r1.text
    u1 = r1.json()["usage"]
    assert u1["completion_tokens"] == 100
    tk = httpx.post(f"{url}/tokenize", json={"model": "tiny-cpu", "messages": msgs}).json()
    assert tk["count"] == u1["prompt_tokens"]
    # the same prompt again: every full block except one token's worth is cached (block size 128)
    r2 = chat(url, msgs, max_tokens=5)
    assert r2.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == (u1["prompt_tokens"] - 1) // 128 * 128
    # next turn: previous prompt + the assistant's output + a new message; the output's blocks are reused too
    reply = r1.json()["choices"][0]["message"]["content"]
    msgs2 = msgs + [{"role": "assistant", "content": reply}, {"role": "user", "content": words(20, "x")}]
    r3 = chat(url, msgs2, max_tokens=4)
    computed = u1["prompt_tokens"] + 100 - 1  # the last sampled token never enters the KV cache
    assert r3.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == computed // 128 * 128
    assert r3.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > u1["prompt_tokens"] // 128 * 128


def test_streaming_with_include_usage(url: str) -> None:
    body = {"model": "tiny-cpu", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 6,
            "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert len(text.split()) == 6
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"


def test_vllm_error_shapes(url: str) -> None:
    r = chat(url, [{"role": "user", "content": "x"}], model="nope")
    assert r.status_code == 404
    assert r.json() == {"error": {"message": "The model `nope` does not exist. Valid aliases: tiny-cpu.",
                                  "type": "NotFoundError", "param": "model", "code": 404}}
    r = chat(url, [{"role": "user", "content": words(2100)}])
    assert r.status_code == 400 and r.json()["error"]["type"] == "BadRequestError"
    assert "maximum context length is 2048 tokens" in r.json()["error"]["message"]
    r = chat(url, [{"role": "user", "content": "x"}], max_tokens=2047)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    r = httpx.post(f"{url}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    r = chat(url, [])
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_completions_with_token_ids(url: str) -> None:
    ids = list(range(100, 400))
    r = httpx.post(f"{url}/v1/completions", json={"model": "tiny-cpu", "prompt": ids, "max_tokens": 8,
                                                   "return_token_ids": True}, timeout=30)
    assert r.status_code == 200, r.text
    c = r.json()["choices"][0]
    assert len(c["token_ids"]) == 8 and r.json()["usage"]["prompt_tokens"] == 300
    r2 = httpx.post(f"{url}/v1/completions", json={"model": "tiny-cpu", "prompt": ids + c["token_ids"] + [5, 6],
                                                    "max_tokens": 2}, timeout=30)
    assert r2.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 256


async def test_metrics_parse_with_thunderagent_parsers_and_capacity_discovery(url: str) -> None:
    chat(url, [{"role": "user", "content": "hello"}], max_tokens=3)
    text = httpx.get(f"{url}/metrics").text
    assert parse_cache_config(text) == (128, 24)
    m = parse_vllm_metrics(text)
    for key in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "vllm:prompt_tokens_total",
                "vllm:generation_tokens_total", "vllm:num_preemptions_total", "vllm:request_success_total"):
        assert key in m, key
    assert m["vllm:request_success_total"] >= 1 and m["vllm:generation_tokens_total"] >= 3
    assert m["thunderbench_sim_engine_time_lost_seconds_total"] == 0.0  # a short call: the server kept up
    async with httpx.AsyncClient() as client:
        st = BackendState(url=url)
        assert await fetch_capacity(client, st) == 24 * 128


def test_kv_pressure_preempts_like_vllm() -> None:
    """The capture's setting (shared/samples/vllm-metrics-sample-kv-pressure.txt): 24 blocks, 24 concurrent
    requests x 1024 output tokens -> the cache fills, requests wait and get preempted. Prompts are sized in the
    estimator's tokens (one per filler word), so the engine sees the same load whether or not the tiny model's
    tokenizer is installed."""
    with sim_server(time_scale=20.0, num_gpu_blocks=24, tokenizer=EstimateTokenizer()) as u:
        body = {"model": "tiny-cpu", "max_tokens": 1024, "ignore_eos": True}

        async def one(i: int, client: httpx.AsyncClient) -> dict[str, Any]:
            msgs = [{"role": "system", "content": "You are a helpful assistant." + words(300, "s")},
                    {"role": "user", "content": words(80, f"q{i}_")}]
            r = await client.post(f"{u}/v1/chat/completions", json={**body, "messages": msgs}, timeout=120)
            assert r.status_code == 200, r.text
            return r.json()

        async def probe(client: httpx.AsyncClient) -> tuple[float, float]:
            top_wait = top_usage = 0.0
            for _ in range(400):
                m = parse_vllm_metrics((await client.get(f"{u}/metrics")).text)
                top_wait = max(top_wait, m["vllm:num_requests_waiting"])
                top_usage = max(top_usage, m["vllm:kv_cache_usage_perc"])
                if top_wait and top_usage >= 0.99:
                    break
                await asyncio.sleep(0.01)
            return top_wait, top_usage

        async def main() -> tuple[list[dict[str, Any]], tuple[float, float]]:
            async with httpx.AsyncClient() as client:
                p = asyncio.create_task(probe(client))
                res = await asyncio.gather(*(one(i, client) for i in range(24)))
                return res, await p

        res, (top_wait, top_usage) = asyncio.run(main())
        assert all(r["usage"]["completion_tokens"] == 1024 for r in res)
        m = parse_vllm_metrics(httpx.get(f"{u}/metrics").text)
        assert m["vllm:num_preemptions_total"] > 0
        assert top_wait > 0 and top_usage >= 0.99
        assert m["vllm:request_success_total"] == 24
        # as in the capture: queries are counted once per request, not per re-admission
        assert m["vllm:prefix_cache_queries_total"] == m["vllm:prompt_tokens_total"]


def test_script_mode_returns_tool_calls(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps([
        {"tool_calls": [{"name": "execute_bash", "arguments": {"command": "ls"}}]},
        {"content": "done"},
    ]))
    with sim_server(script=load_script(script)) as u:
        msgs: list[dict[str, Any]] = [{"role": "user", "content": "fix the bug"}]
        r = chat(u, msgs, tools=[{"type": "function", "function": {"name": "execute_bash", "parameters": {}}}])
        c = r.json()["choices"][0]
        assert c["finish_reason"] == "tool_calls"
        call = c["message"]["tool_calls"][0]
        assert call["function"]["name"] == "execute_bash" and json.loads(call["function"]["arguments"]) == {"command": "ls"}
        msgs += [c["message"], {"role": "tool", "tool_call_id": call["id"], "content": "a.py"}]
        r = chat(u, msgs)
        assert r.json()["choices"][0]["message"]["content"] == "done"
        assert r.json()["choices"][0]["finish_reason"] == "stop"
    bad = tmp_path / "bad.json"
    bad.write_text("[{}]")
    with pytest.raises(ValueError):
        load_script(bad)


def test_client_disconnect_aborts_the_request() -> None:
    with sim_server(time_scale=1.0) as u:
        body = {"model": "tiny-cpu", "messages": [{"role": "user", "content": "long"}], "max_tokens": 1500,
                "stream": True}
        with httpx.stream("POST", f"{u}/v1/chat/completions", json=body, timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and '"content": ""' not in line:
                    break  # first token seen: hang up mid-generation
        deadline = 50
        m: dict[str, float] = {}
        for _ in range(deadline):
            m = parse_vllm_metrics(httpx.get(f"{u}/metrics").text)
            if m["vllm:num_requests_running"] == 0:
                break
            httpx.get(f"{u}/health")  # a little time passes between polls
        assert m["vllm:num_requests_running"] == 0 and m["vllm:kv_cache_usage_perc"] == 0.0
        text = httpx.get(f"{u}/metrics").text
        assert 'vllm:request_success_total{engine="0",finished_reason="abort",model_name="tiny-cpu"} 1.0' in text


def test_a_non_streaming_client_that_gives_up_aborts_its_request() -> None:
    """/v1/completions without streaming: the client times out mid-generation, the server sees the disconnect
    (it checks every 0.5 s while waiting) and aborts the request in the engine, as vLLM does."""
    import time

    with sim_server(time_scale=1.0) as u:
        body = {"model": "tiny-cpu", "prompt": list(range(16, 116)), "max_tokens": 1500}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{u}/v1/completions", json=body, timeout=0.3)
        deadline = time.monotonic() + 20
        text = ""
        while time.monotonic() < deadline:
            text = httpx.get(f"{u}/metrics").text
            if 'finished_reason="abort",model_name="tiny-cpu"} 1.0' in text:
                break
        m = parse_vllm_metrics(text)
        assert 'vllm:request_success_total{engine="0",finished_reason="abort",model_name="tiny-cpu"} 1.0' in text
        assert m["vllm:num_requests_running"] == 0 and m["vllm:kv_cache_usage_perc"] == 0.0


def test_histograms_are_cumulative_and_count_requests(url: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    before = parse_vllm_metrics(httpx.get(f"{url}/metrics").text)["vllm:request_success_total"]
    for i in range(3):
        chat(url, [{"role": "user", "content": f"q{i}" + words(10)}], max_tokens=4)
    fams = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)}
    e2e = fams["vllm:e2e_request_latency_seconds"]
    buckets = [s.value for s in e2e.samples if s.name.endswith("_bucket")]
    assert buckets == sorted(buckets)  # cumulative
    count = next(s.value for s in e2e.samples if s.name.endswith("_count"))
    assert count == buckets[-1] >= before + 3
    gen = fams["vllm:request_generation_tokens"]
    assert next(s.value for s in gen.samples if s.name.endswith("_count")) == count


def test_streaming_completions(url: str) -> None:
    body = {"model": "tiny-cpu", "prompt": list(range(50, 90)), "max_tokens": 20, "stream": True,
            "stream_options": {"include_usage": True}, "return_token_ids": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 20
    ids = [t for c in chunks if c["choices"] for t in c["choices"][0]["token_ids"]]
    assert len(ids) == 20
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
