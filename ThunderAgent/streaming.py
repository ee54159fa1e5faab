"""Reading usage and progress out of a backend's answer: `usage_from` for a response object or stream chunk
(chat, text completions, the Responses API), and `SSETap`, which watches an event stream as it is relayed.

Bytes flow through unchanged, except that when the proxy itself asked the backend for a usage chunk
(`stream_options.include_usage`) that the client did not request, the usage-only chunk is removed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable

MAX_SSE_EVENT_BYTES = 1024 * 1024  # an SSE event held for inspection beyond this is passed on whole
PROGRESS_EVENTS = 20  # report streaming progress to the policy every N content events (upstream: 20)


# --- usage ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None  # None when the engine does not report it


def _int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and math.isfinite(v):
        return int(v)
    return None


def usage_from(obj: Any) -> Usage | None:
    """Usage from a response object or stream chunk; None unless its total is a finite number.

    Chat and text completions carry `usage.{prompt,completion,total}_tokens` and
    `prompt_tokens_details.cached_tokens`; the Responses API carries `usage.{input,output,total}_tokens` and
    `input_tokens_details.cached_tokens`, on the response object itself or, when streamed, on the
    `response` of its final event (`response.completed`, or `.incomplete` / `.failed`)."""
    if not isinstance(obj, dict):
        return None
    u = obj.get("usage")
    if not isinstance(u, dict):
        inner = obj.get("response")  # a Responses API stream event
        u = inner.get("usage") if isinstance(inner, dict) else None
        if not isinstance(u, dict):
            return None
    total = _int(u.get("total_tokens"))
    if "input_tokens" in u or "output_tokens" in u:
        prompt, completion = _int(u.get("input_tokens")), _int(u.get("output_tokens"))
        details = u.get("input_tokens_details")
        if total is None and prompt is not None and completion is not None:
            total = prompt + completion
    else:
        prompt, completion = _int(u.get("prompt_tokens")), _int(u.get("completion_tokens"))
        details = u.get("prompt_tokens_details")
    if total is None:
        return None
    if completion is None and prompt is not None:
        completion = max(0, total - prompt)
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else None
    return Usage(prompt, completion, total, cached)


# --- streaming ------------------------------------------------------------------------------------------


class SSETap:
    """Watches an SSE byte stream: finds usage, first-token time and progress (events that carry generated
    text); optionally removes the usage-only chunk (`"choices": []` with usage) that the proxy injected.

    Without stripping, every input chunk is forwarded unchanged as it arrives. With stripping, complete
    events are forwarded byte-for-byte and an incomplete trailing event is held until it completes.
    """

    def __init__(self, strip_usage_chunk: bool, on_event: Callable[[int], None] | None = None) -> None:
        self.strip = strip_usage_chunk
        self.usage: Usage | None = None
        self.events = 0  # data events other than [DONE]
        self.saw_done = False
        self._buf = b""
        self._on_event = on_event  # called with the running event count

    def feed(self, chunk: bytes) -> bytes:
        """Consume a chunk; return the bytes to forward now."""
        self._buf += chunk
        out: list[bytes] = []
        while True:
            cut = _event_end(self._buf)
            if cut is None:
                break
            event, self._buf = self._buf[:cut], self._buf[cut:]
            if self._inspect(event) or not self.strip:
                out.append(event)
        if len(self._buf) > MAX_SSE_EVENT_BYTES:
            # An event that never ends (a backend streaming without blank lines): pass it on uninspected
            # rather than hold it all. Too big to be the usage-only chunk, so nothing is lost by not
            # parsing it.
            out.append(self._buf)
            self._buf = b""
        if not self.strip:
            return chunk
        return b"".join(out)

    def flush(self) -> bytes:
        """The held remainder at the end of the stream (an unterminated last event)."""
        rest, self._buf = self._buf, b""
        if rest.strip() and not self._inspect(rest) and self.strip:
            return b""
        return rest if self.strip else b""

    def _inspect(self, event: bytes) -> bool:
        """Parse one event; returns False if it is a usage-only chunk (to be stripped)."""
        data = _event_data(event)
        if data is None:
            return True
        if data == b"[DONE]":
            self.saw_done = True
            return True
        if not _lifecycle_event(event):
            self.events += 1
            if self._on_event is not None:
                self._on_event(self.events)
        if b'"usage"' not in data:
            return True
        try:
            obj = json.loads(data)
        except ValueError:
            return True
        u = usage_from(obj)
        if u is None:
            return True
        self.usage = u  # the last usage seen is final (continuous_usage_stats sends one per chunk)
        return not (isinstance(obj, dict) and obj.get("choices") == [])


def _event_end(buf: bytes) -> int | None:
    """Index just past the first complete event (terminated by a blank line) in buf, or None."""
    a = buf.find(b"\n\n")
    b = buf.find(b"\r\n\r\n")
    if a < 0 and b < 0:
        return None
    if b >= 0 and (a < 0 or b < a):
        return b + 4
    return a + 2


def _lifecycle_event(event: bytes) -> bool:
    """A Responses API event that carries no generated text (`event: response.created`, `.in_progress`,
    `.output_item.added`, `.completed`, ...): not counted as progress or as the first token. Its text comes
    in `*.delta` events."""
    for line in event.splitlines():
        if line.startswith(b"event:"):
            name = line[6:].strip()
            return name.startswith(b"response.") and not name.endswith(b".delta")
    return False


def _event_data(event: bytes) -> bytes | None:
    parts = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            parts.append(line[5:].lstrip(b" "))
    if not parts:
        return None
    data = b"\n".join(parts).strip()
    return data or None
