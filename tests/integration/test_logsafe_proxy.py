"""With ThunderAgent.logsafe installed on the log handlers, client-chosen program ids cannot forge proxy log
lines (the proxy logs new/released/expired programs by id)."""

from __future__ import annotations

import logging

import pytest

from tests.fakes.fake_vllm import FakeVLLM
from tests.fakes.proxy_kit import chat, running_proxy
from ThunderAgent.config import Config
from ThunderAgent.logsafe import EscapingFilter

EVIL = "evil\nERROR thunderagent.app: forged\r\x1b[2K\u2028line"


async def test_program_ids_cannot_forge_proxy_log_lines(
    fake_vllm: FakeVLLM, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(EscapingFilter())
    with caplog.at_level(logging.INFO):
        async with running_proxy(Config(backends=(fake_vllm.url,), router="default")) as (client, _proxy):
            assert (await client.post("/v1/chat/completions", json=chat(program_id=EVIL))).status_code == 200
            r = await client.post("/programs/release", json={"program_id": EVIL})
            assert r.status_code == 200 and r.json()["released"] is True
    mentioning = [m for m in caplog.messages if "evil" in m]
    assert len(mentioning) >= 2  # "new program ..." and "... released"
    for m in caplog.messages:
        assert not any(c in m for c in "\n\r\x1b\u2028"), m
