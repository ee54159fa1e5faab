"""Shared pytest fixtures.

`fake_vllm`: a started tests.fakes.fake_vllm.FakeVLLM (real HTTP server on 127.0.0.1:<free port>, serving
vLLM-shaped /v1/chat/completions, /v1/models, /health, /metrics); stopped after the test. Its knobs
(delay, token_delay, fail_status, die_after_chunks, ...) may be changed inside the test.
`fake_vllm_factory`: call it (with FakeVLLM keyword arguments) for more backends; all are stopped after.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from tests.fakes.fake_vllm import FakeVLLM


@pytest.fixture
def fake_vllm_factory() -> Iterator[Callable[..., FakeVLLM]]:
    started: list[FakeVLLM] = []

    def make(**kw: Any) -> FakeVLLM:
        f = FakeVLLM(**kw).start()
        started.append(f)
        return f

    yield make
    for f in started:
        f.stop()


@pytest.fixture
def fake_vllm(fake_vllm_factory: Callable[..., FakeVLLM]) -> FakeVLLM:
    return fake_vllm_factory()
