"""Property: whatever JSON a client sends to /v1/chat/completions, the proxy answers 200 or an
OpenAI-style 4xx error — never a 5xx, never an unhandled exception — and leaves no request in flight."""

from __future__ import annotations

import asyncio
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fakes.fake_vllm import FakeVLLM
from tests.fakes.proxy_kit import chat, running_proxy
from ThunderAgent.config import Config

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-5, 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELDS = [
    "messages",
    "stream",
    "stream_options",
    "program_id",
    "extra_body",
    "docker_ids",
    "tool_ids",
    "tools",
    "model",
    "max_tokens",
]
mutations = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=4)
bodies = st.one_of(json_values.map(json.dumps), mutations.map(lambda m: json.dumps({**chat(), **m})))


@settings(max_examples=2, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(bodies, min_size=40, max_size=40))
def test_no_5xx_for_any_json(fake_vllm: FakeVLLM, batch: list[str]):
    async def run() -> None:
        async with running_proxy(Config(backends=(fake_vllm.url,), router="default")) as (c, proxy):
            for raw in batch:
                r = await c.post(
                    "/v1/chat/completions", content=raw.encode(), headers={"content-type": "application/json"}
                )
                assert r.status_code < 500, (raw, r.status_code, r.text)
                if r.status_code != 200:
                    assert set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text
            assert all(rec.inflight == 0 and rec.held == 0 for rec in proxy.registry.records())

    asyncio.run(run())
