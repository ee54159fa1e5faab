"""Helpers for the fault tests: a fake vLLM in its own process (so it can be SIGKILLed and restarted on the
same port), the proxy on a real socket, and the "nothing was lost" invariant every fault test ends with.

    backend = BackendProcess(token_delay=0.05, completion_tokens=200).start()
    backend.kill(); backend.start()                  # same port, fresh process
    srv, proxy, spy = start_proxy(Config(backends=(backend.url,), router="tr"))
    assert_settled(srv, proxy, spy)                   # in-flight 0, nothing held/REASONING, views agree
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import httpx

from ThunderAgent.app import create_app
from ThunderAgent.proxy import Proxy
from ThunderAgent.config import Config
from ThunderAgent.policy import make_policy
from ThunderAgent.policy.base import Phase
from tests.fakes.fake_vllm import free_port_url
from tests.fakes.proxy_kit import SpyPolicy
from tests.fakes.server import ServerThread, wait_until

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    return int(free_port_url().rsplit(":", 1)[1])


class BackendProcess:
    """tests.fakes.fake_vllm served by a child process on a fixed port (survives kill/start cycles)."""

    def __init__(self, port: int | None = None, **knobs: Any) -> None:
        self.port = port or free_port()
        self.knobs = knobs
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "BackendProcess":
        code = f"from tests.fakes.fake_vllm import serve; serve({self.port}, **{json.dumps(self.knobs)})"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"fake backend exited with {self.proc.returncode}")
            try:
                return httpx.get(self.url + "/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=timeout, interval=0.05, what=f"fake backend on {self.url}")
        return self

    def kill(self) -> None:
        """SIGKILL: connections are cut with no goodbye, as when an engine crashes."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def start_proxy(config: Config, policy: Any = None) -> tuple[ServerThread, Proxy, SpyPolicy]:
    """The proxy app on a real uvicorn socket in a thread, its policy wrapped in a SpyPolicy."""
    spy = SpyPolicy(policy if policy is not None else make_policy(config.policy_settings()))
    app = create_app(config, policy=spy)
    srv = ServerThread(app).start()
    return srv, app.state.proxy, spy


def snapshot(proxy: Proxy) -> dict[str, Any]:
    """The proxy's bookkeeping, read on its own loop thread (via ServerThread.call)."""
    recs = proxy.registry.records()
    views = proxy.policy.programs()
    return {
        "inflight": sum(r.inflight for r in recs),
        "held": sum(r.held for r in recs),
        "waiters": sum(proxy.scheduler.held(r.program_id) for r in recs),
        "reasoning": sorted(v.program_id for v in views if v.phase == Phase.REASONING),
        "registry_ids": sorted(r.program_id for r in recs),
        "policy_ids": sorted(v.program_id for v in views),
    }


def assert_settled(
    srv: ServerThread, proxy: Proxy, spy: SpyPolicy | None = None, timeout: float = 10.0, released: set[str] = frozenset()
) -> dict[str, Any]:
    """Nothing lost: every forwarded request ended exactly once in the policy, no request in flight or held,
    no program stuck REASONING, and /programs agrees with the policy's and the registry's views. Programs in
    `released` are exempt from the arrivals == ends count (a request held when its program was released is
    failed with 410 and never reaches the policy's on_request_end)."""

    def settled() -> bool:
        s = srv.call(lambda: snapshot(proxy))
        return s["inflight"] == 0 and s["held"] == 0 and not s["reasoning"]

    wait_until(settled, timeout=timeout, interval=0.02, what="proxy in-flight/held counts back to 0")
    s = srv.call(lambda: snapshot(proxy))
    assert s["waiters"] == 0, s
    if spy is not None:
        arrivals, ends = srv.call(lambda: (dict(spy.arrivals), dict(spy.ends)))
        unbalanced = {p: (n, ends.get(p, 0)) for p, n in arrivals.items() if p not in released and ends.get(p, 0) != n}
        assert not unbalanced, unbalanced
    listed = httpx.get(srv.url + "/programs", timeout=5).json()
    assert sorted(listed) == s["registry_ids"], (sorted(listed), s)
    assert s["registry_ids"] == s["policy_ids"], s
    for pid, entry in listed.items():
        assert entry["inflight"] == 0 and entry["waiting"] == 0 and entry["status"] != str(Phase.REASONING), (pid, entry)
    health = httpx.get(srv.url + "/health", timeout=5).json()
    assert health["reasoning_count"] == 0, health
    return s


def is_openai_error(r: httpx.Response) -> bool:
    try:
        err = r.json().get("error")
    except ValueError:
        return False
    return isinstance(err, dict) and isinstance(err.get("message"), str) and err["message"] != ""


def sse_error(text: str) -> dict[str, Any] | None:
    """The error object of an SSE `data: {"error": ...}` event in a streamed body, if any."""
    for line in text.splitlines():
        if line.startswith("data: {") and '"error"' in line:
            obj = json.loads(line[6:])
            if isinstance(obj.get("error"), dict):
                return obj["error"]
    return None


# The fake backend runs in the test process (a thread) and records every request: its allocations are not
# the proxy's, so memory figures filter them out.
_NOT_PROXY = (tracemalloc.Filter(False, "*/tests/fakes/*", all_frames=True), tracemalloc.Filter(False, tracemalloc.__file__))


def proxy_bytes() -> int:
    """Bytes traced by tracemalloc (which must be running), excluding the fake backend's allocations."""
    snap = tracemalloc.take_snapshot().filter_traces(_NOT_PROXY)
    return sum(s.size for s in snap.statistics("filename"))
