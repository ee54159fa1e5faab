"""The proxy process restarted while programs are live. SIGTERM: uvicorn drains (streams in flight complete,
then it exits). SIGKILL: clients in flight get a clear error (the connection closes under them, never a
hang) and the backend's requests are aborted. After the restart the same program ids re-enter cleanly as
new programs (state is in memory only, as upstream)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import httpx
import pytest

from tests.fakes.fake_vllm import FakeVLLM
from tests.fakes.proxy_kit import chat
from tests.fakes.server import wait_until
from tests.faults.kit import ROOT, free_port, is_openai_error


class ProxyProcess:
    def __init__(self, backend: str, port: int) -> None:
        self.backend, self.port = backend, port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ProxyProcess":
        args = [sys.executable, "-m", "ThunderAgent", "--backends", self.backend, "--port", str(self.port),
                "--router", "tr", "--scheduler-interval", "0.2", "--log-level", "warning"]
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"proxy exited with {self.proc.returncode}")
            try:
                return httpx.get(self.url + "/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=60, interval=0.1, what="proxy /health")
        return self

    def signal(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(30)


async def _stream_outcome(c: httpx.AsyncClient, url: str, pid: str, started: asyncio.Semaphore) -> str:
    try:
        async with c.stream("POST", url + "/v1/chat/completions", json=chat(program_id=pid, stream=True)) as r:
            if r.status_code != 200:
                await r.aread()
                assert is_openai_error(r), r.text
                return f"http_{r.status_code}"
            first = True
            text = b""
            async for chunk in r.aiter_bytes():
                if first:
                    started.release()
                    first = False
                text += chunk
            return "error_event" if b'"error"' in text else "completed"
    except (httpx.RemoteProtocolError, httpx.ReadError) as e:  # the connection closed under the client
        return f"closed:{type(e).__name__}"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_proxy_restart_with_live_programs(fake_vllm: FakeVLLM, sig: int) -> None:
    fake_vllm.completion_tokens = 300
    fake_vllm.token_delay = 0.02  # streams last ~6 s
    proxy = ProxyProcess(fake_vllm.url, free_port()).start()
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(60, read=30)) as c:
            for i in range(4):  # programs with history
                assert (await c.post(proxy.url + "/v1/chat/completions", json=chat(program_id=f"live{i}"))).status_code == 200
            started = asyncio.Semaphore(0)
            tasks = [asyncio.create_task(_stream_outcome(c, proxy.url, f"live{i}", started)) for i in range(4)]
            for _ in range(4):
                await asyncio.wait_for(started.acquire(), 30)
            rc = await asyncio.to_thread(proxy.signal, sig)
            outcomes = await asyncio.wait_for(asyncio.gather(*tasks), 30)  # nobody hangs
            if sig == signal.SIGTERM:  # uvicorn drains: streams in flight finish, then the process exits
                assert outcomes == ["completed"] * 4, outcomes
            else:  # killed: the connections close under the clients
                assert all(o == "error_event" or o.startswith("closed:") for o in outcomes), outcomes
            assert rc != 0 or sig == signal.SIGTERM
            await asyncio.to_thread(wait_until, lambda: fake_vllm.running == 0, 15, 0.05, "backend requests aborted")

            # while it is down the client gets a connection error at once
            with pytest.raises(httpx.ConnectError):
                await c.post(proxy.url + "/v1/chat/completions", json=chat(program_id="live0"))

            await asyncio.to_thread(proxy.start)  # same port
            for i in range(4):
                r = await c.post(proxy.url + "/v1/chat/completions", json=chat(program_id=f"live{i}"))
                assert r.status_code == 200, r.text
            programs = (await c.get(proxy.url + "/programs")).json()
            assert sorted(programs) == [f"live{i}" for i in range(4)]
            assert all(p["step_count"] == 1 and p["inflight"] == 0 for p in programs.values()), programs
            health = (await c.get(proxy.url + "/health")).json()
            assert health["reasoning_count"] == 0 and health["programs_count"] == 4
    finally:
        if proxy.proc is not None and proxy.proc.poll() is None:
            proxy.signal(signal.SIGTERM)
