"""Bounds on what an HTTP client can make the proxy's server hold, below the app: request-head size and
header count, and a deadline for the request head (slowloris).

uvicorn's httptools protocol has no limit on a request head (a 100 MB header was read, held and forwarded)
and no deadline for it (a connection that sends a byte a minute, or nothing, stays open forever). This
subclass adds both; `bounded_protocol(...)` returns the class `uvicorn.run(http=...)` takes.

* head bytes: counted as they arrive, up to the blank line that ends the head; over the limit -> 431 and
  the connection is closed (nothing of it reaches the app).
* header count: over the limit -> 431.
* head deadline: from the connection's first moment (or, on a kept-alive connection, the next request's
  first byte) until its head is complete; past it -> 408 and the connection is closed.
* body silence: while a request body is still coming, the same number of seconds without a byte -> 408
  and the connection is closed (the app sees a disconnect). A slow but steady upload is not cut; its size
  is bounded by --max-body-bytes. Idle kept-alive connections are closed by the keep-alive timeout.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _TooManyHeaders(Exception):
    pass


def _reply(transport: asyncio.BaseTransport, status: bytes, msg: str) -> None:
    body = msg.encode("ascii")
    transport.write(  # type: ignore[attr-defined]
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    transport.close()


def _error_json(message: str, code: str) -> str:
    return '{"error":{"message":"%s","type":"invalid_request_error","param":null,"code":"%s"}}' % (message, code)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    max_header_bytes = 64 * 1024
    max_headers = 100
    header_timeout = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._in_head = True
        self._head_bytes = 0
        self._head_tail = b""
        self._header_count = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._in_body = False
        self._last_data = 0.0
        self._body_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refused = True
            _reply(
                self.transport,
                b"408 Request Timeout",
                _error_json(f"request head not received within {self.header_timeout:g} s", "request_timeout"),
            )

    def _body_check(self) -> None:
        self._body_timer = None
        if not self._in_body or self.transport.is_closing():
            return
        silent = self.loop.time() - self._last_data
        if silent < self.header_timeout:
            self._body_timer = self.loop.call_later(self.header_timeout - silent, self._body_check)
            return
        self._refused = True
        _reply(
            self.transport,
            b"408 Request Timeout",
            _error_json(f"no request body byte for {self.header_timeout:g} s", "request_timeout"),
        )

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._last_data = self.loop.time()
        if self._in_head:
            self._arm_head_timer()
            seen = self._head_tail + data
            end = seen.find(b"\r\n\r\n")
            head_part = len(data) if end < 0 else max(0, end + 4 - len(self._head_tail))
            self._head_bytes += head_part
            self._head_tail = seen[-3:]
            if self._head_bytes > self.max_header_bytes:
                self._refuse_head(f"request head exceeds {self.max_header_bytes} bytes (--max-header-bytes)")
                return
        super().data_received(data)

    def _refuse_head(self, message: str) -> None:
        self._refused = True
        self._cancel_head_timer()
        _reply(self.transport, b"431 Request Header Fields Too Large", _error_json(message, "headers_too_large"))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.max_headers:
            raise _TooManyHeaders
        super().on_header(name, value)

    def send_400_response(self, msg: str) -> None:
        if self._header_count > self.max_headers:  # the parser stopped on our callback's exception
            self._refuse_head(f"request has more than {self.max_headers} header fields (--max-headers)")
            return
        super().send_400_response(msg)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        super().on_headers_complete()
        self._in_body = True
        if self._body_timer is None:
            self._body_timer = self.loop.call_later(self.header_timeout, self._body_check)

    def on_message_complete(self) -> None:
        self._in_body = False
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # the next request on this connection starts a new head (its timer starts at its first byte)
        self._in_head = True
        self._head_bytes = 0
        self._head_tail = b""
        self._header_count = 0

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._in_body = False
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().connection_lost(exc)


def bounded_protocol(max_header_bytes: int, max_headers: int, header_timeout: float) -> type[Any]:
    """A BoundedHttpToolsProtocol class with these limits (for `uvicorn.run(http=...)`)."""
    return type(
        "ProxyHttpProtocol",
        (BoundedHttpToolsProtocol,),
        {"max_header_bytes": max_header_bytes, "max_headers": max_headers, "header_timeout": header_timeout},
    )
