"""Reliability defects found by probing the proxy as an attacker and as an unlucky operator would: client
mistakes that were 5xx, inputs that poisoned a read-only route for everyone, silent holds, unbounded waits
and reads, leaked secrets, eviction used against someone else's program. Each test here failed on the code
before the fix and names what it proves."""

from __future__ import annotations

import json
import logging

import pytest

from ThunderAgent.config import Config
from ThunderAgent.logsafe import escape_control
from ThunderAgent.records import StepRecord
from tests.fakes.fake_vllm import FakeVLLM
from tests.fakes.proxy_kit import chat, running_proxy

LONE = [
    b'{"model":"tiny","messages":[{"role":"user","content":"\\ud800"}]}',
    b'{"model":"tiny","messages":[{"role":"user","content":"x\\udfffy"}],"stream":true}',
    b'{"model":"tiny","messages":[{"role":"user","content":"hi"}],"program_id":"s\\udc00"}',
    b'{"model":"tiny","messages":[{"role":"user","content":"hi"}],"extra_body":{"program_id":"\\uDBFF"}}',
    b'{"model":"tiny","messages":[{"role":"user","content":"hi"}],"\\ud800key":1}',
]


@pytest.mark.parametrize("body", LONE, ids=range(len(LONE)))
async def test_lone_surrogate_is_a_client_error_and_poisons_nothing(fake_vllm: FakeVLLM, body: bytes) -> None:
    cfg = Config(backends=(fake_vllm.url,), router="default", profile=False)
    async with running_proxy(cfg) as (client, proxy):
        r = await client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "invalid_unicode"
        assert proxy.registry.records() == []
        assert (await client.get("/programs")).status_code == 200
        # a surrogate pair is one valid code point: accepted
        ok = b'{"model":"tiny","messages":[{"role":"user","content":"\\ud83d\\ude00"}],"program_id":"p\\ud83d\\ude00"}'
        r = await client.post("/v1/chat/completions", content=ok, headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        assert "p\U0001F600" in (await client.get("/programs")).json()


async def test_read_only_views_survive_a_lone_surrogate_that_got_in(fake_vllm: FakeVLLM, tmp_path) -> None:
    """Defence in depth: even if such an id reached the registry, /programs, /profiles and release answer
    200 and the step record is written."""
    cfg = Config(backends=(fake_vllm.url,), router="default", profile=True, profile_dir=str(tmp_path))
    async with running_proxy(cfg) as (client, proxy):
        proxy.registry.get_or_create("bad\udc00", proxy.clock())
        proxy.policy.on_arrival("bad\udc00", 10, proxy.clock())
        for path in ("/programs", "/profiles", "/health", "/metrics?format=json"):
            r = await client.get(path)
            assert r.status_code == 200, (path, r.text)
        assert "bad\udc00" in (await client.get("/programs")).json()
    line = StepRecord(program_id="bad\udc00", step=1, arrival=0.0, start=0.0, end=1.0, status="ok").to_json()
    line.encode()  # would raise UnicodeEncodeError before the fix: the record was lost
    assert json.loads(line)["program_id"] == "bad\udc00"


def test_bidi_and_invisible_characters_are_escaped_in_logs() -> None:
    for ch in ("\u202e", "\u2066", "\u2069", "\u200f", "\u061c", "\ufeff", "\u200b", "\ud800"):
        out = escape_control(f"program a{ch}b")
        assert ch not in out and "\\u" in out, (ch, out)


async def test_bidi_program_id_logged_escaped(fake_vllm: FakeVLLM, caplog: pytest.LogCaptureFixture) -> None:
    from ThunderAgent.logsafe import EscapingFilter

    handler_filter = EscapingFilter()
    cfg = Config(backends=(fake_vllm.url,), router="default")
    with caplog.at_level(logging.INFO, logger="thunderagent"):
        async with running_proxy(cfg) as (client, _):
            r = await client.post("/v1/chat/completions", json=chat(program_id="evil\u202etxt.exe"))
            assert r.status_code == 200
    recs = [r for r in caplog.records if "evil" in r.getMessage()]
    assert recs
    for rec in recs:
        handler_filter.filter(rec)
        assert "\u202e" not in rec.getMessage() and "evil\\u202etxt.exe" in rec.getMessage()


@pytest.mark.parametrize("where", ["body", "extra_body", "header"])
async def test_empty_program_id_is_an_error_not_default(fake_vllm: FakeVLLM, where: str) -> None:
    cfg = Config(backends=(fake_vllm.url,), router="default")
    async with running_proxy(cfg) as (client, proxy):
        body = chat()
        headers = {}
        if where == "body":
            body["program_id"] = ""
        elif where == "extra_body":
            body["extra_body"] = {"program_id": ""}
        else:
            headers["X-Program-Id"] = ""
        r = await client.post("/v1/chat/completions", json=body, headers=headers)
        assert r.status_code == 400, r.text
        assert "must not be empty" in r.json()["error"]["message"]
        assert proxy.registry.get("default") is None


async def test_release_413_names_its_own_limit(fake_vllm: FakeVLLM) -> None:
    cfg = Config(backends=(fake_vllm.url,), router="default")
    async with running_proxy(cfg) as (client, _):
        r = await client.post("/programs/release", content=b'{"program_id":"' + b"x" * 70_000 + b'"}')
        assert r.status_code == 413
        msg = r.json()["error"]["message"]
        assert "--max-body-bytes" not in msg and "65536" in msg and "release" in msg
