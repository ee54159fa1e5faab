"""The simulator as an HTTP server that speaks vLLM's OpenAI-compatible API and its /metrics.

    python -m harness.sim.server --profile tiny-cpu --port 8100 [--time-scale 20] [--num-gpu-blocks 24]

One asyncio task runs the engine model (harness/sim/engine.py) on an accelerated clock: virtual time =
wall time since start x time_scale. The engine keeps its own clock (harness/sim/liveclock.py): a request joins
when engine time reaches its arrival, each step starts where the previous one ended, the loop sleeps until the
step is due and then delivers its first tokens and finished requests; late wake-ups delay deliveries but never
stretch the engine, so live mode computes the discrete-event mode's timeline. Responses are timed by the engine
model, never by per-token sleeps.

Tokens (harness/sim/tokenizer.py): where the profile names a tokenizer (`tokenizer = "tiny"` or a model
directory) messages are rendered with that model's chat template and encoded by its tokenizer, as vLLM does, so
prompt_tokens equal the real engine's. Otherwise, or when the directory is missing, a deterministic regex
estimator counts them (a word with its leading space, a run of punctuation, or whitespace = one token, over a
ChatML-like rendering); the startup line and /v1/models (`tokenizer`) say which is in use and why. Either way
identical prefixes give identical ids, so the prefix cache sees a conversation's reuse as vLLM would. The output
is deterministic text of exactly `max_tokens` tokens (with `ignore_eos`, or whenever max_tokens is given;
otherwise `--default-output-tokens` and finish_reason "stop"); sent back as the next assistant message it
encodes to the same ids, so turn k+1 reuses turn k's output blocks. `--script FILE`
(JSON list; entry i answers a request whose conversation already holds i assistant messages; the last entry
repeats) returns scripted content or tool calls so a real agent can be driven.

Every number here is simulated; /metrics and /v1/models say which profile they assume.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
import zlib
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

from fastapi import FastAPI, Request as HttpRequest
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from harness.sim.engine import Engine, IdSeq, Request
from harness.sim.liveclock import CatchUpStepper
from harness.sim.engine.stats import render_metrics
from harness.sim.timing import Profile, ProfileError, load_profile
from harness.sim.tokenizer import SimTokenizer, load_tokenizer, pieces

VERSION = "0.32.0"
FINGERPRINT = f"vllm-{VERSION}-thunderbench-sim"


def profile_tokenizer(profile: Profile) -> SimTokenizer:
    """The tokenizer the profile names (or the estimator, with the reason in its info)."""
    base = Path(profile.source_path).parent if profile.source_path else None
    return load_tokenizer(profile.tokenizer, base=base, profile=profile.name)


def error_body(message: str, type_: str, code: int, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error(message: str, code: int = 400, type_: str = "BadRequestError", param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, code, param), status_code=code)


@dataclass
class _Pending:
    req: Request
    first: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class SimEngineRunner:
    """Owns the engine and its accelerated clock; one asyncio task steps it."""

    def __init__(self, profile: Profile, *, time_scale: float = 1.0, slice_s: float = 0.005,
                 max_lag_s: float = 1.0, kv_offload_gib: float | None = None) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        self.profile = profile
        self.engine = Engine.from_profile(profile, kv_offload_gib=kv_offload_gib)  # the DES's engine, same tier
        self.time_scale = time_scale
        self.slice_s = slice_s
        self.max_lag_s = max_lag_s
        self.clock = CatchUpStepper(self.engine, max_lag_v=max_lag_s * time_scale)
        self.t0 = time.monotonic()
        self.pending: dict[str, _Pending] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def vnow(self) -> float:
        return (time.monotonic() - self.t0) * self.time_scale

    def start(self) -> None:
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.create_task(self._loop(), name="sim-engine")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def submit(self, req: Request) -> _Pending:
        p = _Pending(req)
        self.engine.validate(req)  # a request that can never run is refused now, not when engine time reaches it
        self.clock.submit(req, self.vnow())
        self.pending[req.request_id] = p
        self._wake.set()
        return p

    def abort(self, p: _Pending) -> None:
        if not p.done.is_set():
            self.clock.withdraw(p.req)  # not yet reached by engine time: the engine never sees it
            self.engine.abort(p.req, self.vnow())
            p.done.set()
        self.pending.pop(p.req.request_id, None)

    async def _loop(self) -> None:
        """Step the engine on its own clock (CatchUpStepper: requests join when engine time reaches their
        arrival), sleeping only while it is ahead of virtual time. A late wake-up (OS scheduling jitter is
        milliseconds, tens of them on a loaded machine; a tiny-model step is ~2 ms) only delays delivery, it does
        not cost engine time; beyond `max_lag_s` of wall time behind, the gap counts as idle (clock.lost_v)."""
        eng = self.engine
        clock = self.clock
        clock.idle(self.vnow())
        while True:
            if not clock.has_work():
                self._wake.clear()
                pe = eng.next_pin_expiry()
                timeout = None if pe is None else max(0.0, (pe - self.vnow()) / self.time_scale)
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except TimeoutError:
                    eng.expire_pins(self.vnow())
                continue
            res = clock.step(self.vnow())
            if res.steps == 0:  # nothing fits (e.g. pinned blocks): wait for a change
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.slice_s)
                except TimeoutError:
                    pass
                clock.idle(self.vnow())
                continue
            delay = (clock.et - self.vnow()) / self.time_scale
            await asyncio.sleep(max(0.0, delay))  # also yields to the request handlers when behind
            for r in res.first_tokens:
                p = self.pending.get(r.request_id)
                if p is not None:
                    p.first.set()
            for r in res.finished:
                p = self.pending.pop(r.request_id, None)
                if p is not None:
                    p.first.set()
                    p.done.set()


async def _await_done(pending: _Pending, request: HttpRequest, runner: SimEngineRunner) -> Response | None:
    """Wait for a non-streaming request to finish in the engine. If the client goes away first the request is
    aborted in the engine (as vLLM does) and a 499 response is returned; cancellation aborts it too."""
    try:
        while not pending.done.is_set():
            try:
                await asyncio.wait_for(pending.done.wait(), 0.5)
            except TimeoutError:
                if await request.is_disconnected():
                    runner.abort(pending)
                    return Response(status_code=499)
    except asyncio.CancelledError:
        runner.abort(pending)
        raise
    return None


def create_app(
    profile: Profile,
    *,
    time_scale: float = 1.0,
    model_name: str | None = None,
    script: list[dict[str, Any]] | None = None,
    default_output_tokens: int = 64,
    slice_s: float = 0.005,
    num_gpu_blocks_override: int | None = None,
    tokenizer: SimTokenizer | None = None,
    kv_offload_gib: float | None = None,
) -> FastAPI:
    """The FastAPI app (tests mount it; `serve` runs it under uvicorn). `tokenizer` overrides the profile's;
    `kv_offload_gib` adds the host KV tier (vLLM's --kv-offloading-size)."""
    runner = SimEngineRunner(profile, time_scale=time_scale, slice_s=slice_s, kv_offload_gib=kv_offload_gib)
    tok = tokenizer if tokenizer is not None else profile_tokenizer(profile)
    name = model_name or profile.name
    max_len = profile.engine.max_model_len
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runner.t0 = time.monotonic()
        runner.start()
        yield
        await runner.stop()

    app = FastAPI(title="thunderbench simulated vLLM", lifespan=lifespan)
    app.state.runner = runner
    app.state.tokenizer = tok

    def check_model(body: dict[str, Any]) -> JSONResponse | None:
        m = body.get("model")
        if m is not None and m != name:
            return error(f"The model `{m}` does not exist. Valid aliases: {name}.", 404, "NotFoundError", "model")
        return None

    async def read_json(request: HttpRequest) -> dict[str, Any] | JSONResponse:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return error(f"Invalid JSON body: {e}")
        if not isinstance(body, dict):
            return error("The request body must be a JSON object")
        return body

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/ping")
    async def ping() -> Response:
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": VERSION}

    @app.get("/load")
    async def load() -> dict[str, int]:
        return {"server_load": len(runner.pending)}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{
            "id": name, "object": "model", "created": created, "owned_by": "vllm",
            "root": f"thunderbench-sim:{profile.name}", "parent": None, "max_model_len": max_len,
            "simulated": True, "profile": profile.name, "time_scale": time_scale,
            "tokenizer": tok.info.as_dict(),
        }]}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        eng = runner.engine
        text = render_metrics(
            eng.stats, model_name=name, num_running=eng.num_running,
            num_waiting=eng.num_waiting + len(runner.clock.arrivals),  # arrived, engine clock not there yet
            kv_cache_usage=eng.kv_usage(), block_size=eng.block_size, num_gpu_blocks=eng.num_gpu_blocks,
            num_gpu_blocks_override=num_gpu_blocks_override, max_num_seqs=eng.scheduler.max_num_seqs,
            created=float(created), profile=f"{profile.name} (time scale {time_scale:g})", host=eng.host,
        )
        # not a vLLM series: engine time the server gave up because it fell more than max_lag behind its clock
        # (0 unless the machine cannot keep up with --time-scale; live figures are then distorted)
        text += ("# HELP thunderbench_sim_engine_time_lost_seconds_total Simulated engine time given up because "
                 "the server fell behind its clock.\n# TYPE thunderbench_sim_engine_time_lost_seconds_total counter\n"
                 f"thunderbench_sim_engine_time_lost_seconds_total {runner.clock.lost_v}\n")
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    def render(body: dict[str, Any]) -> list[int] | JSONResponse:
        """A chat request's prompt ids, rendered as vLLM renders it: the request's tools (as sent; vLLM passes them
        even with tool_choice "none" unless started with --exclude-tools-when-tool-choice-none) and
        chat_template_kwargs go to the template."""
        tools = body.get("tools")
        kwargs = body.get("chat_template_kwargs")
        try:
            return tok.render_messages(body["messages"], add_generation_prompt=bool(body.get("add_generation_prompt", True)),
                                       tools=tools if isinstance(tools, list) else None,
                                       template_kwargs=kwargs if isinstance(kwargs, dict) else None)
        except Exception as e:  # noqa: BLE001 - a template rejecting the input is the client's error, as in vLLM
            return error(f"Chat template rejected the request: {type(e).__name__}: {e}", param="messages")

    @app.post("/tokenize")
    async def tokenize(request: HttpRequest) -> Response:
        body = await read_json(request)
        if isinstance(body, JSONResponse):
            return body
        if (bad := check_model(body)) is not None:
            return bad
        if "messages" in body:
            if not isinstance(body["messages"], list) or not all(isinstance(m, dict) for m in body["messages"]):
                return error("`messages` must be a list of message objects", param="messages")
            ids = render(body)
            if isinstance(ids, JSONResponse):
                return ids
        elif "prompt" in body:
            ids = tok.encode_prompt(str(body["prompt"]))
        else:
            return error("Either `prompt` or `messages` is required")
        return JSONResponse({"count": len(ids), "max_model_len": max_len, "tokens": ids, "token_strs": None})

    @app.post("/v1/chat/completions")
    async def chat(request: HttpRequest) -> Response:
        body = await read_json(request)
        if isinstance(body, JSONResponse):
            return body
        if (bad := check_model(body)) is not None:
            return bad
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            return error("`messages` must be a non-empty list of message objects", param="messages")
        if body.get("n", 1) != 1:
            return error("Only n=1 is supported by the simulator", param="n")
        prompt_ids = render(body)
        if isinstance(prompt_ids, JSONResponse):
            return prompt_ids
        n_prompt = len(prompt_ids)
        if n_prompt > max_len:
            return error(
                f"This model's maximum context length is {max_len} tokens. However, your prompt contains at least "
                f"{n_prompt} input tokens, which exceeds this limit even without any output tokens. Please reduce "
                f"the length of the input prompt. (parameter=input_tokens, value={n_prompt})", param="input_tokens")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
            return error("max_tokens must be a positive integer", param="max_tokens")
        if max_tokens is not None and n_prompt + max_tokens > max_len:
            return error(
                f"This model's maximum context length is {max_len} tokens. However, you requested "
                f"{n_prompt + max_tokens} tokens ({n_prompt} in the messages, {max_tokens} in the completion). "
                f"Please reduce the length of the messages or completion.", param="max_tokens")
        seed = zlib.crc32(bytes(str(prompt_ids[-64:]), "ascii"))
        tool_calls: list[dict[str, Any]] | None = None
        if script:
            turn = sum(1 for m in messages if m.get("role") == "assistant")
            entry = script[min(turn, len(script) - 1)]
            if entry.get("tool_calls"):
                tool_calls = [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                               "function": {"name": c["name"], "arguments": json.dumps(c.get("arguments", {}))}}
                              for c in entry["tool_calls"]]
                text = ""
            else:
                text = str(entry.get("content", ""))
            out_ids = tok.encode(text) if text else tok.encode(json.dumps(tool_calls, sort_keys=True,
                                                                          separators=(",", ":")))
            full = len(out_ids)
            limit = max_tokens if max_tokens is not None else max_len - n_prompt
            out_ids = out_ids[:limit] or tok.encode(" ")  # an empty reply still costs one (end) token
            reason = "length" if len(out_ids) == limit and limit < full else (
                "tool_calls" if tool_calls else "stop")
        else:
            n_out = max_tokens if max_tokens is not None else min(default_output_tokens, max_len - n_prompt)
            if n_out < 1:
                return error("No room left for output tokens within max_model_len", param="max_tokens")
            text, out_ids = tok.output(seed, n_out)
            reason = "length" if max_tokens is not None else "stop"
        if -(-(n_prompt + len(out_ids)) // profile.engine.block_size) > runner.engine.num_gpu_blocks - 1:
            return error(f"The request needs {n_prompt + len(out_ids)} tokens of KV cache but the engine has only "
                         f"{(runner.engine.num_gpu_blocks - 1) * profile.engine.block_size}", param="max_tokens")
        rid = f"chatcmpl-{uuid.uuid4().hex[:16]}"
        req = Request(rid, IdSeq(profile.engine.block_size, prompt_ids + out_ids), n_prompt, len(out_ids), 0.0,
                      program_id=_program_id(body), finish_reason_at_limit="stop" if reason == "tool_calls" else reason)
        pending = runner.submit(req)
        now_s = int(time.time())

        def usage() -> dict[str, Any]:
            return {"prompt_tokens": n_prompt, "total_tokens": n_prompt + len(out_ids),
                    "completion_tokens": len(out_ids),
                    "prompt_tokens_details": {"cached_tokens": max(req.num_cached_tokens, 0)}}

        message: dict[str, Any] = {"role": "assistant", "content": text if not tool_calls else None,
                                   "refusal": None, "tool_calls": tool_calls or [], "reasoning_content": None}
        if not body.get("stream"):
            if (gone := await _await_done(pending, request, runner)) is not None:
                return gone
            return JSONResponse({
                "id": rid, "object": "chat.completion", "created": now_s, "model": name,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reason,
                             "stop_reason": None}],
                "service_tier": None, "system_fingerprint": FINGERPRINT, "usage": usage(),
                "prompt_logprobs": None, "kv_transfer_params": None,
            })

        opts = body.get("stream_options") or {}
        include_usage = bool(opts.get("include_usage"))
        continuous = bool(opts.get("continuous_usage_stats"))

        def chunk(delta: dict[str, Any], finish: str | None = None, n_out: int = 0) -> str:
            c: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk", "created": now_s, "model": name,
                                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            if include_usage and continuous:
                c["usage"] = {"prompt_tokens": n_prompt, "total_tokens": n_prompt + n_out, "completion_tokens": n_out}
            return f"data: {json.dumps(c)}\n\n"

        async def events() -> AsyncIterator[str]:
            try:
                yield chunk({"role": "assistant", "content": ""})
                await pending.first.wait()
                if tool_calls:
                    await pending.done.wait()
                    deltas = [{"tool_calls": [{"index": i, **tc} for i, tc in enumerate(tool_calls)]}]
                else:
                    parts = pieces(text)
                    yield chunk({"content": parts[0] if parts else ""}, None, 1)
                    await pending.done.wait()
                    rest = parts[1:]
                    step = max(1, len(rest) // 8)  # a few chunks, not one per token
                    deltas = [{"content": "".join(rest[i:i + step])} for i in range(0, len(rest), step)]
                for i, d in enumerate(deltas):
                    last = i == len(deltas) - 1
                    yield chunk(d, reason if last else None, len(out_ids))
                if not deltas:
                    yield chunk({"content": ""}, reason, len(out_ids))
                if include_usage:
                    yield "data: " + json.dumps({"id": rid, "object": "chat.completion.chunk", "created": now_s,
                                                 "model": name, "choices": [], "usage": usage(),
                                                 "system_fingerprint": FINGERPRINT}) + "\n\n"
                yield "data: [DONE]\n\n"
            finally:
                if not pending.done.is_set():
                    runner.abort(pending)

        return StreamingResponse(events(), media_type="text/event-stream")

    _add_completions_route(app, runner, tok, name, max_len, check_model, read_json)
    return app


def _add_completions_route(app: FastAPI, runner: SimEngineRunner, tok: SimTokenizer, name: str, max_len: int,
                           check_model: Any, read_json: Any) -> None:
    """/v1/completions with a text or token-id prompt (what calibration and validation drive, because token ids
    make the prompt identical on a real vLLM and on the simulator)."""
    bs = runner.profile.engine.block_size

    @app.post("/v1/completions")
    async def completions(request: HttpRequest) -> Response:
        body = await read_json(request)
        if isinstance(body, JSONResponse):
            return body
        if (bad := check_model(body)) is not None:
            return bad
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, str):
            ids = tok.encode_prompt(prompt)
        elif isinstance(prompt, list) and prompt and all(isinstance(x, int) and not isinstance(x, bool) for x in prompt):
            ids = list(prompt)
        else:
            return error("`prompt` must be a string or a non-empty list of token ids", param="prompt")
        max_tokens = body.get("max_tokens", 16)
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            return error("max_tokens must be a positive integer", param="max_tokens")
        if len(ids) + max_tokens > max_len:
            return error(
                f"This model's maximum context length is {max_len} tokens. However, you requested "
                f"{len(ids) + max_tokens} tokens ({len(ids)} in the messages, {max_tokens} in the completion). "
                f"Please reduce the length of the messages or completion.", param="max_tokens")
        if -(-(len(ids) + max_tokens) // bs) > runner.engine.num_gpu_blocks - 1:
            return error("The request can never fit in the KV cache", param="max_tokens")
        seed = zlib.crc32(bytes(str(ids[-64:]), "ascii"))
        text, out_ids = tok.output(seed, max_tokens)
        rid = f"cmpl-{uuid.uuid4().hex[:16]}"
        req = Request(rid, IdSeq(bs, ids + out_ids), len(ids), len(out_ids), 0.0, program_id=_program_id(body))
        pending = runner.submit(req)
        created = int(time.time())

        def usage() -> dict[str, Any]:
            return {"prompt_tokens": len(ids), "total_tokens": len(ids) + len(out_ids),
                    "completion_tokens": len(out_ids),
                    "prompt_tokens_details": {"cached_tokens": max(req.num_cached_tokens, 0)}}

        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            parts = pieces(text)

            def chunk(piece: str, finish: str | None, token_ids: list[int] | None) -> str:
                c: dict[str, Any] = {"index": 0, "text": piece, "logprobs": None, "finish_reason": finish,
                                     "stop_reason": None}
                if body.get("return_token_ids") and token_ids is not None:
                    c["token_ids"] = token_ids
                return "data: " + json.dumps({"id": rid, "object": "text_completion", "created": created,
                                              "model": name, "choices": [c]}) + "\n\n"

            async def events() -> AsyncIterator[str]:
                try:
                    await pending.first.wait()
                    yield chunk(parts[0], "length" if len(parts) == 1 else None, out_ids[:1])
                    await pending.done.wait()
                    rest = list(zip(parts[1:], out_ids[1:]))
                    step = max(1, len(rest) // 8)
                    for i in range(0, len(rest), step):
                        part = rest[i:i + step]
                        last = i + step >= len(rest)
                        yield chunk("".join(p for p, _ in part), "length" if last else None, [t for _, t in part])
                    if include_usage:
                        yield "data: " + json.dumps({"id": rid, "object": "text_completion", "created": created,
                                                     "model": name, "choices": [], "usage": usage()}) + "\n\n"
                    yield "data: [DONE]\n\n"
                finally:
                    if not pending.done.is_set():
                        runner.abort(pending)

            return StreamingResponse(events(), media_type="text/event-stream")
        if (gone := await _await_done(pending, request, runner)) is not None:
            return gone
        choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length",
                                  "stop_reason": None, "prompt_logprobs": None}
        if body.get("return_token_ids"):
            choice["token_ids"] = out_ids
            choice["prompt_token_ids"] = ids
        return JSONResponse({
            "id": rid, "object": "text_completion", "created": created, "model": name,
            "choices": [choice], "service_tier": None, "system_fingerprint": FINGERPRINT, "usage": usage(),
        })


def _program_id(body: dict[str, Any]) -> str | None:
    pid = body.get("program_id")
    if pid is None and isinstance(body.get("extra_body"), dict):
        pid = body["extra_body"].get("program_id")
    return str(pid) if pid is not None else None


def load_script(path: str | Path) -> list[dict[str, Any]]:
    """A JSON list of {"content": str} or {"tool_calls": [{"name": str, "arguments": {...}}]} entries."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, list) or not data or not all(isinstance(e, dict) for e in data):
        raise ValueError(f"{path}: a script is a non-empty JSON list of objects")
    for i, e in enumerate(data):
        if "tool_calls" in e:
            if not isinstance(e["tool_calls"], list) or not all(isinstance(c, dict) and "name" in c for c in e["tool_calls"]):
                raise ValueError(f"{path}: entry {i}: tool_calls must be a list of {{name, arguments}}")
        elif "content" not in e:
            raise ValueError(f"{path}: entry {i} needs `content` or `tool_calls`")
    return data


def wait_healthy(url: str, timeout_s: float, *, alive: Callable[[], bool]) -> bool | None:
    """Poll `url`/health until it answers 200 (True), the deadline passes (False) or the server is gone
    (`alive()` false: None)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        if not alive():
            return None
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


@contextmanager
def serve_in_thread(profile: str | Profile, *, time_scale: float = 1.0, num_gpu_blocks: int | None = None,
                    startup_timeout_s: float = 20.0, **kw: Any) -> Iterator[str]:
    """Run the server on a free local port in a background thread; yields its base URL (tests, validation)."""
    import socket
    import threading

    import uvicorn

    prof = load_profile(profile, num_gpu_blocks=num_gpu_blocks) if isinstance(profile, str) else (
        profile.with_num_gpu_blocks(num_gpu_blocks))
    app = create_app(prof, time_scale=time_scale, num_gpu_blocks_override=num_gpu_blocks, **kw)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    th = threading.Thread(target=server.run, name="sim-server", daemon=True)
    th.start()
    url = f"http://127.0.0.1:{port}"
    if wait_healthy(url, startup_timeout_s, alive=th.is_alive) is not True:
        server.should_exit = True
        raise RuntimeError(f"simulator server did not become healthy within {startup_timeout_s:g} s")
    try:
        yield url
    finally:
        server.should_exit = True
        th.join(10)


@contextmanager
def serve_in_process(profile: str, *, time_scale: float = 1.0, num_gpu_blocks: int | None = None,
                     model_name: str | None = None, startup_timeout_s: float = 30.0) -> Iterator[str]:
    """Run the server in its own process (as live runs do), so a client in this process does not share the GIL
    with the engine loop; yields its base URL and stops it afterwards."""
    import socket
    import subprocess

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    argv = [sys.executable, "-m", "harness.sim.server", "--profile", profile, "--port", str(port),
            "--time-scale", str(time_scale)]
    if num_gpu_blocks is not None:
        argv += ["--num-gpu-blocks", str(num_gpu_blocks)]
    if model_name:
        argv += ["--served-model-name", model_name]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        healthy = wait_healthy(url, startup_timeout_s, alive=lambda: proc.poll() is None)
        if healthy is None:
            err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            raise RuntimeError(f"simulator server exited: {err.splitlines()[-1] if err else proc.returncode}")
        if not healthy:
            raise RuntimeError(f"simulator server did not become healthy within {startup_timeout_s:g} s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def serve(
    profile: str | Profile,
    port: int,
    *,
    host: str = "127.0.0.1",
    time_scale: float = 1.0,
    num_gpu_blocks: int | None = None,
    model_name: str | None = None,
    script: str | Path | None = None,
    default_output_tokens: int = 64,
    log_level: str = "warning",
    kv_offload_gib: float | None = None,
) -> None:
    """Run the simulated vLLM server until interrupted (what `thunderbench sim serve` calls)."""
    import uvicorn

    prof = load_profile(profile, num_gpu_blocks=num_gpu_blocks) if isinstance(profile, str) else (
        profile.with_num_gpu_blocks(num_gpu_blocks))
    tok = profile_tokenizer(prof)
    app = create_app(prof, time_scale=time_scale, model_name=model_name,
                     script=load_script(script) if script else None, default_output_tokens=default_output_tokens,
                     num_gpu_blocks_override=num_gpu_blocks, tokenizer=tok, kv_offload_gib=kv_offload_gib)
    counted = (f"tokenizer {tok.info.source}" if tok.info.kind == "model"
               else "prompt tokens estimated (regex estimator; why: the warning above)")
    print(f"thunderbench simulated vLLM: profile {prof.name} ({prof.engine.num_gpu_blocks} blocks x "
          f"{prof.engine.block_size}), time scale {time_scale:g}, {counted}, http://{host}:{port}",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.sim.server", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="tiny-cpu", help="profile name (harness/sim/profiles) or a .toml path")
    ap.add_argument("--port", type=int, default=8100)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--time-scale", type=float, default=1.0, help="simulated seconds per wall second")
    ap.add_argument("--num-gpu-blocks", type=int, default=None, help="override the KV capacity (blocks)")
    ap.add_argument("--served-model-name", default=None, help="model name (default: the profile name)")
    ap.add_argument("--script", default=None, help="JSON script of replies (content or tool calls)")
    ap.add_argument("--default-output-tokens", type=int, default=64)
    ap.add_argument("--log-level", default="warning")
    ap.add_argument("--kv-offloading-size", type=float, default=None,
                    help="host KV tier in GiB over all GPUs, as vLLM's flag (needs a profile with [offload])")
    a = ap.parse_args(argv)
    try:
        if a.time_scale <= 0:
            raise ValueError("--time-scale must be > 0")
        serve(a.profile, a.port, host=a.host, time_scale=a.time_scale, num_gpu_blocks=a.num_gpu_blocks,
              model_name=a.served_model_name, script=a.script, default_output_tokens=a.default_output_tokens,
              log_level=a.log_level, kv_offload_gib=a.kv_offloading_size)
    except (ProfileError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
