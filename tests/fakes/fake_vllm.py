"""A fake vLLM OpenAI server for tests: real HTTP on 127.0.0.1:<free port>, response shapes and /metrics
text taken from real vLLM 0.32 captures (shared/samples, copied into tests/fakes/data/).

    with FakeVLLM(num_gpu_blocks=24) as fake:          # or the `fake_vllm` pytest fixture
        fake.url                                        # http://127.0.0.1:<port>
        fake.completion_tokens = 3                      # knobs may be changed while it runs
        fake.requests[-1]                               # the JSON body of the last chat request

Serves POST /v1/chat/completions and POST /v1/completions (non-streaming; streaming with
stream_options.include_usage and continuous_usage_stats as vLLM does), POST /v1/responses (the Responses
API: usage as input/output tokens; streamed as typed events ending with response.completed), POST /tokenize,
/detokenize, /v1/embeddings, GET /version, GET /v1/models, GET /health, GET /metrics (the captured text with
live counters and the configured block_size/num_gpu_blocks in vllm:cache_config_info).

Knobs (plain attributes; set them from the test thread at any time):
  delay            seconds before the response starts (headers). A huge value = a hung backend.
  token_delay      seconds between streamed chunks.
  completion_tokens   tokens generated per request (capped by the request's max_tokens).
  fail_status      if set, every chat request gets this status with `fail_body` (default: vLLM-style
                   OpenAI error JSON); `fail_count` limits it to the next N requests.
  die_after_chunks if set, the connection is cut mid-response: streaming after that many SSE chunks,
                   non-streaming after half of the body was sent (Content-Length promised more).
  report_cached    include usage.prompt_tokens_details.cached_tokens (vLLM --enable-prompt-tokens-details),
                   computed from a tiny prefix cache keyed by the first message.
  metrics_status   status of GET /metrics (e.g. 503 to make health probes fail); health_status for /health.
  chat_mode        None (normal) | "garbage" (200, not JSON) | "huge" (200, `huge_bytes` of JSON, chunked)
                   | "neverend" (200 SSE whose one event never ends: bytes forever until the client leaves).
  metrics_mode     None (the normal text) | "garbage" (200, not Prometheus text) | "trickle" (200, one byte
                   every `trickle_delay` s, until the mode changes) | "huge" (200, `huge_bytes` of comments).
  serve_responses  False: /v1/responses answers 404 (an engine that does not serve it).
A refusing backend is just a port nothing listens on: `free_port_url()`. Like vLLM, the fake stops
generating when its client disconnects (counted in `disconnects`). Standalone (benchmarks, manual tests):
`python -m tests.fakes.fake_vllm --port 8100 [--completion-tokens N] [--num-gpu-blocks N]`.

Everything the fake received is recorded: `requests` (JSON bodies), `request_headers` (lower-cased dicts),
`paths`, and live counters (`running`, `completed`, `disconnects`).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from tests.fakes.server import ServerThread

DATA = Path(__file__).parent / "data"
MODEL = "tiny"


def free_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _text_chars(messages: Any) -> int:
    n = 0
    for m in messages if isinstance(messages, list) else []:
        c = m.get("content") if isinstance(m, dict) else None
        if isinstance(c, str):
            n += len(c)
        elif isinstance(c, list):
            n += sum(len(p["text"]) for p in c if isinstance(p, dict) and isinstance(p.get("text"), str))
    return n


def prompt_tokens_of(body: dict[str, Any]) -> int:
    """The fake's deterministic "tokenizer": 4 chars per token + 4 per message (+ tools JSON / 4); a text
    completion's prompt: its chars / 4, or its count of token ids; a Responses `input`: like messages."""
    tools = body.get("tools")
    extra = len(json.dumps(tools)) // 4 if tools else 0
    if "prompt" in body:
        prompt = body["prompt"]
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            return len(prompt)
        return len(prompt) // 4 if isinstance(prompt, str) else 0
    if "input" in body:
        given = body["input"]
        items = [{"content": given}] if isinstance(given, str) else given if isinstance(given, list) else []
        return _text_chars(items) // 4 + 4 * len(items) + extra
    msgs = body.get("messages") or []
    return _text_chars(msgs) // 4 + 4 * len(msgs) + extra


INFERENCE = {"/v1/chat/completions": "chat", "/v1/completions": "completion", "/v1/responses": "responses"}


class _Die(Exception):
    """Raised inside the app to make uvicorn cut the connection."""


class _ClientGone(Exception):
    """The client (the proxy) closed the connection: stop generating, as vLLM aborts the request."""


