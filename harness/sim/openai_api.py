"""The two scheduled routes of the simulated vLLM server, as vLLM shapes them: /v1/chat/completions and
/v1/completions.

Both routes run the same way (harness/sim/server.py: read the body, parse it into a `Job`, submit its engine
`Request`, then answer in one JSON body or as a server-sent-event stream once the engine delivers). They differ
only in what is here: how the prompt and the output are made from the body (`parse`), and how the answer is
shaped (`response`, `events`). Errors are raised as `ApiError`, which the server turns into vLLM's
OpenAI-style error JSON.

Chat renders messages with the profile's tokenizer (harness/sim/tokenizer.py) and may answer from a script of
replies or tool calls; completions take a text or token-id prompt (what calibration and validation drive,
because token ids make the prompt identical on a real vLLM and on the simulator).
"""

from __future__ import annotations

import json
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Protocol

from fastapi.responses import JSONResponse

from harness.sim.engine import IdSeq, Request
from harness.sim.liveclock import Pending
from harness.sim.tokenizer import SimTokenizer, pieces

VERSION = "0.32.0"  # the vLLM release whose API and metrics this server speaks
FINGERPRINT = f"vllm-{VERSION}-thunderbench-sim"


class ApiError(Exception):
    """A request the server refuses, with vLLM's status, error type and offending parameter."""

    def __init__(self, message: str, code: int = 400, type_: str = "BadRequestError", param: str | None = None):
        super().__init__(message)
        self.message, self.code, self.type_, self.param = message, code, type_, param

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.type_, self.code, self.param), status_code=self.code)


