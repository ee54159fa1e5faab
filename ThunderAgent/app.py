"""The ThunderAgent proxy's HTTP layer: routes, the request lifecycle, and the background loops.

    create_app(config, *, policy=None, reclaimer=None, clock=None) -> FastAPI

Three inference routes are scheduled, by one code path (`Proxy.infer`, parameterised by a `Route`):
`/v1/chat/completions`, `/v1/completions` and `/v1/responses`. The other routes vLLM serves (tokenize,
embeddings, pooling, score/rerank, audio, version, stored responses) pass through unscheduled to the
program's backend or the least-loaded healthy one (`Proxy.relay`).

A scheduled request goes: read (size limit) -> parse and validate -> program id (body, extra_body,
X-Program-Id header, /p/<id>/ URL prefix) -> registry record + token estimate -> `policy.on_arrival`
-> (held on a future, no byte sent, until the policy's Resume/Reject) -> forward (ThunderAgent/forward.py)
-> `policy.on_request_end` exactly once, whatever happened (success, error status, backend failure,
client disconnect, missing usage). Every error reaches the client as OpenAI-style JSON with a fitting
status; the proxy never answers 500.

The policy is pure and synchronous; this module is the only place that owns asyncio: it applies every
action any policy call returns (Resume wakes held requests, Reject fails them) and runs the loops on the
app's lifespan — scheduler ticks (router tr), capacity discovery until every backend's KV capacity is
known, metrics scraping and health (--metrics), and idle-program expiry (--idle-ttl, --max-programs).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar
from urllib.parse import quote

import anyio
import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from ThunderAgent import __version__
from ThunderAgent.backends import BackendState, fetch_capacity, probe_health, scrape
from ThunderAgent.config import Config
from ThunderAgent.forward import (
    PROGRESS_EVENTS,
    ProxyError,
    SSETap,
    TransportError,
    Upstream,
    Usage,
    backend_error_body,
    make_client,
    request_headers,
    response_headers,
    send_with_retry,
    sse_error_event,
    translate_transport_error,
    usage_from,
)
from ThunderAgent.policy import make_policy
from ThunderAgent.policy.base import Phase, Policy, State
from ThunderAgent.policy.driver import Ticket
from ThunderAgent.programs import (
    MAX_RESOURCE_ID_LEN,
    MAX_RESOURCE_IDS,
    RESOURCE_KEYS,
    ProgramRecord,
    ProgramRegistry,
)
from ThunderAgent.logsafe import redact_url
from ThunderAgent.records import StepRecord
from ThunderAgent.scheduling import ProxyScheduler
from ThunderAgent.telemetry import ProfileWriter, Telemetry, csv_row
from ThunderAgent.tokens import (
    ProgramTokenState,
    TokenEstimator,
    message_chars,
    prompt_size,
    response_item_chars,
)

log = logging.getLogger("thunderagent")

Clock = Callable[[], float]
T = TypeVar("T")

MAX_PROGRAM_ID_LEN = 512
RELEASE_BODY_LIMIT = 64 * 1024
CLIENT_CLOSED = 499  # nginx's "client closed request": recorded only, nobody is there to read it


class ClientGone(Exception):
    """The client disconnected before its response started."""


# --- request parsing ------------------------------------------------------------------------------------


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


def _coerce_id(value: Any, param: str) -> str | None:
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
        pid = _coerce_id(value, param)
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


# --- responses ------------------------------------------------------------------------------------------


class SafeJSONResponse(JSONResponse):
    """JSON as Starlette renders it (UTF-8, non-ASCII kept), falling back to ASCII escapes for text that
    UTF-8 cannot encode (a lone surrogate): a view of client-given text never fails for every caller."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, allow_nan=False, separators=(",", ":")).encode()


def error_response(err: ProxyError, compat_detail: bool = False) -> JSONResponse:
    body = err.body()
    if compat_detail:  # upstream answered {"detail": ...} here; keep that key for its clients
        body["detail"] = err.message
    return SafeJSONResponse(body, status_code=err.status, headers=err.headers)


class RawResponse(Response):
    """A response with the backend's headers as they came (minus hop-by-hop ones)."""

    def __init__(self, content: bytes, status_code: int, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self.body = content
        self.status_code = status_code
        self.background = None
        self.raw_headers = [*raw_headers, (b"content-length", str(len(content)).encode())]


class ProxyStream(Response):
    """Streams a backend SSE response to the client through an SSETap and calls `on_done` exactly once
    when the stream ends for any reason (completed, backend failure, client disconnect, cancellation)."""

    def __init__(
        self,
        upstream: Upstream,
        tap: SSETap,
        backend: str,
        on_done: Callable[[str, ProxyError | None], None],
    ) -> None:
        self.upstream = upstream
        self.tap = tap
        self.backend = backend
        self.on_done = on_done
        self.status_code = upstream.status_code
        self.raw_headers = response_headers(upstream.raw_headers)
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        result: list[Any] = ["cancelled", None]
        try:
            async with anyio.create_task_group() as tg:

                async def pump() -> None:
                    result[:] = await self._pump(send)
                    tg.cancel_scope.cancel()

                async def listen() -> None:
                    while True:
                        msg = await receive()
                        if msg["type"] == "http.disconnect":
                            tg.cancel_scope.cancel()
                            return

                tg.start_soon(pump)
                await listen()
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self.upstream.aclose()
                except Exception:  # noqa: BLE001 - closing a broken stream may fail; nothing to do
                    pass
            self.on_done(result[0], result[1])

    async def _pump(self, send: Send) -> tuple[str, ProxyError | None]:
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            )
        except OSError:
            return "cancelled", None
        try:
            async for chunk in self.upstream.aiter_bytes():
                out = self.tap.feed(chunk)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            await send({"type": "http.response.body", "body": self.tap.flush(), "more_body": False})
            return "ok", None
        except TransportError as e:
            err = translate_transport_error(e, self.backend)
            log.warning("stream from %s broke: %s", redact_url(self.backend), err.message)
            try:
                await send({"type": "http.response.body", "body": sse_error_event(err), "more_body": False})
            except OSError:
                pass
            return "failed", err
        except OSError:  # the client went away (ASGI servers raise OSError subclasses on send)
            return "cancelled", None
        except Exception as e:  # noqa: BLE001 - a proxy bug must end the stream cleanly, not kill it
            log.exception("streaming from %s failed", redact_url(self.backend))
            err = ProxyError(
                502,
                f"proxy error while streaming: {type(e).__name__}: {e}",
                "proxy_error",
                code="proxy_error",
            )
            try:
                await send({"type": "http.response.body", "body": sse_error_event(err), "more_body": False})
            except OSError:
                pass
            return "failed", err