async def _watch_disconnect(receive: Any, gone: asyncio.Event) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            gone.set()
            return


class FakeVLLM:
    def __init__(
        self,
        *,
        block_size: int = 128,
        num_gpu_blocks: int = 8192,
        completion_tokens: int = 6,
        delay: float = 0.0,
        token_delay: float = 0.0,
        report_cached: bool = False,
        metrics_sample: str = "vllm-metrics-sample.txt",
    ) -> None:
        self.block_size = block_size
        self.num_gpu_blocks = num_gpu_blocks
        self.completion_tokens = completion_tokens
        self.delay = delay
        self.token_delay = token_delay
        self.report_cached = report_cached
        self.fail_status: int | None = None
        self.fail_body: bytes | None = None
        self.fail_count: int | None = None
        self.die_after_chunks: int | None = None
        self.metrics_status = 200
        self.metrics_mode: str | None = None
        self.chat_mode: str | None = None
        self.trickle_delay = 0.2
        self.huge_bytes = 20 * 1024 * 1024
        self.health_status = 200
        self.serve_responses = True
        self.requests: list[dict[str, Any]] = []
        self.request_headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.running = 0
        self.completed = 0
        self.disconnects = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self._prefix: dict[str, int] = {}
        self._lock = threading.Lock()
        self._metrics_template = (DATA / metrics_sample).read_text()
        self._server = ServerThread(self, lifespan="off")

    # --- lifecycle -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self._server.url

    def start(self) -> "FakeVLLM":
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> "FakeVLLM":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def capacity(self) -> int:
        return self.block_size * self.num_gpu_blocks

    # --- ASGI --------------------------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        self.paths.append(path)
        if path in INFERENCE and method == "POST" and self.chat_mode is not None:
            await _read(receive)
            await self._bad_chat(send)
        elif path in INFERENCE and method == "POST" and (path != "/v1/responses" or self.serve_responses):
            body = await _read(receive)
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            gone = asyncio.Event()
            watcher = asyncio.create_task(_watch_disconnect(receive, gone))
            try:
                await self._chat(body, headers, gone, send, INFERENCE[path])
            finally:
                watcher.cancel()
        elif path in ("/tokenize", "/detokenize", "/v1/embeddings") and method == "POST":
            raw = await _read(receive)
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            with self._lock:
                self.request_headers.append(headers)
            await self._utility(path, raw, scope.get("query_string", b""), send)
        elif path == "/version" and method == "GET":
            await _send_json(send, 200, {"version": "0.32.0-fake"})
        elif path == "/v1/models" and method == "GET":
            await _send_json(send, 200, _models())
        elif path == "/health" and method == "GET":
            await _send(send, self.health_status, b"", b"text/plain")
        elif path == "/metrics" and method == "GET":
            if self.metrics_mode is not None:
                await self._bad_metrics(send)
            elif self.metrics_status != 200:
                await _send(send, self.metrics_status, b"metrics unavailable", b"text/plain")
            else:
                await _send(
                    send, 200, self.metrics_text().encode(), b"text/plain; version=0.0.4; charset=utf-8"
                )
        else:
            await _send_json(send, 404, {"detail": "Not Found"})

    async def _bad_chat(self, send: Any) -> None:
        mode = self.chat_mode
        if mode == "garbage":
            await _send(send, 200, b"\x00<html>not json", b"application/json")
            return
        ctype = b"text/event-stream" if mode == "neverend" else b"application/json"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", ctype)]})
        piece = b"x" * 65536
        try:
            if mode == "neverend":
                await send({"type": "http.response.body", "body": b"data: {", "more_body": True})
                while self.chat_mode == "neverend":
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                    await asyncio.sleep(0.001)
            else:
                await send({"type": "http.response.body", "body": b'{"pad":"', "more_body": True})
                for _ in range(self.huge_bytes // len(piece)):
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                await send({"type": "http.response.body", "body": b'"}', "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            return

    async def _bad_metrics(self, send: Any) -> None:
        mode = self.metrics_mode
        if mode == "garbage":
            await _send(send, 200, b"\x00\xff{not prometheus at all\n\x01", b"text/plain")
            return
        start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        await send(start)
        if mode == "huge":
            line = b"# " + b"x" * 1022 + b"\n"
            for _ in range(self.huge_bytes // len(line)):
                await send({"type": "http.response.body", "body": line, "more_body": True})
        else:  # trickle: a byte at a time while the mode lasts, then the rest at once
            while self.metrics_mode == "trickle":
                await send({"type": "http.response.body", "body": b"#", "more_body": True})
                await asyncio.sleep(self.trickle_delay)
            await send({"type": "http.response.body", "body": b"\n" + self.metrics_text().encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _utility(self, path: str, raw: bytes, query: bytes, send: Any) -> None:
        """/tokenize, /detokenize, /v1/embeddings: vLLM's shapes, the fake's 4-chars-per-token tokenizer."""
        try:
            body = json.loads(raw)
        except ValueError:
            await _send_json(send, 400, _error("Invalid JSON body", "BadRequestError", 400))
            return
        if not isinstance(body, dict):
            await _send_json(send, 400, _error("body must be an object", "BadRequestError", 400))
            return
        with self._lock:
            self.requests.append(body)
        if path == "/tokenize":
            prompt = body.get("prompt")
            text = prompt if isinstance(prompt, str) else json.dumps(body.get("messages"))
            tokens = list(range(100, 100 + len(text) // 4))
            out: dict[str, Any] = {"count": len(tokens), "max_model_len": 2048, "tokens": tokens,
                                   "token_strs": None}
            if query:
                out["query"] = query.decode("latin-1")  # lets a test see the query string arrive
            await _send_json(send, 200, out)
        elif path == "/detokenize":
            tokens = body.get("tokens")
            if not isinstance(tokens, list):
                err = _error("'tokens' must be a list", "BadRequestError", 400, "tokens")
                await _send_json(send, 400, err)
                return
            await _send_json(send, 200, {"prompt": "abcd" * len(tokens)})
        else:
            given = body.get("input")
            texts = [given] if isinstance(given, str) else given if isinstance(given, list) else []
            n = sum(len(str(t)) // 4 for t in texts)
            data = [{"object": "embedding", "index": i, "embedding": [0.25, -0.5]} for i in range(len(texts))]
            await _send_json(
                send,
                200,
                {"id": f"embd-{uuid.uuid4().hex[:8]}", "object": "list", "created": int(time.time()),
                 "model": MODEL, "data": data, "usage": {"prompt_tokens": n, "total_tokens": n}},
            )

    async def _chat(
        self, raw: bytes, headers: dict[str, str], gone: asyncio.Event, send: Any, kind: str = "chat"
    ) -> None:
        try:
            body = json.loads(raw)
        except ValueError:
            await _send_json(send, 400, _error("Invalid JSON body", "BadRequestError", 400))
            return
        with self._lock:
            self.requests.append(body)
            self.request_headers.append(headers)
        if self.delay:
            try:
                await asyncio.wait_for(gone.wait(), self.delay)
                self.disconnects += 1  # the client left while we were "thinking"
                return
            except TimeoutError:
                pass
        if self.fail_status is not None and (self.fail_count is None or self.fail_count > 0):
            if self.fail_count is not None:
                self.fail_count -= 1
            content = (
                self.fail_body
                if self.fail_body is not None
                else json.dumps(_error("fake failure", "InternalServerError", self.fail_status)).encode()
            )
            ctype = b"application/json" if self.fail_body is None else b"text/plain"
            await _send(send, self.fail_status, content, ctype)
            return
        if isinstance(body, dict) and body.get("model", MODEL) != MODEL:
            await _send_json(
                send,
                404,
                _error(
                    f"The model `{body.get('model')}` does not exist. Valid aliases: tiny.",
                    "NotFoundError",
                    404,
                    "model",
                ),
            )
            return
        field, types = {
            "chat": ("messages", list),
            "completion": ("prompt", (str, list)),
            "responses": ("input", (str, list)),
        }[kind]
        if not isinstance(body, dict) or not isinstance(body.get(field), types):
            err = _error(f"'{field}' is missing or invalid", "BadRequestError", 400, field)
            await _send_json(send, 400, err)
            return
        max_tokens = (
            body.get("max_tokens") or body.get("max_completion_tokens") or body.get("max_output_tokens")
        )
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
        ):
            await _send_json(
                send,
                400,
                _error("max_tokens must be a positive integer", "BadRequestError", 400, "max_tokens"),
            )
            return
        prompt = prompt_tokens_of(body)
        n = self.completion_tokens if not max_tokens else min(self.completion_tokens, int(max_tokens))
        cached = self._cached(body, prompt)
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "total_tokens": prompt + n,
            "completion_tokens": n,
            "prompt_tokens_details": None,
        }
        if cached is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": cached}
        self.running += 1
        try:
            if kind == "responses":
                await self._respond(body, usage, n, send, gone)
            elif body.get("stream"):
                await self._stream(body, usage, n, send, gone, kind)
            else:
                await self._complete(body, usage, n, send, kind)
            self.completed += 1
            self.prompt_tokens_total += prompt
            self.generation_tokens_total += n
        except (OSError, _ClientGone):
            self.disconnects += 1
        finally:
            self.running -= 1

    def _cached(self, body: dict[str, Any], prompt: int) -> int | None:
        if not self.report_cached:
            return None
        msgs = body.get("messages") or []
        key = json.dumps(msgs[:1], sort_keys=True)
        with self._lock:
            prev = self._prefix.get(key, 0)
            self._prefix[key] = max(prev, prompt)
        return (min(prev, prompt) // self.block_size) * self.block_size

    async def _respond(
        self, body: dict[str, Any], usage: dict[str, Any], n: int, send: Any, gone: asyncio.Event
    ) -> None:
        """The Responses API: a response object with input/output token usage; streamed as typed SSE events
        (response.created, output_text deltas, response.completed carrying the whole response)."""
        details = usage.get("prompt_tokens_details") or {}
        rid = f"resp_{uuid.uuid4().hex[:16]}"
        resp: dict[str, Any] = {
            "id": rid,
            "object": "response",
            "created_at": int(time.time()),
            "model": MODEL,
            "status": "completed",
            "output": [
                {
                    "type": "message",
                    "id": f"msg_{uuid.uuid4().hex[:8]}",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": " entry" * n, "annotations": []}],
                }
            ],
            "usage": {
                "input_tokens": usage["prompt_tokens"],
                "input_tokens_details": {"cached_tokens": details.get("cached_tokens", 0)},
                "output_tokens": n,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": usage["total_tokens"],
            },
        }
        if not body.get("stream"):
            await _send_json(send, 200, resp)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream; charset=utf-8")],
            }
        )
        started = {**resp, "status": "in_progress", "output": [], "usage": None}
        events = [{"type": "response.created", "response": started}]
        events += [{"type": "response.output_text.delta", "item_id": "m", "output_index": 0,
                    "content_index": 0, "delta": " entry"} for _ in range(n)]
        events.append({"type": "response.completed", "response": resp})
        for i, ev in enumerate(events):
            if self.die_after_chunks is not None and i >= self.die_after_chunks:
                raise _Die("fake backend died mid-stream")
            ev["sequence_number"] = i
            data = f"event: {ev['type']}\ndata: {json.dumps(ev)}\n\n".encode()
            await send({"type": "http.response.body", "body": data, "more_body": True})
            if self.token_delay:
                await asyncio.sleep(self.token_delay)
            if gone.is_set():
                raise _ClientGone
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _complete(
        self, body: dict[str, Any], usage: dict[str, Any], n: int, send: Any, kind: str = "chat"
    ) -> None:
        obj = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": " entry" * n,
                        "refusal": None,
                        "tool_calls": [],
                    },
                    "logprobs": None,
                    "finish_reason": "length",
                    "stop_reason": None,
                }
            ],
            "service_tier": None,
            "system_fingerprint": "vllm-0.32.0-fake",
            "usage": usage,
            "prompt_logprobs": None,
            "kv_transfer_params": None,
        }
        if kind == "completion":
            obj["id"], obj["object"] = f"cmpl-{uuid.uuid4().hex[:16]}", "text_completion"
            obj["choices"] = [{"index": 0, "text": " entry" * n, "logprobs": None, "finish_reason": "length",
                               "stop_reason": None, "prompt_logprobs": None}]
        content = json.dumps(obj).encode()
        if self.token_delay:
            await asyncio.sleep(self.token_delay * n)
        if self.die_after_chunks is not None:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(content)).encode()),
                    ],
                }
            )
            await send(
                {"type": "http.response.body", "body": content[: len(content) // 2], "more_body": True}
            )
            raise _Die("fake backend died mid-response")
        await _send(send, 200, content, b"application/json")

    async def _stream(
        self,
        body: dict[str, Any],
        usage: dict[str, Any],
        n: int,
        send: Any,
        gone: asyncio.Event,
        kind: str = "chat",
    ) -> None:
        so = body.get("stream_options") or {}
        include_usage = bool(so.get("include_usage"))
        continuous = include_usage and bool(so.get("continuous_usage_stats"))
        cid = f"{'cmpl' if kind == 'completion' else 'chatcmpl'}-{uuid.uuid4().hex[:16]}"
        obj_type = "text_completion" if kind == "completion" else "chat.completion.chunk"
        created = int(time.time())
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream; charset=utf-8"), (b"x-fake-vllm", b"1")],
            }
        )
        chunks: list[dict[str, Any]] = [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
        ]
        for i in range(n):
            last = i == n - 1
            chunks.append(
                {
                    "index": 0,
                    "delta": {"content": " entry"},
                    "logprobs": None,
                    "finish_reason": "length" if last else None,
                    "token_ids": None,
                }
            )
        if kind == "completion":  # text chunks, no role chunk
            chunks = [{"index": 0, "text": c["delta"]["content"], "logprobs": None,
                       "finish_reason": c["finish_reason"]} for c in chunks[1:]]
        for i, choice in enumerate(chunks):
            if self.die_after_chunks is not None and i >= self.die_after_chunks:
                raise _Die("fake backend died mid-stream")
            ev: dict[str, Any] = {
                "id": cid,
                "object": obj_type,
                "created": created,
                "model": MODEL,
                "choices": [choice],
            }
            if continuous:
                done = max(0, i)
                ev["usage"] = {
                    "prompt_tokens": usage["prompt_tokens"],
                    "total_tokens": usage["prompt_tokens"] + done,
                    "completion_tokens": done,
                }
            await send(
                {
                    "type": "http.response.body",
                    "body": b"data: " + json.dumps(ev).encode() + b"\n\n",
                    "more_body": True,
                }
            )
            if self.token_delay:
                await asyncio.sleep(self.token_delay)
            if gone.is_set():
                raise _ClientGone
        if include_usage:
            ev = {
                "id": cid,
                "object": obj_type,
                "created": created,
                "model": MODEL,
                "choices": [],
                "usage": usage,
            }
            await send(
                {
                    "type": "http.response.body",
                    "body": b"data: " + json.dumps(ev).encode() + b"\n\n",
                    "more_body": True,
                }
            )
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    # --- metrics -----------------------------------------------------------------------------------
    def metrics_text(self) -> str:
        """The captured vLLM /metrics text with this fake's cache config and live counters."""
        t = self._metrics_template
        t = re.sub(
            r'(vllm:cache_config_info\{[^}]*?)block_size="\d+"', rf'\1block_size="{self.block_size}"', t
        )
        t = re.sub(
            r'(vllm:cache_config_info\{[^}]*?)num_gpu_blocks="\d+"',
            rf'\1num_gpu_blocks="{self.num_gpu_blocks}"',
            t,
        )

        def setv(name: str, value: float, extra: str = "") -> None:
            nonlocal t
            t = re.sub(
                rf"^({re.escape(name)}\{{[^}}]*{extra}[^}}]*\}}) \S+$",
                rf"\g<1> {float(value)}",
                t,
                flags=re.M,
            )

        setv("vllm:num_requests_running", self.running)
        setv("vllm:request_success_total", self.completed, 'finished_reason="length"')
        setv("vllm:prompt_tokens_total", self.prompt_tokens_total)
        setv("vllm:generation_tokens_total", self.generation_tokens_total)
        return t


