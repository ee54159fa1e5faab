"""What the proxy answers with: OpenAI-style error JSON, a backend's answer passed through, a backend's
event stream relayed chunk by chunk, and the helpers that notice a client leaving.

A ProxyStream calls its `on_done` exactly once whatever ends the stream (completed, backend failure,
client disconnect, cancellation): the request lifecycle hangs its end-of-request bookkeeping on it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Awaitable, Callable, TypeVar

import anyio
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from ThunderAgent.forward import (
    ProxyError,
    TransportError,
    Upstream,
    response_headers,
    sse_error_event,
    translate_transport_error,
)
from ThunderAgent.logsafe import redact_url
from ThunderAgent.streaming import SSETap

log = logging.getLogger("thunderagent")

T = TypeVar("T")

CLIENT_CLOSED = 499  # nginx's "client closed request": recorded only, nobody is there to read it


class ClientGone(Exception):
    """The client disconnected before its response started."""


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


async def until_disconnect(receive: Receive) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return


async def race_disconnect(receive: Receive, aw: Awaitable[T]) -> T:
    """Await `aw`, but raise ClientGone (cancelling it) if the client disconnects first."""
    task = asyncio.ensure_future(aw)
    watcher = asyncio.ensure_future(until_disconnect(receive))
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