# --- the proxy runtime ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Call:
    """One scheduled inference request through the proxy."""

    route: Route
    program_id: str
    record: ProgramRecord
    step: int
    stream: bool
    estimate: int
    arrival: float  # policy clock
    arrival_wall: float
    start: float | None = None
    start_wall: float | None = None
    first_token_wall: float | None = None
    backend: str | None = None
    ticket: Ticket | None = None
    finished: bool = False


@dataclass
class Proxy:
    """All runtime state of one app: policy, registry, backends, clients, telemetry, loops."""

    config: Config
    policy: Policy
    clock: Clock
    reclaimer: Any = None
    registry: ProgramRegistry = field(default_factory=ProgramRegistry)
    estimator: TokenEstimator = field(default_factory=TokenEstimator)

    def __post_init__(self) -> None:
        self.backends: dict[str, BackendState] = {
            url: BackendState(url=url, backend_type=self.config.backend_type) for url in self.config.backends
        }
        self.scheduler = ProxyScheduler(self.policy, self.clock, self.config.backends)
        self.telemetry = Telemetry(self.policy, self.registry, lambda: self.backends)
        if self.reclaimer is not None and hasattr(self.reclaimer, "register_metrics"):
            self.reclaimer.register_metrics(self.telemetry.registry)
        self.profiler: ProfileWriter | None = (
            ProfileWriter(self.config.profile_dir) if self.config.profile else None
        )
        self.client = make_client(self.config)
        probe = self.config.probe_timeout
        self.probe_client = httpx.AsyncClient(
            timeout=httpx.Timeout(probe, connect=min(probe, self.config.proxy_connect_timeout))
        )
        self._tasks: list[asyncio.Task[None]] = []
        self.closed = False

    # --- the scheduled request lifecycle ------------------------------------------------------------
    async def infer(self, request: Request, route: Route, url_program_id: str | None = None) -> Response:
        """One request on a scheduled route (chat, text completions, responses), from arrival to answer."""
        arrival_wall = time.time()
        now = self.clock()
        try:
            body = await read_body(request, self.config.max_body_bytes)
            payload = parse_json_object(body)
            route.validate(payload)
            pid, source = extract_program_id(payload, request.headers.get("x-program-id"), url_program_id)
            resources = extract_resources(payload)
            prepared = prepare_forward(payload, body, route.ask_usage)
        except ProxyError as e:
            self.telemetry.requests.labels("invalid").inc()
            return error_response(e, compat_detail=e.message == "Invalid JSON")
        except ClientDisconnect:
            self.telemetry.requests.labels("cancelled").inc()
            return error_response(
                ProxyError(CLIENT_CLOSED, "client disconnected while sending the request", "cancelled")
            )
        if self.closed:
            return error_response(ProxyError(503, "proxy is shutting down", "unavailable"))
        too_big = self.never_fits(route, payload)
        if too_big is not None:
            self.telemetry.requests.labels("invalid").inc()
            return error_response(too_big)

        if pid not in self.registry and len(self.registry) >= self.config.max_programs:
            self.telemetry.requests.labels("rejected").inc()
            return error_response(
                ProxyError(
                    429,
                    f"the proxy tracks its maximum of {self.config.max_programs} programs (--max-programs): "
                    "a new program can start when one is released or expires (--idle-ttl)",
                    "rate_limit_error",
                    code="too_many_programs",
                    headers={"Retry-After": str(max(1, math.ceil(min(60.0, self.config.idle_ttl or 60.0))))},
                )
            )
        rec, created = self.registry.get_or_create(pid, now)
        if created:
            log.info("new program %s (id from %s)", pid, source)
        if resources:
            rec.add_resources(resources)
        rec.step_count += 1
        rec.last_activity = now
        rec.last_arrival = now
        rec.context_len = len(body)
        estimate = route.estimate(self.estimator, rec.tokens, payload)
        largest = self.largest_capacity()
        room = None if largest is None else int(largest * self.config.low_watermark) - self.config.buffer_per_program
        if room is not None and estimate > room > 0:
            # never_fits let it through, so it may fit: an estimate above what an empty backend admits is
            # the learned chars/token ratio reading high (it can on a new program). Charged as much as an
            # empty backend takes, the policy places it once one is free instead of holding it until the
            # forced resume; the engine then answers with the exact size.
            estimate = room
        call = Call(route, pid, rec, rec.step_count, prepared.stream, estimate, now, arrival_wall)

        try:
            ticket = self.scheduler.arrive(pid, estimate)
        except Exception as e:  # noqa: BLE001 - e.g. no backend configured (LookupError)
            if isinstance(e, LookupError):
                log.warning("no backend for program %s: %s", pid, e)
            else:
                log.exception("policy.on_arrival failed for %s", pid)
            self.telemetry.requests.labels("rejected").inc()
            return error_response(
                ProxyError(503, f"no backend available: {e}", "unavailable", code="no_backend")
            )

        call.ticket = ticket
        if ticket.held:
            try:
                backend = await self._hold(call, ticket, request)
            except ProxyError as e:
                self._record_unforwarded(call, "rejected", e)
                return error_response(e)
            except ClientGone:
                self._record_unforwarded(call, "cancelled", None)
                return error_response(
                    ProxyError(CLIENT_CLOSED, "client closed the request while it was held", "cancelled")
                )
        else:
            backend = ticket.backend or ""

        call.backend = backend
        call.start = self.clock()
        call.start_wall = time.time()
        rec.inflight += 1
        self.telemetry.wait.observe(max(0.0, call.start - call.arrival))
        # From here on _finish(call, ...) runs exactly once, whatever happens.
        try:
            return await self._forward(call, request, prepared)
        except BaseException:
            self._finish(call, "cancelled", None, None, "cancelled")
            raise

    def largest_capacity(self) -> int | None:
        """With tr: the largest backend KV capacity once every backend's is known, else None."""
        if not self.config.scheduling_enabled:
            return None
        caps = [st.capacity for st in self.backends.values()]
        if not caps or any(c is None for c in caps):
            return None
        return max(c for c in caps if c is not None)

    def never_fits(self, route: Route, payload: dict[str, Any]) -> ProxyError | None:
        """With tr and every backend's KV capacity known: a 400 for a request whose prompt cannot fit the
        largest KV cache even at MAX_CHARS_PER_TOKEN characters per token (held, it would wait for the
        forced resume and then fail on the engine). None otherwise."""
        largest = self.largest_capacity()
        if largest is None:
            return None
        chars, ids = prompt_floor(route, payload)
        if ids + chars // MAX_CHARS_PER_TOKEN <= largest:
            return None
        floor = ids + chars // MAX_CHARS_PER_TOKEN
        return ProxyError(
            400,
            f"the prompt is at least {floor} tokens ({chars} characters at most {MAX_CHARS_PER_TOKEN} per "
            f"token{f', plus {ids} token ids' if ids else ''}) but the largest backend KV cache holds "
            f"{largest} tokens: it can never be served",
            param="messages" if route.path == CHAT.path else None,
            code="context_length_exceeded",
        )

    async def _hold(self, call: Call, ticket: Ticket, request: Request) -> str:
        """Wait (no byte sent) for the policy to Resume (-> backend) or Reject (-> ProxyError) the program.
        While no backend is healthy the wait is bounded: after --no-backend-grace seconds without any
        healthy backend the request gets 503 with Retry-After (the client sees why, and when to retry)."""
        rec = call.record
        fut: asyncio.Future[str] = ticket.handle
        rec.held += 1
        watcher = asyncio.ensure_future(_until_disconnect(request.receive))
        grace = self.config.no_backend_grace
        poll = min(1.0, max(0.02, grace / 4))
        down_since: float | None = None
        try:
            while True:
                if not self.any_healthy():
                    down_since = time.monotonic() if down_since is None else down_since
                    if time.monotonic() - down_since >= grace:
                        break
                else:
                    down_since = None
                done, _ = await asyncio.wait({fut, watcher}, timeout=poll, return_when=asyncio.FIRST_COMPLETED)
                if done:
                    break
        except BaseException:
            self.scheduler.abandon(ticket)
            raise
        finally:
            watcher.cancel()
            rec.held -= 1
        if fut.done():
            return fut.result()
        self.scheduler.abandon(ticket)
        if watcher.done() and not watcher.cancelled():
            raise ClientGone
        retry = max(1, math.ceil(2 * self.config.health_interval))
        raise ProxyError(
            503,
            f"no healthy backend for {grace:g} s (--no-backend-grace); retry in {retry} s",
            "unavailable",
            code="no_healthy_backend",
            headers={"Retry-After": str(retry)},
        )

    async def _forward(self, call: Call, request: Request, prepared: Prepared) -> Response:
        backend = call.backend or ""
        url = backend.rstrip("/") + call.route.path
        headers = request_headers(request.headers.raw)
        try:
            upstream, content = await _race_disconnect(
                request.receive,
                self._exchange(backend, url, headers, prepared.body, read=not prepared.stream),
            )
        except ClientGone:
            self._finish(call, "cancelled", None, CLIENT_CLOSED, "client disconnected")
            return error_response(ProxyError(CLIENT_CLOSED, "client disconnected", "cancelled"))
        except TransportError as e:
            err = translate_transport_error(e, backend)
            self._finish(call, "failed", None, err.status, err.message)
            return error_response(err)

        # a stream was asked for: SSE passes through; anything else (an error) is read whole
        if content is None:
            if upstream.status_code < 400 and upstream.content_type.startswith("text/event-stream"):
                return self._stream_response(call, upstream, prepared)
            try:
                content = await _race_disconnect(request.receive, upstream.aread())
            except ClientGone:
                await upstream.aclose()
                self._finish(call, "cancelled", None, CLIENT_CLOSED, "client disconnected")
                return error_response(ProxyError(CLIENT_CLOSED, "client disconnected", "cancelled"))
            except TransportError as e:
                await upstream.aclose()
                err = translate_transport_error(e, backend)
                self._finish(call, "failed", None, err.status, err.message)
                return error_response(err)
        status = upstream.status_code
        if status >= 400:
            out_status, replaced = backend_error_body(status, content)
            await upstream.aclose()
            self._finish(call, "error", None, out_status, f"backend HTTP {status}")
            if replaced is not None:
                return Response(replaced, status_code=out_status, media_type="application/json")
            return RawResponse(content, status, response_headers(upstream.raw_headers))
        usage = None
        try:
            usage = usage_from(json.loads(content))
        except ValueError:
            pass
        await upstream.aclose()
        self._finish(call, "ok", usage, status, None)
        return RawResponse(content, status, response_headers(upstream.raw_headers))

    async def _exchange(
        self,
        backend: str,
        url: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes | None,
        *,
        read: bool,
        method: str = "POST",
    ) -> tuple[Upstream, bytes | None]:
        """Send (a stale pooled connection is retried once), note whether the backend was reached, and with
        `read` also read the whole body: one task to race against the client's disconnect, not two."""
        try:
            upstream = await send_with_retry(self.client, url, headers, body, method)
        except TransportError as e:
            self._observe_health(backend, e.reached)
            raise
        self._observe_health(backend, True)
        if not read:
            return upstream, None
        try:
            return upstream, await upstream.aread()
        except BaseException:  # failed or cancelled mid-body: close the connection (the engine aborts)
            await upstream.aclose()
            raise

    def _stream_response(self, call: Call, upstream: Upstream, prepared: Prepared) -> ProxyStream:
        def on_event(n: int) -> None:
            if call.first_token_wall is None:
                call.first_token_wall = time.time()
            if n % PROGRESS_EVENTS == 0 and call.ticket is not None:
                self.scheduler.progress(call.ticket, PROGRESS_EVENTS)

        tap = SSETap(prepared.strip_usage_chunk, on_event)
        status = upstream.status_code

        def done(outcome: str, err: ProxyError | None) -> None:
            if outcome == "ok":
                self._finish(call, "ok", tap.usage, status, None)
            elif outcome == "failed" and err is not None:
                self._finish(call, "failed", tap.usage, err.status, err.message)
            else:
                self._finish(call, "cancelled", tap.usage, CLIENT_CLOSED, "client disconnected")

        return ProxyStream(upstream, tap, call.backend or "", done)

    def _finish(
        self, call: Call, outcome: str, usage: Usage | None, http_status: int | None, error: str | None
    ) -> None:
        """The one end-of-request bookkeeping: registry, estimator, policy, telemetry, profile."""
        if call.finished:
            return
        call.finished = True
        try:
            now = self.clock()
            end_wall = time.time()
            rec = call.record
            rec.inflight = max(0, rec.inflight - 1)
            rec.last_activity = now
            total = usage.total_tokens if usage else None
            self.estimator.learn(rec.tokens, usage.prompt_tokens if usage else None, total)
            if call.ticket is not None:
                self.scheduler.end(call.ticket, total)
            self.telemetry.requests.labels(outcome).inc()
            self.telemetry.latency.labels("true" if call.stream else "false").observe(
                max(0.0, now - call.arrival)
            )
            prev_end = rec.last_end
            if outcome == "ok":
                rec.last_end = end_wall
                rec.completed_steps += 1
            self._profile(call, outcome, usage, http_status, error, end_wall, prev_end)
        except Exception:  # noqa: BLE001 - bookkeeping must never break a response
            log.exception("end-of-request bookkeeping failed for %s", call.program_id)

    def _record_unforwarded(self, call: Call, outcome: str, err: ProxyError | None) -> None:
        """A held request that never reached a backend (rejected, or its client left)."""
        self.telemetry.requests.labels(outcome).inc()
        call.record.last_activity = self.clock()
        if self.profiler is not None:
            now = time.time()
            self.profiler.submit(
                StepRecord(
                    program_id=call.program_id,
                    step=call.step,
                    arrival=call.arrival_wall,
                    start=now,
                    end=now,
                    status="error" if outcome == "rejected" else "cancelled",
                    pause_s=now - call.arrival_wall,
                    http_status=err.status if err else CLIENT_CLOSED,
                    error=err.message if err else "client disconnected while held",
                    arm="thunderagent",
                ),
                None,
            )

    def _profile(
        self,
        call: Call,
        outcome: str,
        usage: Usage | None,
        http_status: int | None,
        error: str | None,
        end_wall: float,
        prev_end: float | None,
    ) -> None:
        if self.profiler is None:
            return
        start_wall = call.start_wall if call.start_wall is not None else call.arrival_wall
        rec = StepRecord(
            program_id=call.program_id,
            step=call.step,
            arrival=call.arrival_wall,
            start=start_wall,
            end=end_wall,
            status={"ok": "ok", "cancelled": "cancelled"}.get(outcome, "error"),
            first_token=call.first_token_wall,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            cached_tokens=usage.cached_tokens if usage else None,
            pause_s=max(0.0, start_wall - call.arrival_wall),
            http_status=http_status,
            error=error,
            arm="thunderagent",
            backend=redact_url(call.backend) if call.backend else None,
        )
        row = None
        if outcome == "ok":
            tool_call_s = max(0.0, call.arrival_wall - prev_end) if prev_end is not None else 0.0
            row = csv_row(rec, call.record.completed_steps, tool_call_s)
            t = call.record.profile
            t.steps += 1
            first = rec.first_token
            t.prefill_s += max(0.0, first - rec.start) if first is not None else 0.0
            t.decode_s += max(0.0, rec.end - first) if first is not None else 0.0
            t.pause_s += rec.pause_s
            t.tool_call_s += tool_call_s
            if usage is not None:
                t.prompt_tokens += usage.prompt_tokens or 0
                t.completion_tokens += usage.completion_tokens or 0
                t.cached_tokens += usage.cached_tokens or 0
                if usage.cached_tokens is not None and usage.prompt_tokens:
                    t.kv_hit_sum += usage.cached_tokens / usage.prompt_tokens
                    t.kv_hit_n += 1
        self.profiler.submit(rec, row)

    # --- pass-through routes -----------------------------------------------------------------------
    def relay_backend(self, program_id: str | None) -> str | None:
        """Where an unscheduled request goes: the program's backend when it has one (stored responses and
        its prefix live there), else the healthy backend with the fewest programs (any, if none is
        healthy); None without backends."""
        views = {b.url: b for b in self.policy.backends()}
        if program_id is not None:
            v = self.policy.program(program_id)
            if v is not None and v.backend in views:
                return v.backend
        known = [views[u] for u in self.config.backends if u in views]
        pool = [b for b in known if b.healthy] or known
        if not pool:
            return self.config.backends[0] if self.config.backends else None
        return min(pool, key=lambda b: b.program_count).url

    async def relay(
        self, request: Request, path: str, url_program_id: str | None = None, backend: str | None = None
    ) -> Response:
        """Pass a request through unscheduled: the body (within --max-body-bytes), query string and end-to-
        end headers go to `backend` (default: relay_backend of the X-Program-Id header or URL prefix) and
        its answer comes back unchanged (event streams streamed); failures map as on scheduled routes."""
        try:
            body = await read_body(request, self.config.max_body_bytes)
            header_id = _coerce_id(request.headers.get("x-program-id"), "X-Program-Id")
        except ProxyError as e:
            return error_response(e)
        except ClientDisconnect:
            return error_response(
                ProxyError(CLIENT_CLOSED, "client disconnected while sending the request", "cancelled")
            )
        if backend is None:
            backend = self.relay_backend(header_id or url_program_id)
        if backend is None:
            return error_response(ProxyError(503, "no backend available", "unavailable", code="no_backend"))
        query = request.scope.get("query_string", b"")
        url = backend.rstrip("/") + path + ("?" + query.decode("latin-1") if query else "")
        headers = request_headers(request.headers.raw)
        try:
            upstream, content = await _race_disconnect(
                request.receive,
                self._exchange(backend, url, headers, body or None, read=False, method=request.method),
            )
            if upstream.status_code < 400 and upstream.content_type.startswith("text/event-stream"):
                return ProxyStream(upstream, SSETap(False), backend, lambda outcome, err: None)
            try:
                content = await _race_disconnect(request.receive, upstream.aread())
            finally:
                await upstream.aclose()
        except ClientGone:
            return error_response(ProxyError(CLIENT_CLOSED, "client disconnected", "cancelled"))
        except TransportError as e:
            return error_response(translate_transport_error(e, backend))
        if upstream.status_code >= 400:
            status, replaced = backend_error_body(upstream.status_code, content)
            if replaced is not None:
                return Response(replaced, status_code=status, media_type="application/json")
        return RawResponse(content, upstream.status_code, response_headers(upstream.raw_headers))

    # --- release and expiry ------------------------------------------------------------------------
    def drop_program(self, program_id: str, reason: str) -> bool:
        """Release (client) or expire (idle) a program: policy, held requests, registry, reclaim."""
        released = self.scheduler.release(program_id, reason)
        rec = self.registry.remove(program_id)
        if rec is not None and rec.resources and self.reclaimer is not None:
            self.reclaimer.schedule(program_id, {k: list(v) for k, v in rec.resources.items()})
        return released or rec is not None

    def expire_idle(self, now: float | None = None) -> list[str]:
        """Expire programs idle longer than --idle-ttl (a full registry refuses new programs instead of
        evicting live ones)."""
        now = self.clock() if now is None else now
        gone = []
        for rec in self.registry.idle_candidates(now, self.config.idle_ttl):
            log.info("program %s expired after %.0f s idle", rec.program_id, now - rec.last_activity)
            self.drop_program(rec.program_id, "expired")
            self.telemetry.expired.inc()
            gone.append(rec.program_id)
        return gone

    # --- backends ----------------------------------------------------------------------------------
    def _observe_health(self, url: str, ok: bool) -> None:
        st = self.backends.get(url)
        if st is None:
            return
        changed = st.health.record(ok)
        if changed is not None:
            log.warning("backend %s is now %s", redact_url(url), "healthy" if changed else "UNHEALTHY")
            self.scheduler.set_healthy(url, changed)

    async def discover_capacity_once(self) -> bool:
        """One capacity attempt for every backend still unknown; True when all are known."""
        pending = [st for st in self.backends.values() if st.capacity is None]
        cfg = self.config
        results = await asyncio.gather(
            *(fetch_capacity(self.probe_client, st, cfg.probe_timeout, cfg.max_metrics_bytes) for st in pending)
        )
        for st, cap in zip(pending, results):
            if cap is not None:
                log.info("backend %s: KV capacity %d tokens", redact_url(st.url), cap)
                self.scheduler.set_capacity(st.url, cap)
        return all(st.capacity is not None for st in self.backends.values())

    async def _scrape_or_probe(self, st: BackendState) -> tuple[bool, bool]:
        """(scraped, alive): a failed scrape is followed by a /health probe, so a backend whose /metrics
        answers 404, 500 or garbage while it serves is not marked unhealthy."""
        cfg = self.config
        if await scrape(self.probe_client, st, cfg.probe_timeout, cfg.max_metrics_bytes):
            return True, True
        return False, await probe_health(self.probe_client, st, cfg.probe_timeout)

    async def scrape_once(self) -> None:
        sts = list(self.backends.values())
        results = await asyncio.gather(*(self._scrape_or_probe(st) for st in sts))
        for st, (ok, alive) in zip(sts, results):
            self._observe_health(st.url, alive)
            if ok and self.scheduler.learns_from_engine:  # e.g. a cost-aware tr learns prefill cost and load
                self.scheduler.observe_engine(st.url, st.latest)

    async def probe_unhealthy_once(self) -> None:
        """Probe /health of every backend marked unhealthy, so it comes back when it recovers, in every mode
        (without --metrics nothing else would ever reach a backend no program is placed on)."""
        sts = [st for st in self.backends.values() if not st.health.healthy]
        oks = await asyncio.gather(*(probe_health(self.probe_client, st, self.config.probe_timeout) for st in sts))
        for st, ok in zip(sts, oks):
            self._observe_health(st.url, ok)

    def any_healthy(self) -> bool:
        return any(b.healthy for b in self.policy.backends())

    # --- loops -------------------------------------------------------------------------------------
    async def _capacity_loop(self) -> None:
        delay = 0.5
        while not await self.discover_capacity_once():
            await asyncio.sleep(delay)
            delay = min(10.0, delay * 2)

    async def _every(self, interval: float, what: str, fn: Callable[[], Awaitable[None] | None]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                r = fn()
                if asyncio.iscoroutine(r):
                    await r
            except Exception:  # noqa: BLE001 - a loop never dies
                log.exception("%s failed", what)

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._capacity_loop(), name="capacity"))
        if self.config.scheduling_enabled and self.config.scheduler_interval > 0:
            tick = self.scheduler.tick
            self._tasks.append(
                asyncio.create_task(
                    self._every(self.config.scheduler_interval, "scheduler tick", tick), name="tick"
                )
            )
        self._tasks.append(
            asyncio.create_task(
                self._every(self.config.health_interval, "health probe", self.probe_unhealthy_once),
                name="health",
            )
        )
        learns = self.scheduler.learns_from_engine
        if (self.config.metrics or learns) and self.config.metrics_interval > 0:
            self._tasks.append(
                asyncio.create_task(
                    self._every(self.config.metrics_interval, "metrics scrape", self.scrape_once),
                    name="metrics",
                )
            )
        if self.config.idle_ttl > 0:
            every = min(30.0, max(0.05, self.config.idle_ttl / 4 if self.config.idle_ttl > 0 else 30.0))
            self._tasks.append(
                asyncio.create_task(self._every(every, "idle expiry", self.expire_idle), name="expiry")
            )

    async def stop(self) -> None:
        self.closed = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        self._tasks.clear()
        self.scheduler.shut_down()
        await self.client.aclose()
        await self.probe_client.aclose()
        if self.profiler is not None:
            await asyncio.to_thread(self.profiler.close)
        if self.reclaimer is not None and hasattr(self.reclaimer, "aclose"):
            await self.reclaimer.aclose()

    # --- views -------------------------------------------------------------------------------------
    def programs_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for rec in self.registry.records():
            v = self.policy.program(rec.program_id)
            entry: dict[str, Any] = {
                "backend": redact_url(v.backend) if v and v.backend else None,
                "context_len": rec.context_len,
                "total_tokens": v.tokens if v else 0,
                "step_count": rec.step_count,
                "status": str(v.phase) if v else str(Phase.ACTING),
                "state": str(v.state) if v else str(State.ACTIVE),
                "inflight": rec.inflight,
                "waiting": rec.held,
                "idle_s": round(max(0.0, self.clock() - rec.last_activity), 3) if not rec.busy else 0.0,
            }
            if self.config.profile:
                entry["profile"] = rec.profile.averages()
            out[rec.program_id] = entry
        return out

    def health_json(self) -> dict[str, Any]:
        views = self.policy.programs()
        stats = self.policy.stats()
        per_backend = {}
        for b in self.policy.backends():
            per_backend[redact_url(b.url)] = {
                "total": b.program_count,
                "reasoning": b.reasoning_count,
                "acting": b.acting_count,
                "paused": b.paused_count,
                "marked_for_pause": b.marked_count,
                "future_paused_tokens": b.marked_tokens,
                "healthy": b.healthy,
                "capacity": b.capacity,
            }
        healthy = sum(1 for b in self.policy.backends() if b.healthy)
        return {
            # upstream's /health answers "ok" whatever the backends' state (clients poll for it): kept, and
            # `ready` says whether any backend can take a request now
            "status": "ok",
            "ready": healthy > 0,
            "healthy_backends": healthy,
            "version": __version__,
            "router_mode": self.config.router,
            "scheduling_enabled": self.config.scheduling_enabled,
            "backends": [redact_url(u) for u in self.config.backends],
            "programs_count": len(views),
            "reasoning_count": sum(
                1 for v in views if v.phase == Phase.REASONING and v.state == State.ACTIVE
            ),
            "acting_count": sum(1 for v in views if v.phase == Phase.ACTING and v.state == State.ACTIVE),
            "paused_count": stats.queue_length,
            "per_backend": per_backend,
            "profile_enabled": self.config.profile,
        }

    def metrics_json(self) -> dict[str, Any]:
        w = self.config.acting_token_weight
        out: dict[str, Any] = {}
        for b in self.policy.backends():
            st = self.backends.get(b.url) or BackendState(url=b.url)
            active = int(b.reasoning_tokens + w * b.acting_tokens)
            entry: dict[str, Any] = {
                "url": redact_url(b.url),
                "active_program_tokens": active,
                "reasoning_program_tokens": b.reasoning_tokens,
                "acting_program_tokens": b.acting_tokens,
                "active_program_count": b.program_count,
                "reasoning_program_count": b.reasoning_count,
                "acting_program_count": b.acting_count,
                "active_program_tokens_ratio": round(active / b.capacity, 4) if b.capacity else None,
                "total_program_tokens": b.reasoning_tokens + b.acting_tokens,
                "paused_program_count": b.paused_count,
                "future_paused_tokens": b.marked_tokens,
                "shared_tokens": 0,
                "buffer_per_program": self.config.buffer_per_program,
                "capacity_overflow": max(0, b.used - b.capacity) if b.capacity else 0,
                "healthy": b.healthy,
                "monitoring": self.config.metrics,
                "cache_config": st.cache_config_json(),
            }
            m = st.metrics_json()
            if m is not None:
                entry["metrics"] = m
            out[redact_url(b.url)] = entry
        return {
            "metrics_enabled": self.config.metrics,
            "metrics_interval": self.config.metrics_interval if self.config.metrics else None,
            "backends": out,
        }

    def admin_ok(self, request: Request) -> bool:
        token = self.config.admin_token
        if not token:
            return True
        given = request.headers.get("x-admin-token")
        if given is None:
            auth = request.headers.get("authorization", "")
            if auth[:7].lower() == "bearer ":
                given = auth[7:].strip()
        return given is not None and hmac.compare_digest(given.encode(), token.encode())


