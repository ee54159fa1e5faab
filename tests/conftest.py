"""Shared pytest fixtures.

`fake_vllm`: a started tests.fakes.fake_vllm.FakeVLLM (real HTTP server on 127.0.0.1:<free port>, serving
vLLM-shaped /v1/chat/completions, /v1/models, /health, /metrics); stopped after the test. Its knobs
(delay, token_delay, fail_status, die_after_chunks, ...) may be changed inside the test.
`fake_vllm_factory`: call it (with FakeVLLM keyword arguments) for more backends; all are stopped after.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterator

import pytest

from tests.fakes.fake_vllm import FakeVLLM


# The root logger as it is before any test module is imported (conftest is imported first).
_ROOT = logging.getLogger()
_ROOT_BASELINE = (_ROOT.level, list(_ROOT.handlers), list(_ROOT.filters))


def _restore_root_logging() -> None:
    level, handlers, filters = _ROOT_BASELINE
    for h in list(_ROOT.handlers):
        if h not in handlers:
            _ROOT.removeHandler(h)
    for h in handlers:
        if h not in _ROOT.handlers:
            _ROOT.addHandler(h)
    _ROOT.filters[:] = filters
    _ROOT.setLevel(level)


@pytest.fixture(autouse=True)
def _isolate_root_logging() -> Iterator[None]:
    """Give every test the root logger as it was before collection. Some libraries reconfigure logging when
    imported (openhands-sdk 1.58.2 sets the root level to INFO and adds a RichHandler), at collection time or in
    a test; left alone that leaks into later tests: proxy INFO lines reach caplog and the rich handler keeps
    records alive (seen as a memory 'leak' by the never-released-programs test)."""
    _restore_root_logging()
    yield
    _restore_root_logging()


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
