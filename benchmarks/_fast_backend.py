"""A fast fake OpenAI backend for benchmarks/proxy_overhead.py (not a benchmark: scripts/bench.sh skips _*.py).

tests/fakes/fake_vllm.py is faithful (it records every request, validates, has fault knobs) but costs a few
hundred microseconds of Python per request behind uvicorn and an ASGI app: under concurrency on a small box it
would cap the throughput figure itself. This one is a bare asyncio Protocol on uvloop with the C HTTP parser
(httptools) answering from canned bytes, so the proxy (not the fake) is what a max-requests/s run measures:

* POST /v1/chat/completions: a vLLM-shaped chat completion (non-streaming), or, with `"stream": true`, an SSE
  stream written one event per write (role chunk, `--completion-tokens` content chunks, the usage chunk when
  `stream_options.include_usage` is set, `[DONE]`), chunked transfer encoding;
* GET /metrics: vLLM's captured /metrics text (so tr learns a KV capacity, as from a real engine);
* GET /health, GET /v1/models; anything else 404. HTTP/1.1 keep-alive; `Connection: close` honoured.

    python benchmarks/_fast_backend.py --port 8100 [--completion-tokens 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import httptools

ROOT = Path(__file__).resolve().parent.parent
MODEL = "tiny"


def _response(status: int, reason: bytes, ctype: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n" % (status, reason, ctype, len(body))
        + body
    )


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Canned:
    """Every response body, built once."""

    def __init__(self, completion_tokens: int, metrics_text: str) -> None:
        n = completion_tokens
        usage = {"prompt_tokens": 60, "total_tokens": 60 + n, "completion_tokens": n, "prompt_tokens_details": None}
        created = int(time.time())
        completion = {
            "id": "chatcmpl-fast",
            "object": "chat.completion",
            "created": created,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": " entry" * n, "tool_calls": []},
                    "logprobs": None,
                    "finish_reason": "length",
                    "stop_reason": None,
                }
            ],
            "usage": usage,
        }
        self.chat = _response(200, b"OK", b"application/json", json.dumps(completion).encode())

        def event(choices: list, with_usage: bool = False) -> bytes:
            ev: dict = {"id": "chatcmpl-fast", "object": "chat.completion.chunk", "created": created,
                        "model": MODEL, "choices": choices}
            if with_usage:
                ev["usage"] = usage
            return _chunk(b"data: " + json.dumps(ev).encode() + b"\n\n")

        first = [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]
        self.stream_head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        self.stream_events = [event(first)] + [
            event([{"index": 0, "delta": {"content": " entry"}, "logprobs": None,
                    "finish_reason": "length" if i == n - 1 else None}])
            for i in range(n)
        ]
        self.stream_usage = event([], with_usage=True)
        self.stream_tail = _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
        self.metrics = _response(200, b"OK", b"text/plain; version=0.0.4; charset=utf-8", metrics_text.encode())
        self.health = _response(200, b"OK", b"application/json", b"{}")
        models = {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "vllm", "max_model_len": 2048}]}
        self.models = _response(200, b"OK", b"application/json", json.dumps(models).encode())
        self.not_found = _response(404, b"Not Found", b"application/json", b'{"detail":"Not Found"}')
        self.bad = _response(400, b"Bad Request", b"application/json", b'{"error":{"message":"bad request"}}')


class FastHTTP(asyncio.Protocol):
    """One connection: parse requests with httptools, answer from `Canned`."""

    def __init__(self, canned: Canned) -> None:
        self.canned = canned
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._write(self.canned.bad, close=True)
        except httptools.HttpParserError:
            self._write(self.canned.bad, close=True)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        close = not self.parser.should_keep_alive()
        c = self.canned
        if path == b"/v1/chat/completions" and method == b"POST":
            try:
                req = json.loads(b"".join(self.body))
            except ValueError:
                self._write(c.bad, close)
                return
            if isinstance(req, dict) and req.get("stream"):
                so = req.get("stream_options")
                usage = isinstance(so, dict) and bool(so.get("include_usage"))
                self._stream(usage, close)
            else:
                self._write(c.chat, close)
        elif method == b"GET" and path == b"/metrics":
            self._write(c.metrics, close)
        elif method == b"GET" and path == b"/health":
            self._write(c.health, close)
        elif method == b"GET" and path == b"/v1/models":
            self._write(c.models, close)
        else:
            self._write(c.not_found, close)

    def _write(self, data: bytes, close: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(data)
        if close:
            self.transport.close()

    def _stream(self, usage: bool, close: bool) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        t.write(self.canned.stream_head)
        for ev in self.canned.stream_events:  # one write per event, as an engine streams tokens
            t.write(ev)
        if usage:
            t.write(self.canned.stream_usage)
        t.write(self.canned.stream_tail)
        if close:
            t.close()


def metrics_text() -> str:
    """The captured vLLM /metrics text with a roomy KV cache (the test fake renders it)."""
    sys.path.insert(0, str(ROOT))
    from tests.fakes.fake_vllm import FakeVLLM

    return FakeVLLM(num_gpu_blocks=65536).metrics_text()


async def serve(host: str, port: int, completion_tokens: int) -> None:
    canned = Canned(completion_tokens, metrics_text())
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FastHTTP(canned), host, port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--completion-tokens", type=int, default=16)
    a = ap.parse_args()
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # still fast enough to tell, just less so
        run = asyncio.run
    try:
        run(serve(a.host, a.port, a.completion_tokens))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