async def _until_disconnect(receive: Receive) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return


async def _race_disconnect(receive: Receive, aw: Awaitable[T]) -> T:
    """Await `aw`, but raise ClientGone (cancelling it) if the client disconnects first."""
    task = asyncio.ensure_future(aw)
    watcher = asyncio.ensure_future(_until_disconnect(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    try:
        await task
    except BaseException:  # noqa: BLE001 - the request is being abandoned
        pass
    raise ClientGone


# --- the app --------------------------------------------------------------------------------------------

CHAT_PATH = CHAT.path


class ProxyApp(FastAPI):
    """FastAPI with a front door for the hot routes: `POST` to a scheduled route (chat, completions,
    responses) goes straight to Proxy.infer, skipping the middleware stack and router (a sizeable share of
    the proxy's own CPU per request). Errors behave as through the stack: an unexpected exception answers
    502 OpenAI-style JSON, then propagates to the server (as Starlette's ServerErrorMiddleware does). Every
    other route is plain FastAPI."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hot = scope["type"] == "http" and scope["method"] == "POST"
        route = SCHEDULED.get(scope["path"]) if hot else None
        if route is not None:
            proxy: Proxy = self.state.proxy
            request = Request(scope, receive, send)
            try:
                response = await proxy.infer(request, route)
            except Exception as exc:
                await _unexpected_error(request, exc)(scope, receive, send)
                raise
            await response(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(
        ProxyError(502, f"proxy error: {type(exc).__name__}: {exc}", "proxy_error", code="proxy_error")
    )


def create_app(
    config: Config,
    *,
    policy: Policy | None = None,
    reclaimer: Any = None,
    clock: Clock | None = None,
) -> ProxyApp:
    """The proxy app. `policy` defaults to make_policy(config); `reclaimer` to the one --reclaim selects;
    `clock` (monotonic seconds for the policy) to time.monotonic."""
    if reclaimer is None and getattr(config, "reclaim", "none") != "none":
        from ThunderAgent.reclaim import reclaimer_from_config

        reclaimer = reclaimer_from_config(config)
    proxy = Proxy(
        config=config,
        policy=policy if policy is not None else make_policy(config.policy_settings()),
        clock=clock or time.monotonic,
        reclaimer=reclaimer,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        proxy.start()
        log.info(
            "ThunderAgent %s: router=%s backends=%s scheduler_interval=%s metrics=%s profile=%s",
            __version__,
            config.router,
            ",".join(redact_url(u) for u in config.backends),
            config.scheduler_interval,
            config.metrics_interval if config.metrics else "off",
            proxy.profiler.csv_path if proxy.profiler else "off",
        )
        try:
            yield
        finally:
            await proxy.stop()

    app = ProxyApp(
        title="ThunderAgent",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.proxy = proxy

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_response(
                ProxyError(
                    404, f"no route {request.method} {request.url.path}", "not_found_error", code="not_found"
                )
            )
        if exc.status_code == 405:
            return error_response(
                ProxyError(
                    405,
                    f"method {request.method} not allowed on {request.url.path}",
                    "invalid_request_error",
                    code="method_not_allowed",
                )
            )
        return error_response(ProxyError(exc.status_code, str(exc.detail), "invalid_request_error"))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(ProxyError(400, f"invalid request: {exc.errors()}", code="invalid_request"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _unexpected_error(request, exc)

    Serve = Callable[[Request, str | None], Awaitable[Response]]

    def serve_both(method: str, path: str, serve: Serve) -> None:
        """Routes `path` and `/p/<id>` + `path` to serve(request, the URL's program id or None). (Handlers
        are closures: a default argument would become a query parameter.)"""

        async def plain(request: Request) -> Response:
            return await serve(request, None)

        async def prefixed(program_id: str, request: Request) -> Response:
            return await serve(request, program_id)

        app.add_api_route(path, plain, methods=[method])
        app.add_api_route("/p/{program_id}" + path, prefixed, methods=[method])

    # Scheduled routes: normally answered by ProxyApp's front door; the plain routes keep them in the
    # routing table (405 for other methods), the /p/<id>/ ones carry the program id in the URL.
    for r in SCHEDULED.values():
        serve_both("POST", r.path, lambda request, pid, r=r: proxy.infer(request, r, pid))

    async def models(request: Request) -> Response:
        if not config.backends:
            return JSONResponse({"object": "list", "data": []})
        views = {b.url: b for b in proxy.policy.backends()}
        url = next((u for u in config.backends if u in views and views[u].healthy), config.backends[0])
        return await proxy.relay(request, "/v1/models", backend=url)

    app.get("/v1/models")(models)

    @app.get("/p/{program_id}/v1/models")
    async def models_prefixed(program_id: str, request: Request) -> Response:
        return await models(request)

    # Pass-through routes (unscheduled), plain and under /p/<id>/.
    for method, paths in (("POST", RELAY_POST), ("GET", RELAY_GET)):
        for path in paths:
            serve_both(method, path, lambda request, pid, path=path: proxy.relay(request, path, pid))

    # Stored responses (vLLM keeps them on the engine that made them): the program's backend.
    @app.get("/v1/responses/{response_id}")
    async def response_get(response_id: str, request: Request) -> Response:
        return await proxy.relay(request, f"/v1/responses/{quote(response_id, safe='')}")

    @app.post("/v1/responses/{response_id}/cancel")
    async def response_cancel(response_id: str, request: Request) -> Response:
        return await proxy.relay(request, f"/v1/responses/{quote(response_id, safe='')}/cancel")

    @app.get("/p/{program_id}/v1/responses/{response_id}")
    async def response_get_prefixed(program_id: str, response_id: str, request: Request) -> Response:
        return await proxy.relay(request, f"/v1/responses/{quote(response_id, safe='')}", program_id)

    @app.post("/p/{program_id}/v1/responses/{response_id}/cancel")
    async def response_cancel_prefixed(program_id: str, response_id: str, request: Request) -> Response:
        return await proxy.relay(request, f"/v1/responses/{quote(response_id, safe='')}/cancel", program_id)

    @app.get("/programs")
    async def programs() -> JSONResponse:
        return SafeJSONResponse(proxy.programs_json())

    @app.post("/programs/release")
    async def release(request: Request) -> JSONResponse:
        if not proxy.admin_ok(request):
            return error_response(
                ProxyError(
                    401,
                    "admin token required: send 'Authorization: Bearer <token>' or 'X-Admin-Token'",
                    "authentication_error",
                    code="unauthorized",
                )
            )
        try:
            payload = parse_json_object(
                await read_body(request, RELEASE_BODY_LIMIT, "the fixed limit of a release body")
            )
            pid = _coerce_id(payload.get("program_id"), "program_id")
        except ProxyError as e:
            return error_response(e, compat_detail=True)
        if pid is None:
            return error_response(
                ProxyError(400, "Missing program_id", param="program_id", code="missing_program_id"),
                compat_detail=True,
            )
        released = proxy.drop_program(pid, "released")
        if released:
            proxy.telemetry.released.inc()
            log.info("program %s released", pid)
        return SafeJSONResponse({"program_id": pid, "released": released})

    @app.get("/health")
    async def health() -> JSONResponse:
        return SafeJSONResponse(proxy.health_json())

    def _profiling_off() -> JSONResponse:
        return error_response(
            ProxyError(400, "Profiling not enabled. Start with --profile flag.", code="profiling_disabled")
        )

    @app.get("/profiles")
    async def profiles() -> JSONResponse:
        if not config.profile:
            return _profiling_off()
        return SafeJSONResponse({r.program_id: r.profile.averages() for r in proxy.registry.records()})

    @app.get("/profiles/{program_id}")
    async def profile(program_id: str) -> JSONResponse:
        if not config.profile:
            return _profiling_off()
        rec = proxy.registry.get(program_id)
        if rec is None:
            return error_response(
                ProxyError(
                    404, f"Profile not found for program: {program_id}", "not_found_error", code="not_found"
                ),
                compat_detail=True,
            )
        return SafeJSONResponse(rec.profile.averages())

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        fmt = request.query_params.get("format")
        if fmt == "json" or (fmt is None and "application/json" in request.headers.get("accept", "")):
            return SafeJSONResponse(proxy.metrics_json())
        if fmt not in (None, "prometheus", "text"):
            return error_response(
                ProxyError(
                    400,
                    f"unknown format {fmt!r}: use json or prometheus",
                    param="format",
                    code="invalid_value",
                )
            )
        return Response(generate_latest(proxy.telemetry.registry), media_type=CONTENT_TYPE_LATEST)

    return app
