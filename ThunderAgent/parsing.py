"""Reading a client's request: body limits, JSON, field checks, the program id, tool resources, what to
forward, and the token estimate of each scheduled route.

    route = SCHEDULED["/v1/chat/completions"]
    payload = parse_json_object(await read_body(request, limit))
    route.validate(payload)
    program_id, source = extract_program_id(payload, header, url_id)

Every refusal is a ProxyError (status, OpenAI-style type, param, code) that the caller answers with.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable

from starlette.requests import Request

from ThunderAgent.forward import ProxyError
from ThunderAgent.programs import MAX_RESOURCE_ID_LEN, MAX_RESOURCE_IDS, RESOURCE_KEYS
from ThunderAgent.tokens import (
    ProgramTokenState,
    TokenEstimator,
    message_chars,
    prompt_size,
    response_item_chars,
)

MAX_PROGRAM_ID_LEN = 512
async def read_body(request: Request, limit: int, limit_name: str = "--max-body-bytes") -> bytes:
    """The request body, or 413 as soon as it is known to exceed `limit` bytes (`limit_name` says which
    limit, for the message)."""
    cl = request.headers.get("content-length")
    if cl is not None:
        try:
            declared = int(cl)
        except ValueError:
            raise ProxyError(400, "invalid Content-Length header", code="invalid_content_length") from None
        if declared > limit:
            raise ProxyError(
                413,
                f"request body of {declared} bytes exceeds the limit of {limit} bytes ({limit_name})",
                code="request_too_large",
            )
    chunks: list[bytes] = []
    n = 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise ProxyError(
                413,
                f"request body exceeds the limit of {limit} bytes ({limit_name})",
                code="request_too_large",
            )
        chunks.append(chunk)
    return b"".join(chunks)


# A JSON string escape of a UTF-16 surrogate (\\ud800-\\udfff). Paired surrogates decode to one code point;
# a lone one decodes to a str that cannot be encoded as UTF-8, so any later re-encoding (the forwarded body,
# /programs, a log or record line) would fail. Bodies without such an escape (nearly all) are not walked.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def has_lone_surrogate(value: Any) -> bool:
    """True if any string (key or value) in a parsed JSON value holds an unpaired UTF-16 surrogate."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if _LONE_SURROGATE.search(v):
                return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Body -> JSON object; 400 for invalid UTF-8/JSON (message "Invalid JSON", as upstream), for a string
    holding a lone UTF-16 surrogate (valid JSON, but not Unicode text), or a non-object."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProxyError(400, "Invalid JSON", code="invalid_json") from None
    if _SURROGATE_ESCAPE.search(body) and has_lone_surrogate(payload):
        raise ProxyError(
            400,
            "request body holds a lone UTF-16 surrogate escape (e.g. \\ud800 without its pair): not valid "
            "Unicode text",
            code="invalid_unicode",
        )
    if not isinstance(payload, dict):
        raise ProxyError(
            400, f"request body must be a JSON object, got {type(payload).__name__}", code="invalid_body"
        )
    return payload


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "stream": (bool,),
    "stream_options": (dict,),
    "extra_body": (dict,),
    "tools": (list,),
}


def validate_fields(payload: dict[str, Any]) -> None:
    """Type checks for the fields the proxy reads (the engine validates the rest)."""
    for name, types in _FIELD_TYPES.items():
        v = payload.get(name)
        if v is not None and not isinstance(v, types):
            raise ProxyError(
                400,
                f"'{name}' must be of type {types[0].__name__}, got {type(v).__name__}",
                param=name,
                code="invalid_type",
            )


def validate_chat(payload: dict[str, Any]) -> None:
    """Chat: `messages` must be a list of objects, plus the common type checks."""
    messages = payload.get("messages")
    if not isinstance(messages, list):
        what = "missing" if messages is None else f"a {type(messages).__name__}"
        raise ProxyError(
            400,
            f"'messages' must be a list of message objects ({what})",
            param="messages",
            code="invalid_type",
        )
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ProxyError(
                400, f"messages[{i}] must be an object", param=f"messages[{i}]", code="invalid_type"
            )
    validate_fields(payload)


