"""The ThunderAgent proxy's HTTP surface: the app, its routes and its lifespan.

    create_app(config, *, policy=None, reclaimer=None, clock=None) -> FastAPI

Three inference routes are scheduled (`/v1/chat/completions`, `/v1/completions`, `/v1/responses`), each
plain and under `/p/<program id>/`: a front door (`ProxyApp`) hands them straight to the request lifecycle
(proxy.py). The other routes vLLM serves (tokenize, embeddings, pooling, score/rerank, audio, version,
stored responses) pass through unscheduled; the proxy's own routes are /programs, /programs/release
(admin token), /health, /profiles and /metrics (Prometheus text or JSON).
"""

from __future__ import annotations

import hmac
import logging
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from ThunderAgent import __version__
from ThunderAgent.config import Config
from ThunderAgent.forward import ProxyError
from ThunderAgent.logsafe import redact_url
from ThunderAgent.parsing import RELAY_GET, RELAY_POST, SCHEDULED, coerce_id, parse_json_object, read_body
from ThunderAgent.policy import make_policy
from ThunderAgent.policy.base import Policy
from ThunderAgent.proxy import Proxy
from ThunderAgent.reclaim import reclaimer_from_config
from ThunderAgent.responses import SafeJSONResponse, error_response

log = logging.getLogger("thunderagent")

Clock = Callable[[], float]

RELEASE_BODY_LIMIT = 64 * 1024


# --- the app --------------------------------------------------------------------------------------------

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


def admin_ok(config: Config, request: Request) -> bool:
    """Whether the request carries the admin token (--admin-token; none configured: everyone is admin)."""
    token = config.admin_token
    if not token:
        return True
    given = request.headers.get("x-admin-token")
    if given is None:
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


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
    if reclaimer is None and config.reclaim != "none":
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
        return SafeJSONResponse(proxy.views.programs_json())

    @app.post("/programs/release")
    async def release(request: Request) -> JSONResponse:
        if not admin_ok(config, request):
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
            pid = coerce_id(payload.get("program_id"), "program_id")
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
        return SafeJSONResponse(proxy.views.health_json())

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
            return SafeJSONResponse(proxy.views.metrics_json())
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
