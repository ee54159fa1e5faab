"""The proxy on a real uvicorn server: incremental streaming, client disconnects (mid-stream, while the
backend is still thinking, while held), and the command line starting the server."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from tests.fakes.fake_vllm import FakeVLLM, free_port_url
from tests.fakes.proxy_kit import HoldingPolicy, SpyPolicy, chat
from tests.fakes.server import ServerThread, wait_until
from ThunderAgent.app import create_app
from ThunderAgent.config import Config
from ThunderAgent.policy import make_policy
from ThunderAgent.policy.base import Phase, Resume
from ThunderAgent.policy.passthrough import PassthroughPolicy


def start_proxy(config: Config, policy) -> tuple[ServerThread, object]:
    app = create_app(config, policy=policy)
    srv = ServerThread(app).start()
    return srv, app.state.proxy


@pytest.mark.parametrize("router", ["default", "tr"])
def test_stream_is_incremental_and_client_disconnect_ends_request(fake_vllm: FakeVLLM, router: str):
    fake_vllm.completion_tokens = 200
    fake_vllm.token_delay = 0.02
    c0 = Config(backends=(fake_vllm.url,), router=router)
    spy = SpyPolicy(make_policy(c0.policy_settings()))
    srv, proxy = start_proxy(c0, spy)
    try:
        with httpx.Client(timeout=10) as c:
            with c.stream(
                "POST", srv.url + "/v1/chat/completions", json=chat(program_id="p", stream=True)
            ) as r:
                assert r.status_code == 200
                it = r.iter_bytes()
                first = next(it)
                assert first.startswith(b"data: ")  # bytes arrive before the backend finished
                assert fake_vllm.running == 1
            # leaving the block closes the connection mid-stream
        wait_until(lambda: srv.call(lambda: spy.ends["p"]) == 1, what="on_request_end after disconnect")
        wait_until(lambda: fake_vllm.running == 0, what="backend request aborted")
        assert fake_vllm.completed == 0 and fake_vllm.disconnects == 1
        state = srv.call(lambda: (proxy.registry.get("p").inflight, proxy.policy.program("p").phase))
        assert state == (0, Phase.ACTING)
        assert srv.call(spy.balanced)
    finally:
        srv.stop()


@pytest.mark.parametrize("router", ["default", "tr"])
def test_non_streaming_client_disconnect_cancels_backend_request(fake_vllm: FakeVLLM, router: str):
    fake_vllm.delay = 20.0  # long, so that the deadlines below can be generous on a loaded machine
    c0 = Config(backends=(fake_vllm.url,), router=router)
    spy = SpyPolicy(make_policy(c0.policy_settings()))
    srv, proxy = start_proxy(c0, spy)
    try:
        t0 = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                srv.url + "/v1/chat/completions",
                json=chat(program_id="p"),
                timeout=httpx.Timeout(10, read=0.3),
            )
        wait_until(lambda: srv.call(lambda: spy.ends["p"]) == 1, timeout=10, what="end after client left")
        assert time.monotonic() - t0 < 15.0  # did not wait for the backend's 20 s
        # the backend only counts a disconnect before it answers (at 20 s): a proxy that did not cancel fails here
        wait_until(lambda: fake_vllm.disconnects == 1, timeout=15, what="backend saw the connection close")
        assert srv.call(lambda: proxy.registry.get("p").inflight) == 0
    finally:
        srv.stop()


def test_held_request_client_disconnect(fake_vllm: FakeVLLM):
    c0 = Config(backends=(fake_vllm.url,), router="default")
    spy = SpyPolicy(HoldingPolicy(c0, hold={"h"}))
    srv, proxy = start_proxy(c0, spy)
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                srv.url + "/v1/chat/completions",
                json=chat(program_id="h"),
                timeout=httpx.Timeout(10, read=0.3),
            )
        wait_until(lambda: srv.call(lambda: proxy.registry.get("h").held) == 0, what="held count back to 0")
        assert spy.ends["h"] == 0
        srv.call(lambda: proxy.scheduler.apply([Resume("h", fake_vllm.url)]))
        assert srv.call(lambda: (spy.ends["h"], proxy.policy.program("h").inflight)) == (1, 0)
        assert fake_vllm.requests == []  # nothing was sent for the departed client
    finally:
        srv.stop()


def _free_port() -> int:
    return int(free_port_url().rsplit(":", 1)[1])


def _run_cli(args: list[str], fake: FakeVLLM) -> None:
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ThunderAgent",
            "--backends",
            fake.url,
            "--port",
            str(port),
            "--log-level",
            "warning",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"proxy exited: {proc.stdout.read().decode()}")
            try:
                return httpx.get(base + "/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=30, interval=0.1, what="proxy /health")
        h = httpx.get(base + "/health").json()
        assert h["router_mode"] == args[args.index("--router") + 1]
        r = httpx.post(base + "/v1/chat/completions", json=chat(program_id="cli"), timeout=10)
        assert r.status_code == 200 and r.json()["usage"]["total_tokens"] > 0
        assert "cli" in httpx.get(base + "/programs").json()
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.mark.slow
def test_cli_starts_default_router(fake_vllm: FakeVLLM):
    _run_cli(["--router", "default"], fake_vllm)


@pytest.mark.slow
def test_cli_starts_tr_router(fake_vllm: FakeVLLM):
    _run_cli(["--router", "tr", "--scheduler-interval", "0.2"], fake_vllm)


def test_client_disconnect_while_sending_body(fake_vllm: FakeVLLM, caplog):
    import socket

    c0 = Config(backends=(fake_vllm.url,), router="default")
    srv, proxy = start_proxy(c0, PassthroughPolicy(c0.policy_settings()))
    cancelled = proxy.telemetry.requests.labels("cancelled")
    try:
        with caplog.at_level("ERROR"):
            with socket.create_connection(("127.0.0.1", srv.port)) as s:
                s.sendall(
                    b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"messages": ['
                )
            wait_until(lambda: cancelled._value.get() == 1, what="request counted as cancelled")
        assert not [r for r in caplog.records if r.name.startswith("thunderagent")]
        assert srv.call(lambda: len(proxy.registry)) == 0 and fake_vllm.requests == []
        assert httpx.get(srv.url + "/health").status_code == 200
    finally:
        srv.stop()