def coerce_id(value: Any, param: str) -> str | None:
    """A program id as given (None: not given). An empty string is refused (400) rather than silently
    read as "not given": a client that sends one meant some program, and must not land in "default"."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ProxyError(400, f"'{param}' must be a string", param=param, code="invalid_type")
    s = str(value)
    if not s:
        raise ProxyError(400, f"'{param}' must not be empty", param=param, code="invalid_value")
    if len(s) > MAX_PROGRAM_ID_LEN:
        raise ProxyError(
            400,
            f"'{param}' is longer than {MAX_PROGRAM_ID_LEN} characters",
            param=param,
            code="invalid_value",
        )
    return s


def extract_program_id(payload: dict[str, Any], header: str | None, url_id: str | None) -> tuple[str, str]:
    """(program_id, source). Precedence: top-level body, literal extra_body, X-Program-Id header, URL
    prefix; none -> "default" (as upstream)."""
    eb = payload.get("extra_body")
    candidates = (
        ("body", payload.get("program_id"), "program_id"),
        ("extra_body", eb.get("program_id") if isinstance(eb, dict) else None, "extra_body.program_id"),
        ("header", header, "X-Program-Id"),
        ("url", url_id, "program_id"),
    )
    for source, value, param in candidates:
        pid = coerce_id(value, param)
        if pid is not None:
            return pid, source
    return "default", "default"


def extract_resources(payload: dict[str, Any]) -> dict[str, list[str]]:
    """Tool resources (`docker_ids`, `tool_ids`, top level or in extra_body) to reclaim at release."""
    out: dict[str, list[str]] = {}
    eb = payload.get("extra_body")
    for container in (payload, eb if isinstance(eb, dict) else {}):
        for key in RESOURCE_KEYS:
            v = container.get(key)
            if v is None:
                continue
            if isinstance(v, str):
                v = [v]
            if not isinstance(v, list) or not all(
                isinstance(i, (str, int)) and not isinstance(i, bool) for i in v
            ):
                raise ProxyError(400, f"'{key}' must be a list of strings", param=key, code="invalid_type")
            ids = out.setdefault(key, [])
            ids.extend(str(i) for i in v)
            if len(ids) > MAX_RESOURCE_IDS:
                raise ProxyError(
                    400, f"'{key}' lists more than {MAX_RESOURCE_IDS} ids", param=key, code="invalid_value"
                )
            if any(len(i) > MAX_RESOURCE_ID_LEN for i in ids):
                raise ProxyError(
                    400,
                    f"'{key}' has an id longer than {MAX_RESOURCE_ID_LEN} characters",
                    param=key,
                    code="invalid_value",
                )
    return out


@dataclass(slots=True)
class Prepared:
    """What to send to the backend."""

    body: bytes
    stream: bool
    strip_usage_chunk: bool  # the proxy asked for a usage chunk the client did not ask for


def prepare_forward(payload: dict[str, Any], original: bytes, ask_usage: bool = True) -> Prepared:
    """Strip program_id and harness-only fields; ask for usage on streams (`ask_usage`: routes whose
    streams carry usage only on request, i.e. chat and text completions). The original bytes are
    forwarded untouched when nothing had to change."""
    stream = bool(payload.get("stream"))
    fwd = payload
    changed = False
    strip_keys = ("program_id", *RESOURCE_KEYS)
    if any(k in payload for k in strip_keys) or "extra_body" in payload:
        fwd = {k: v for k, v in payload.items() if k not in strip_keys}
        eb = payload.get("extra_body")
        if isinstance(eb, dict) and any(k in eb for k in strip_keys):
            eb = {k: v for k, v in eb.items() if k not in strip_keys}
            if eb:
                fwd["extra_body"] = eb
            else:
                del fwd["extra_body"]
        changed = fwd.keys() != payload.keys() or fwd.get("extra_body") is not payload.get("extra_body")
    strip_usage = False
    if stream and ask_usage:
        so = payload.get("stream_options")
        so = so if isinstance(so, dict) else {}
        if so.get("include_usage") is not True and not so.get("continuous_usage_stats"):
            if fwd is payload:
                fwd = dict(payload)
            fwd["stream_options"] = {**so, "include_usage": True}
            strip_usage = True
            changed = True
    body = json.dumps(fwd, ensure_ascii=False, separators=(",", ":")).encode() if changed else original
    return Prepared(body=body, stream=stream, strip_usage_chunk=strip_usage)


def _estimate_chat(est: TokenEstimator, st: ProgramTokenState, payload: dict[str, Any]) -> int:
    return est.estimate(st, payload["messages"], payload.get("tools"))


def _estimate_completion(est: TokenEstimator, st: ProgramTokenState, payload: dict[str, Any]) -> int:
    return est.estimate_prompt(st, payload.get("prompt"))


def _estimate_responses(est: TokenEstimator, st: ProgramTokenState, payload: dict[str, Any]) -> int:
    given = payload.get("input")
    items: list[Any] = [given] if isinstance(given, str) else list(given) if isinstance(given, list) else []
    instructions = payload.get("instructions")
    if isinstance(instructions, str) and instructions:
        items.insert(0, {"role": "system", "content": instructions})
    continued = isinstance(payload.get("previous_response_id"), str)  # earlier turns stored on the engine
    return est.estimate(st, items, payload.get("tools"), chars=response_item_chars, all_new=continued)


# The most characters one token can stand for, for a lower bound on a prompt's size: English prose is ~4
# characters per token and code ~3; the longest tokens in common vocabularies are runs of indentation. The
# proxy's own estimate uses a learned ratio that can read several times too high on a new program, so it is
# never used to refuse a request.
MAX_CHARS_PER_TOKEN = 16


def prompt_floor(route: "Route", payload: dict[str, Any]) -> tuple[int, int]:
    """(characters of prompt text, exact tokens of token-id prompts) the request carries at the least."""
    if route.path == "/v1/completions":
        return prompt_size(payload.get("prompt"))
    if route.path == "/v1/responses":
        given = payload.get("input")
        items = [given] if isinstance(given, str) else given if isinstance(given, list) else []
        instr = payload.get("instructions")
        return sum(response_item_chars(i) for i in items) + (len(instr) if isinstance(instr, str) else 0), 0
    return sum(message_chars(m) for m in payload.get("messages") or ()), 0


@dataclass(frozen=True, slots=True)
class Route:
    """A scheduled inference route: its backend path and how the proxy reads its body."""

    path: str
    validate: Callable[[dict[str, Any]], None]
    estimate: Callable[[TokenEstimator, ProgramTokenState, dict[str, Any]], int]
    ask_usage: bool  # streams carry usage only when asked (stream_options.include_usage); Responses
    # streams always end with usage in their `response.completed` event


CHAT = Route("/v1/chat/completions", validate_chat, _estimate_chat, ask_usage=True)
COMPLETIONS = Route("/v1/completions", validate_fields, _estimate_completion, ask_usage=True)
RESPONSES = Route("/v1/responses", validate_fields, _estimate_responses, ask_usage=False)
SCHEDULED: dict[str, Route] = {r.path: r for r in (CHAT, COMPLETIONS, RESPONSES)}

# Routes vLLM serves that pass through unscheduled (bodies and answers unchanged). Inference routes not
# listed here (e.g. Anthropic /v1/messages) answer 404 rather than bypass the scheduler unseen.
RELAY_POST = (
    "/tokenize",
    "/detokenize",
    "/v1/embeddings",
    "/v2/embed",
    "/pooling",
    "/classify",
    "/score",
    "/v1/score",
    "/rerank",
    "/v1/rerank",
    "/v2/rerank",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
)
RELAY_GET = ("/version",)
