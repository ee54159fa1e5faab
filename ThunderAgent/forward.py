"""Forwarding to a backend: header filtering, the shared aiohttp client (BackendClient), and the translation
of backend failures into OpenAI-style errors. Usage extraction and the SSE tap are in streaming.py.

Bytes flow through unchanged, except that (a) program_id and harness-only fields are stripped from the
request and (b) when the proxy itself asked the backend for a usage chunk (`stream_options.include_usage`)
that the client did not request, the usage-only chunk is removed from the stream. Usage — prompt,
completion and cached tokens — is read from every response (chat and text completions, and the Responses
API's input/output tokens).
"""

from __future__ import annotations

import base64
import json
from typing import Any, AsyncIterator, Callable

import aiohttp
import yarl
from multidict import CIMultiDict

from ThunderAgent.config import Config
from ThunderAgent.logsafe import redact

# Headers never forwarded in either direction (hop-by-hop, or recomputed by the server that sends them).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
    }
)
REQUEST_DROP = HOP_BY_HOP | {"accept-encoding", "x-program-id", "x-admin-token"}
RESPONSE_DROP = HOP_BY_HOP | {"content-encoding", "date", "server"}


# Idle pooled connections are closed after this long: below the 5 s keep-alive timeout of uvicorn-based
# engines (vLLM, SGLang), so the proxy closes an idle connection before the engine does and never sends
# a request into a connection the engine is closing at that moment.
KEEPALIVE_EXPIRY = 4.0
# Failures that mean "the request never reached a live connection" (a stale pooled connection closed by
# the engine, a reset or refused connect): such a send is retried once before the client sees a 502.
RETRYABLE_KINDS = frozenset({"connect", "protocol"})


class TransportError(Exception):
    """Talking to a backend failed below HTTP: `kind` is connect (refused/unreachable), connect_timeout,
    timeout (no byte within the read timeout), protocol (connection closed or broken mid-exchange) or
    invalid_request (the client's request cannot be put on the wire) or too_large (a body over the limit). `name` is the library's error class."""

    def __init__(self, kind: str, name: str, detail: str) -> None:
        super().__init__(f"{name}: {detail}" if detail else name)
        self.kind = kind
        self.name = name
        self.detail = detail

    @property
    def reached(self) -> bool:
        """False when no connection to the backend could be made (a health signal)."""
        return self.kind not in ("connect", "connect_timeout")


def transport_error(e: BaseException) -> TransportError:
    """An aiohttp (or socket-level) failure -> TransportError with its kind."""
    name = type(e).__name__
    if isinstance(e, aiohttp.ConnectionTimeoutError):
        kind = "connect_timeout"
    elif isinstance(e, (aiohttp.ServerTimeoutError, TimeoutError)):
        kind = "timeout"
    elif isinstance(e, aiohttp.ClientConnectorError):
        kind = "connect"
    elif isinstance(e, (aiohttp.InvalidURL, ValueError)):  # e.g. a header value the client library refuses
        kind = "invalid_request"
    else:
        kind = "protocol"
    return TransportError(kind, name, str(e))