def error_body(message: str, type_: str, code: int, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


@dataclass(frozen=True)
class ServedModel:
    """What the routes need to know of the served model and engine."""
    name: str
    max_len: int
    block_size: int
    num_gpu_blocks: int
    tok: SimTokenizer
    script: list[dict[str, Any]] | None = None
    default_output_tokens: int = 64

    def fits(self, n_tokens: int) -> bool:
        """Whether a request of `n_tokens` can ever fit in the KV cache (one block stays free, as in vLLM)."""
        return -(-n_tokens // self.block_size) <= self.num_gpu_blocks - 1


@dataclass
class Job:
    """One parsed request: its prompt and its (already decided) output, and the engine request carrying them."""
    body: dict[str, Any]
    rid: str
    prompt_ids: list[int]
    out_ids: list[int]
    text: str
    reason: str
    req: Request
    tool_calls: list[dict[str, Any]] | None = None
    created: int = 0  # set when submitted

    def usage(self) -> dict[str, Any]:
        n_prompt, n_out = len(self.prompt_ids), len(self.out_ids)
        return {"prompt_tokens": n_prompt, "total_tokens": n_prompt + n_out, "completion_tokens": n_out,
                "prompt_tokens_details": {"cached_tokens": max(self.req.num_cached_tokens, 0)}}


class Api(Protocol):
    def parse(self, body: dict[str, Any]) -> Job: ...
    def response(self, job: Job) -> dict[str, Any]: ...
    def events(self, job: Job, pending: Pending) -> AsyncIterator[str]: ...


def program_id(body: dict[str, Any]) -> str | None:
    pid = body.get("program_id")
    if pid is None and isinstance(body.get("extra_body"), dict):
        pid = body["extra_body"].get("program_id")
    return str(pid) if pid is not None else None


def positive_max_tokens(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ApiError("max_tokens must be a positive integer", param="max_tokens")
    return value


def context_error(max_len: int, n_prompt: int, max_tokens: int) -> ApiError:
    return ApiError(
        f"This model's maximum context length is {max_len} tokens. However, you requested "
        f"{n_prompt + max_tokens} tokens ({n_prompt} in the messages, {max_tokens} in the completion). "
        f"Please reduce the length of the messages or completion.", param="max_tokens")


def render_messages(model: ServedModel, body: dict[str, Any]) -> list[int]:
    """A chat request's prompt ids, rendered as vLLM renders it: the request's tools (as sent; vLLM passes them
    even with tool_choice "none" unless started with --exclude-tools-when-tool-choice-none) and
    chat_template_kwargs go to the template."""
    tools = body.get("tools")
    kwargs = body.get("chat_template_kwargs")
    try:
        return model.tok.render_messages(body["messages"],
                                         add_generation_prompt=bool(body.get("add_generation_prompt", True)),
                                         tools=tools if isinstance(tools, list) else None,
                                         template_kwargs=kwargs if isinstance(kwargs, dict) else None)
    except Exception as e:  # noqa: BLE001 - a template rejecting the input is the client's error, as in vLLM
        raise ApiError(f"Chat template rejected the request: {type(e).__name__}: {e}", param="messages") from e


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj)}\n\n"


class ChatApi:
    """/v1/chat/completions: messages in, an assistant message (text or scripted tool calls) out."""

    def __init__(self, model: ServedModel) -> None:
        self.model = model

    def parse(self, body: dict[str, Any]) -> Job:
        m = self.model
        max_len = m.max_len
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(x, dict) for x in messages):
            raise ApiError("`messages` must be a non-empty list of message objects", param="messages")
        if body.get("n", 1) != 1:
            raise ApiError("Only n=1 is supported by the simulator", param="n")
        prompt_ids = render_messages(m, body)
        n_prompt = len(prompt_ids)
        if n_prompt > max_len:
            raise ApiError(
                f"This model's maximum context length is {max_len} tokens. However, your prompt contains at least "
                f"{n_prompt} input tokens, which exceeds this limit even without any output tokens. Please reduce "
                f"the length of the input prompt. (parameter=input_tokens, value={n_prompt})", param="input_tokens")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is not None:
            positive_max_tokens(max_tokens)
            if n_prompt + max_tokens > max_len:
                raise context_error(max_len, n_prompt, max_tokens)
        tool_calls: list[dict[str, Any]] | None = None
        if m.script:
            turn = sum(1 for x in messages if x.get("role") == "assistant")
            entry = m.script[min(turn, len(m.script) - 1)]
            if entry.get("tool_calls"):
                tool_calls = [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                               "function": {"name": c["name"], "arguments": json.dumps(c.get("arguments", {}))}}
                              for c in entry["tool_calls"]]
                text = ""
            else:
                text = str(entry.get("content", ""))
            out_ids = m.tok.encode(text) if text else m.tok.encode(json.dumps(tool_calls, sort_keys=True,
                                                                              separators=(",", ":")))
            full = len(out_ids)
            limit = max_tokens if max_tokens is not None else max_len - n_prompt
            out_ids = out_ids[:limit] or m.tok.encode(" ")  # an empty reply still costs one (end) token
            reason = "length" if len(out_ids) == limit and limit < full else (
                "tool_calls" if tool_calls else "stop")
        else:
            n_out = max_tokens if max_tokens is not None else min(m.default_output_tokens, max_len - n_prompt)
            if n_out < 1:
                raise ApiError("No room left for output tokens within max_model_len", param="max_tokens")
            text, out_ids = m.tok.output(zlib.crc32(bytes(str(prompt_ids[-64:]), "ascii")), n_out)
            reason = "length" if max_tokens is not None else "stop"
        if not m.fits(n_prompt + len(out_ids)):
            raise ApiError(f"The request needs {n_prompt + len(out_ids)} tokens of KV cache but the engine has only "
                           f"{(m.num_gpu_blocks - 1) * m.block_size}", param="max_tokens")
        rid = f"chatcmpl-{uuid.uuid4().hex[:16]}"
        req = Request(rid, IdSeq(m.block_size, prompt_ids + out_ids), n_prompt, len(out_ids), 0.0,
                      program_id=program_id(body), finish_reason_at_limit="stop" if reason == "tool_calls" else reason)
        return Job(body, rid, prompt_ids, out_ids, text, reason, req, tool_calls)

    def response(self, job: Job) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": job.text if not job.tool_calls else None,
                                   "refusal": None, "tool_calls": job.tool_calls or [], "reasoning_content": None}
        return {
            "id": job.rid, "object": "chat.completion", "created": job.created, "model": self.model.name,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": job.reason,
                         "stop_reason": None}],
            "service_tier": None, "system_fingerprint": FINGERPRINT, "usage": job.usage(),
            "prompt_logprobs": None, "kv_transfer_params": None,
        }

    async def events(self, job: Job, pending: Pending) -> AsyncIterator[str]:
        """The role first, then the first piece of content when the first token is due, the rest (or the tool
        calls) in a few chunks when the request finishes, the usage chunk if asked for, and [DONE]."""
        opts = job.body.get("stream_options") or {}
        include_usage = bool(opts.get("include_usage"))
        continuous = bool(opts.get("continuous_usage_stats"))
        n_prompt, n_total = len(job.prompt_ids), len(job.out_ids)

        def chunk(delta: dict[str, Any], finish: str | None = None, n_out: int = 0) -> str:
            c: dict[str, Any] = {"id": job.rid, "object": "chat.completion.chunk", "created": job.created,
                                 "model": self.model.name,
                                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            if include_usage and continuous:
                c["usage"] = {"prompt_tokens": n_prompt, "total_tokens": n_prompt + n_out, "completion_tokens": n_out}
            return _sse(c)

        yield chunk({"role": "assistant", "content": ""})
        await pending.first.wait()
        if job.tool_calls:
            await pending.done.wait()
            deltas = [{"tool_calls": [{"index": i, **tc} for i, tc in enumerate(job.tool_calls)]}]
        else:
            parts = pieces(job.text)
            yield chunk({"content": parts[0] if parts else ""}, None, 1)
            await pending.done.wait()
            rest = parts[1:]
            step = max(1, len(rest) // 8)  # a few chunks, not one per token
            deltas = [{"content": "".join(rest[i:i + step])} for i in range(0, len(rest), step)]
        for i, d in enumerate(deltas):
            yield chunk(d, job.reason if i == len(deltas) - 1 else None, n_total)
        if not deltas:
            yield chunk({"content": ""}, job.reason, n_total)
        if include_usage:
            yield _sse({"id": job.rid, "object": "chat.completion.chunk", "created": job.created,
                        "model": self.model.name, "choices": [], "usage": job.usage(),
                        "system_fingerprint": FINGERPRINT})
        yield "data: [DONE]\n\n"


class CompletionsApi:
    """/v1/completions: a text or token-id prompt in, exactly `max_tokens` (default 16) tokens of text out."""

    def __init__(self, model: ServedModel) -> None:
        self.model = model

    def parse(self, body: dict[str, Any]) -> Job:
        m = self.model
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, str):
            ids = m.tok.encode_prompt(prompt)
        elif isinstance(prompt, list) and prompt and all(type(x) is int for x in prompt):  # bool is not a token id
            ids = list(prompt)
        else:
            raise ApiError("`prompt` must be a string or a non-empty list of token ids", param="prompt")
        max_tokens = positive_max_tokens(body.get("max_tokens", 16))
        if len(ids) + max_tokens > m.max_len:
            raise context_error(m.max_len, len(ids), max_tokens)
        if not m.fits(len(ids) + max_tokens):
            raise ApiError("The request can never fit in the KV cache", param="max_tokens")
        text, out_ids = m.tok.output(zlib.crc32(bytes(str(ids[-64:]), "ascii")), max_tokens)
        rid = f"cmpl-{uuid.uuid4().hex[:16]}"
        req = Request(rid, IdSeq(m.block_size, ids + out_ids), len(ids), len(out_ids), 0.0, program_id=program_id(body))
        return Job(body, rid, ids, out_ids, text, "length", req)

    def response(self, job: Job) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "text": job.text, "logprobs": None, "finish_reason": "length",
                                  "stop_reason": None, "prompt_logprobs": None}
        if job.body.get("return_token_ids"):
            choice["token_ids"] = job.out_ids
            choice["prompt_token_ids"] = job.prompt_ids
        return {"id": job.rid, "object": "text_completion", "created": job.created, "model": self.model.name,
                "choices": [choice], "service_tier": None, "system_fingerprint": FINGERPRINT, "usage": job.usage()}

    async def events(self, job: Job, pending: Pending) -> AsyncIterator[str]:
        """The first piece when the first token is due, the rest in a few chunks when the request finishes (each
        with its token ids if asked for), the usage chunk if asked for, and [DONE]."""
        body = job.body
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        parts = pieces(job.text)
        out_ids = job.out_ids

        def chunk(piece: str, finish: str | None, token_ids: list[int] | None) -> str:
            c: dict[str, Any] = {"index": 0, "text": piece, "logprobs": None, "finish_reason": finish,
                                 "stop_reason": None}
            if body.get("return_token_ids") and token_ids is not None:
                c["token_ids"] = token_ids
            return _sse({"id": job.rid, "object": "text_completion", "created": job.created,
                         "model": self.model.name, "choices": [c]})

        await pending.first.wait()
        yield chunk(parts[0], "length" if len(parts) == 1 else None, out_ids[:1])
        await pending.done.wait()
        rest = list(zip(parts[1:], out_ids[1:]))
        step = max(1, len(rest) // 8)
        for i in range(0, len(rest), step):
            part = rest[i:i + step]
            yield chunk("".join(p for p, _ in part), "length" if i + step >= len(rest) else None, [t for _, t in part])
        if include_usage:
            yield _sse({"id": job.rid, "object": "text_completion", "created": job.created,
                        "model": self.model.name, "choices": [], "usage": job.usage()})
        yield "data: [DONE]\n\n"


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
