"""Run an ASGI app on a real uvicorn server in a background thread (its own event loop), on 127.0.0.1 and a
free port. Used for the fake vLLM backend and for tests that need a real socket (streaming, disconnects).

    with ServerThread(app) as srv:
        httpx.get(srv.url + "/health")
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any, Callable, TypeVar

import uvicorn

T = TypeVar("T")


class ServerThread:
    def __init__(self, app: Any, *, lifespan: str = "on", start_timeout: float = 10.0, http: Any = "auto") -> None:
        self.app = app
        self._http = http  # uvicorn's HTTP protocol: "auto" or a class (e.g. the proxy's bounded one)
        self._lifespan = lifespan
        self._start_timeout = start_timeout
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServerThread":
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        cfg = uvicorn.Config(
            self.app,
            log_level="warning",
            lifespan=self._lifespan,
            access_log=False,
            timeout_graceful_shutdown=2,
            http=self._http,
        )
        self._server = uvicorn.Server(cfg)
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # not the main thread
        self._thread = threading.Thread(target=self._run, name=f"uvicorn-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self._start_timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("server thread died during start-up")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server on port {self.port} did not start within {self._start_timeout}s")
            time.sleep(0.005)
        return self

    def _run(self) -> None:
        assert self._server is not None and self._sock is not None
        loop = asyncio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._server.serve(sockets=[self._sock]))
        finally:
            loop.close()

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run `fn` on the server's event loop thread (safe access to the app's state) and return its result."""
        assert self.loop is not None

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(15)
        if self._sock is not None:
            self._sock.close()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until(
    pred: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01, what: str = "condition"
) -> None:
    """Poll `pred` until true or fail after `timeout` seconds (no fixed sleeps in tests)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