class Upstream:
    """A backend response whose headers arrived; the body is read (or streamed) through this object.
    Every failure while reading surfaces as TransportError."""

    __slots__ = ("_done", "_limit", "_resp", "content_type", "raw_headers", "status_code")

    def __init__(self, resp: aiohttp.ClientResponse, limit: int | None = None) -> None:
        self._resp = resp
        self._limit = limit  # the most body bytes aread() holds (--max-response-bytes)
        self.status_code: int = resp.status
        self.raw_headers: tuple[tuple[bytes, bytes], ...] = resp.raw_headers
        self.content_type: str = resp.headers.get("content-type", "")
        self._done = False

    async def aread(self) -> bytes:
        """The whole body, at most the limit: a larger one raises TransportError("too_large") as soon as it
        is known (declared Content-Length, or the bytes read so far), without holding the rest."""
        limit = self._limit
        if limit is None:
            try:
                body = await self._resp.read()
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                raise transport_error(e) from e
            self._done = True
            return body
        declared = self._resp.content_length
        if declared is not None and declared > limit:
            raise TransportError("too_large", "ResponseTooLarge", f"{declared} bytes declared, limit {limit}")
        chunks: list[bytes] = []
        n = 0
        try:
            async for chunk in self._resp.content.iter_any():
                n += len(chunk)
                if n > limit:
                    raise TransportError("too_large", "ResponseTooLarge", f"more than {limit} bytes")
                chunks.append(chunk)
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise transport_error(e) from e
        self._done = True
        return b"".join(chunks)

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive. When the connection breaks, the bytes that arrived before the break
        are still yielded, then TransportError is raised."""
        content = self._resp.content
        try:
            async for chunk in content.iter_any():
                yield chunk
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            rest = _leftover(content)
            if rest:
                yield rest
            raise transport_error(e) from e
        self._done = True

    async def aclose(self) -> None:
        """Return the connection to the pool when the body was read in full; otherwise close it (the engine
        sees the disconnect and aborts the request)."""
        if self._done:
            self._resp.release()
        else:
            self._resp.close()


def _leftover(content: aiohttp.StreamReader) -> bytes:
    """Bytes already received but not yet handed out when the stream failed: aiohttp's readers raise the
    stored error before returning buffered data, so they are taken from the buffer directly (a private
    method of the pinned aiohttp; anything unexpected -> nothing)."""
    read = getattr(content, "_read_nowait", None)
    try:
        out = read(-1) if read is not None else b""
    except Exception:  # noqa: BLE001 - best effort on an already broken stream
        return b""
    return out if isinstance(out, bytes) else b""


class BackendClient:
    """The one shared HTTP client for proxied traffic (aiohttp: its C parser costs a fraction of a pure-
    Python client per request, which is most of the proxy's own latency). Separate connect/read timeouts,
    unbounded pool, bytes passed through untouched (no decompression, no added Content-Type/User-Agent).
    The session is created on first use, inside the event loop that serves the app."""

    def __init__(
        self, connect_timeout: float, read_timeout: float | None, max_response_bytes: int | None = None
    ) -> None:
        self.max_response_bytes = max_response_bytes
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._session: aiohttp.ClientSession | None = None
        self._fresh: aiohttp.ClientSession | None = None  # no pooling: every request on a new connection
        self._urls: dict[str, tuple[yarl.URL, str | None]] = {}

    def _split_credentials(self, url: str) -> tuple[yarl.URL, str | None]:
        """`http://user:pw@host/...` -> (the URL without them, a Basic Authorization value); cached."""
        hit = self._urls.get(url)
        if hit is None:
            u = yarl.URL(url)
            basic = None
            if u.user is not None or u.password is not None:
                # RFC 7617 Basic credentials, UTF-8 (what aiohttp.BasicAuth did, without its deprecation)
                pair = f"{u.user or ''}:{u.password or ''}".encode()
                basic = "Basic " + base64.b64encode(pair).decode("ascii")
                u = u.with_user(None)
            hit = self._urls[url] = (u, basic)
            if len(self._urls) > 4096:  # backends are few; bound it anyway
                self._urls.clear()
        return hit

    def _new_session(self, connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            skip_auto_headers=("Content-Type", "User-Agent"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    def _get(self, fresh: bool = False) -> aiohttp.ClientSession:
        if fresh:
            if self._fresh is None or self._fresh.closed:
                self._fresh = self._new_session(aiohttp.TCPConnector(limit=0, force_close=True))
            return self._fresh
        if self._session is None or self._session.closed:
            self._session = self._new_session(
                aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_EXPIRY)
            )
        return self._session

    async def send(
        self,
        method: str,
        url: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes | None = None,
        *,
        fresh: bool = False,
    ) -> Upstream:
        """Send and return once the response headers arrived (body still unread). `fresh`: on a new
        connection, never a pooled one (closed after this response)."""
        hdrs = CIMultiDict((k.decode("latin-1"), v.decode("latin-1")) for k, v in headers)
        target, basic = self._split_credentials(url)
        if basic is not None:  # credentials in the backend URL win over a client's Authorization (as httpx)
            hdrs["Authorization"] = basic
        try:
            resp = await self._get(fresh).request(
                method, target, data=body, headers=hdrs, allow_redirects=False, compress=None
            )
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
            raise transport_error(e) from e
        return Upstream(resp, self.max_response_bytes)

    async def aclose(self) -> None:
        for session in (self._session, self._fresh):
            if session is not None:
                await session.close()


def make_client(config: Config) -> BackendClient:
    """The one shared client for proxied traffic: separate connect/read timeouts, unbounded pool."""
    read = config.proxy_read_timeout if config.proxy_read_timeout > 0 else None
    return BackendClient(config.proxy_connect_timeout, read, config.max_response_bytes)


async def send_with_retry(
    client: BackendClient,
    url: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes | None,
    method: str = "POST",
) -> Upstream:
    """Send (POST by default) and return once the response headers arrived (body still streaming). A
    connection-level failure before any response byte is retried once: it almost always means a pooled
    connection went stale. The retry goes over a new connection: when the engine's keep-alive timer closed
    several pooled connections at once (the proxy's loop lagging behind), another pooled one would be
    stale too and the client would get a 502. At worst the engine sees the request twice (it aborts the
    first when its connection drops)."""
    try:
        return await client.send(method, url, headers, body)
    except TransportError as e:
        if e.kind not in RETRYABLE_KINDS:
            raise
        return await client.send(method, url, headers, body, fresh=True)


async def exchange(
    client: BackendClient,
    backend: str,
    url: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes | None,
    *,
    read: bool,
    on_reached: Callable[[str, bool], None],
    method: str = "POST",
) -> tuple[Upstream, bytes | None]:
    """Send (a stale pooled connection is retried once), tell `on_reached(backend, reached?)` whether the
    backend was reached, and with `read` also read the whole body: one task to race against the client's
    disconnect, not two."""
    try:
        upstream = await send_with_retry(client, url, headers, body, method)
    except TransportError as e:
        on_reached(backend, e.reached)
        raise
    on_reached(backend, True)
    if not read:
        return upstream, None
    try:
        return upstream, await upstream.aread()
    except BaseException:  # failed or cancelled mid-body: close the connection (the engine aborts)
        await upstream.aclose()
        raise


def request_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    out = [(k, v) for k, v in headers if k.decode("latin-1").lower() not in REQUEST_DROP]
    out.append((b"accept-encoding", b"identity"))  # we parse bodies: keep them uncompressed
    return out


def response_headers(headers: tuple[tuple[bytes, bytes], ...]) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in headers if k.decode("latin-1").lower() not in RESPONSE_DROP]


# --- errors ---------------------------------------------------------------------------------------------


class ProxyError(Exception):
    """An error to return to the client as OpenAI-style JSON with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.headers = headers  # extra response headers (e.g. Retry-After)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code if code is not None else status

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def translate_transport_error(e: TransportError, backend: str) -> ProxyError:
    """A failure talking to `backend` -> the status a client should see (credentials in the backend URL are
    redacted: the message goes to clients and logs)."""
    kind, name, text = e.kind, e.name, e.detail
    backend = redact(backend)
    text = redact(text)
    if kind == "invalid_request":  # the client's request cannot be put on the wire (e.g. a header value
        # the HTTP library refuses): the client's fault, not the backend's
        return ProxyError(400, f"request cannot be forwarded: {text}", code="invalid_request")
    if kind == "connect_timeout":
        return ProxyError(
            504,
            f"backend {backend} did not accept the connection in time ({name})",
            "backend_timeout",
            code="backend_connect_timeout",
        )
    if kind == "timeout":
        return ProxyError(
            504, f"backend {backend} timed out ({name})", "backend_timeout", code="backend_timeout"
        )
    if kind == "too_large":
        return ProxyError(
            502,
            f"backend {backend} answered more than the proxy reads ({text}; --max-response-bytes)",
            "backend_error",
            code="backend_response_too_large",
        )
    if kind == "connect":
        return ProxyError(
            502,
            f"cannot connect to backend {backend}: {text}",
            "backend_unreachable",
            code="backend_unreachable",
        )
    return ProxyError(502, f"backend {backend} failed: {name}: {text}", "backend_error", code="backend_error")


def backend_error_body(status: int, content: bytes) -> tuple[int, bytes | None]:
    """For a backend error response: the status to return and a replacement body (None = pass the
    original body through). OpenAI-style JSON bodies pass through; other bodies are wrapped. 5xx other
    than 503/504 become 502 (the proxy never answers 500)."""
    out_status = status if status < 500 or status in (502, 503, 504) else 502
    try:
        obj = json.loads(content)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("error"), dict) and out_status == status:
        return status, None
    if isinstance(obj, dict) and isinstance(obj.get("error"), dict):
        msg = str(obj["error"].get("message", ""))
    elif isinstance(obj, dict) and "detail" in obj:
        msg = str(obj["detail"])
    else:
        msg = content[:500].decode("utf-8", "replace")
    err = ProxyError(out_status, f"backend returned HTTP {status}: {msg}", "backend_error", code=status)
    return out_status, json.dumps(err.body()).encode()


def sse_error_event(err: ProxyError) -> bytes:
    """An error sent inside an already-started stream (status line already sent), as vLLM does."""
    return b"data: " + json.dumps(err.body()).encode() + b"\n\n"
