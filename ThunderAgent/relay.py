"""The routes vLLM serves that the proxy does not schedule (tokenize, embeddings, pooling, score/rerank,
audio, version, stored responses): passed through unchanged to the program's backend, else the
least-loaded healthy one.
"""

from __future__ import annotations

from typing import Callable

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from ThunderAgent.config import Config
from ThunderAgent.forward import (
    BackendClient,
    ProxyError,
    TransportError,
    backend_error_body,
    exchange,
    request_headers,
    response_headers,
    translate_transport_error,
)
from ThunderAgent.parsing import coerce_id, read_body
from ThunderAgent.policy.base import Policy
from ThunderAgent.responses import (
    CLIENT_CLOSED,
    ClientGone,
    ProxyStream,
    RawResponse,
    error_response,
    race_disconnect,
)
from ThunderAgent.streaming import SSETap


class Relay:
    """`await relay(request, path, url_program_id=None, backend=None)`: one unscheduled request, answered."""

    def __init__(
        self, config: Config, policy: Policy, client: BackendClient, on_reached: Callable[[str, bool], None]
    ) -> None:
        self.config = config
        self.policy = policy  # read-only: its views say where a program lives and which backends are healthy
        self.client = client
        self.on_reached = on_reached  # a request reached (or failed to reach) a backend: a health observation

    def backend_for(self, program_id: str | None) -> str | None:
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

    async def __call__(
        self, request: Request, path: str, url_program_id: str | None = None, backend: str | None = None
    ) -> Response:
        """Pass a request through unscheduled: the body (within --max-body-bytes), query string and end-to-
        end headers go to `backend` (default: backend_for the X-Program-Id header or URL prefix) and
        its answer comes back unchanged (event streams streamed); failures map as on scheduled routes."""
        try:
            body = await read_body(request, self.config.max_body_bytes)
            header_id = coerce_id(request.headers.get("x-program-id"), "X-Program-Id")
        except ProxyError as e:
            return error_response(e)
        except ClientDisconnect:
            return error_response(
                ProxyError(CLIENT_CLOSED, "client disconnected while sending the request", "cancelled")
            )
        if backend is None:
            backend = self.backend_for(header_id or url_program_id)
        if backend is None:
            return error_response(ProxyError(503, "no backend available", "unavailable", code="no_backend"))
        query = request.scope.get("query_string", b"")
        url = backend.rstrip("/") + path + ("?" + query.decode("latin-1") if query else "")
        headers = request_headers(request.headers.raw)
        try:
            upstream, content = await race_disconnect(
                request.receive,
                exchange(
                    self.client, backend, url, headers, body or None,
                    read=False, on_reached=self.on_reached, method=request.method,
                ),
            )
            if upstream.status_code < 400 and upstream.content_type.startswith("text/event-stream"):
                return ProxyStream(upstream, SSETap(False), backend, lambda outcome, err: None)
            try:
                content = await race_disconnect(request.receive, upstream.aread())
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
