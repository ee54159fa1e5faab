"""Client-side step records for the real agents: one StepRecord per LLM HTTP call (retries included).

The agent libraries call the model synchronously from a worker thread (OpenHands' `LLM._transport_call`,
mini-swe-agent's `LitellmModel._query`); each agent wraps that one call site with `StepRecorder.call()`.
We hook the libraries' own call sites instead of litellm's global callbacks because litellm delivers
sync success/failure callbacks later on a background executor: a record could then arrive after the
program was released, and global callbacks would have to be routed back to the right instance.

Records are handed to the runner's sink on the runner's event loop (`loop.call_soon_threadsafe`), so the
sink never runs on a library thread, and all records of an instance are delivered before its
`run_instance` coroutine resumes (the worker thread's result is delivered through the same loop queue).
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from harness.agents.base import StepSink
from ThunderAgent.records import StepRecord


class CallRecord:
    """Filled in by the caller inside `StepRecorder.call()` once the response is known."""

    __slots__ = ("prompt_tokens", "completion_tokens", "cached_tokens")

    def __init__(self) -> None:
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.cached_tokens: int | None = None

    def usage_from(self, response: Any) -> None:
        """Take token counts from an OpenAI/litellm response (object or dict); missing fields stay None."""
        usage = _get(response, "usage")
        if usage is None:
            return
        self.prompt_tokens = _get(usage, "prompt_tokens")
        self.completion_tokens = _get(usage, "completion_tokens")
        details = _get(usage, "prompt_tokens_details")
        if details is not None:
            self.cached_tokens = _get(details, "cached_tokens")


def _get(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


class StepRecorder:
    """Numbers and reports the LLM calls of one program (one SWE-bench instance)."""

    def __init__(self, program_id: str, instance_id: str, sink: StepSink,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.program_id = program_id
        self.instance_id = instance_id
        self._sink = sink
        self._loop = loop
        self._lock = threading.Lock()
        self.calls = 0
        self.errors = 0

    @contextmanager
    def call(self) -> Iterator[CallRecord]:
        with self._lock:
            self.calls += 1
            step = self.calls
        rec = CallRecord()
        start = time.time()
        status, error, http_status = "ok", None, 200
        try:
            yield rec
        except BaseException as e:  # record, then let the library handle it (retry, abort, ...)
            status = "cancelled" if isinstance(e, (asyncio.CancelledError, KeyboardInterrupt)) else "error"
            error = f"{type(e).__name__}: {e}"[:500]
            http_status = getattr(e, "status_code", None)
            with self._lock:
                self.errors += 1
            raise
        finally:
            self.emit(StepRecord(
                program_id=self.program_id, step=step, arrival=start, start=start, end=time.time(),
                status=status, prompt_tokens=rec.prompt_tokens, completion_tokens=rec.completion_tokens,
                cached_tokens=rec.cached_tokens, http_status=http_status, error=error,
                instance_id=self.instance_id,
            ))

    def emit(self, record: StepRecord) -> None:
        loop = self._loop
        if loop is None or loop.is_closed() or _running_loop() is loop:
            self._sink(record)
            return
        try:
            loop.call_soon_threadsafe(self._sink, record)
        except RuntimeError:  # the loop closed in between: deliver directly rather than lose it
            self._sink(record)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
