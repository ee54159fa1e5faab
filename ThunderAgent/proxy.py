"""The request lifecycle of the proxy: one `Proxy` per app holds the registry, the scheduler, the backend
monitor, the HTTP client and the loops.

A scheduled request (`Proxy.infer`, parameterised by a `Route`: chat, text completions, responses) goes:
read (size limit) -> parse and validate (parsing.py) -> program id (body, extra_body, X-Program-Id
header, /p/<id>/ URL prefix) -> registry record + token estimate -> `scheduler.arrive` -> (held on a
future, no byte sent, until the policy resumes or rejects it) -> forward (forward.py) -> `scheduler.end`
exactly once, whatever happened (success, error status, backend failure, client disconnect, missing
usage). Every error reaches the client as OpenAI-style JSON with a fitting status; the proxy never
answers 500. Unscheduled routes pass through `Proxy.relay` (relay.py) to the program's backend or the
least-loaded healthy one.

The policy is pure and synchronous; its driver's proxy adapter (scheduling.py) turns its decisions into
future results. `start` runs the loops on the app's lifespan: the backend monitor's (capacity discovery,
health, metrics scraping), scheduler ticks (router tr) and idle-program expiry (--idle-ttl).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from ThunderAgent.backends import BackendState
from ThunderAgent.config import Config
from ThunderAgent.forward import (
    ProxyError,
    TransportError,
    Upstream,
    backend_error_body,
    exchange,
    make_client,
    request_headers,
    response_headers,
    translate_transport_error,
)
from ThunderAgent.logsafe import redact_url
from ThunderAgent.monitor import BackendMonitor, every
from ThunderAgent.parsing import (
    CHAT,
    MAX_CHARS_PER_TOKEN,
    Prepared,
    Route,
    extract_program_id,
    extract_resources,
    parse_json_object,
    prepare_forward,
    prompt_floor,
    read_body,
)
from ThunderAgent.policy.base import Policy
from ThunderAgent.policy.driver import Ticket
from ThunderAgent.programs import ProgramRecord, ProgramRegistry
from ThunderAgent.records import ProfileWriter, StepRecord, csv_row
from ThunderAgent.relay import Relay
from ThunderAgent.responses import (
    CLIENT_CLOSED,
    ClientGone,
    ProxyStream,
    RawResponse,
    error_response,
    race_disconnect,
    until_disconnect,
)
from ThunderAgent.scheduling import ProxyScheduler
from ThunderAgent.streaming import PROGRESS_EVENTS, SSETap, Usage, usage_from
from ThunderAgent.telemetry import Telemetry
from ThunderAgent.tokens import TokenEstimator
from ThunderAgent.views import ProxyViews

log = logging.getLogger("thunderagent")

Clock = Callable[[], float]



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
        self.monitor = BackendMonitor(self.config, self.scheduler, self.backends)
        self.views = ProxyViews(self.config, self.policy, self.registry, self.backends, self.clock)
        self.relay = Relay(self.config, self.policy, self.client, self.monitor.observe_health)
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
        largest = self.monitor.largest_capacity()
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

    def never_fits(self, route: Route, payload: dict[str, Any]) -> ProxyError | None:
        """With tr and every backend's KV capacity known: a 400 for a request whose prompt cannot fit the
        largest KV cache even at MAX_CHARS_PER_TOKEN characters per token (held, it would wait for the
        forced resume and then fail on the engine). None otherwise."""
        largest = self.monitor.largest_capacity()
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
        watcher = asyncio.ensure_future(until_disconnect(request.receive))
        grace = self.config.no_backend_grace
        poll = min(1.0, max(0.02, grace / 4))
        down_since: float | None = None
        try:
            while True:
                if not self.monitor.any_healthy():
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
            upstream, content = await race_disconnect(
                request.receive,
                exchange(self.client, backend, url, headers, prepared.body, read=not prepared.stream,
                         on_reached=self.monitor.observe_health),
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
                content = await race_disconnect(request.receive, upstream.aread())
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
            call.record.profile.add(rec, tool_call_s)
        self.profiler.submit(rec, row)

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

    # --- loops -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the background loops: the backend monitor's, scheduler ticks (tr), idle expiry."""
        cfg = self.config
        loops = self.monitor.loops()
        if cfg.scheduling_enabled and cfg.scheduler_interval > 0:
            loops.append(("tick", every(cfg.scheduler_interval, "scheduler tick", self.scheduler.tick)))
        if cfg.idle_ttl > 0:
            interval = min(30.0, max(0.05, cfg.idle_ttl / 4))
            loops.append(("expiry", every(interval, "idle expiry", self.expire_idle)))
        self._tasks.extend(asyncio.create_task(loop, name=name) for name, loop in loops)

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
        await self.monitor.aclose()
        if self.profiler is not None:
            await asyncio.to_thread(self.profiler.close)
        if self.reclaimer is not None and hasattr(self.reclaimer, "aclose"):
            await self.reclaimer.aclose()