def _error(message: str, type_: str, code: int, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _models() -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {
                "id": MODEL,
                "object": "model",
                "created": 1795545610,
                "owned_by": "vllm",
                "root": "<model-dir>",
                "parent": None,
                "max_model_len": 2048,
            }
        ],
    }


async def _read(receive: Any) -> bytes:
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            return body


async def _send(send: Any, status: int, content: bytes, ctype: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", ctype), (b"content-length", str(len(content)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": content, "more_body": False})


async def _send_json(send: Any, status: int, obj: Any) -> None:
    await _send(send, status, json.dumps(obj).encode(), b"application/json")


def serve(port: int, host: str = "127.0.0.1", **knobs: Any) -> None:
    """Run a FakeVLLM in the foreground (for benchmarks and manual use):
    python -m tests.fakes.fake_vllm --port 8100 [--completion-tokens 16]"""
    import uvicorn

    fake = FakeVLLM(**knobs)
    uvicorn.run(fake, host=host, port=port, log_level="warning", access_log=False, lifespan="off")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="fake vLLM OpenAI server (tests/benchmarks)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--completion-tokens", type=int, default=6)
    ap.add_argument("--num-gpu-blocks", type=int, default=8192)
    ap.add_argument("--block-size", type=int, default=128)
    a = ap.parse_args()
    serve(
        a.port,
        completion_tokens=a.completion_tokens,
        num_gpu_blocks=a.num_gpu_blocks,
        block_size=a.block_size,
    )
