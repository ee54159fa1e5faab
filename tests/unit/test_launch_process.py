"""The process supervisor against real processes: health with a deadline, clean group stop, refusals."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest

from harness.launch import process
from harness.launch.process import LaunchError, ProcessSpec


def _http_server(port: int, *, grandchild: bool = False, ignore_term: bool = False) -> tuple[str, ...]:
    """A real HTTP server answering /health (any path) with 200; optionally with a grandchild process in
    the same group and/or ignoring SIGTERM."""
    code = (
        "import http.server, signal, subprocess, sys\n"
        + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_term else "")
        + ("subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n" if grandchild else "")
        + "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.end_headers(); self.wfile.write(b'ok')\n"
        "    def log_message(self, *a): pass\n"
        f"http.server.HTTPServer(('127.0.0.1', {port}), H).serve_forever()\n"
    )
    return (sys.executable, "-c", code)


def _group_members(pgid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                rest = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if rest[2] == str(pgid) and rest[0] != "Z":
                out.append(int(d.name))
    return out


def test_start_healthy_then_stop_kills_whole_group(tmp_path):
    port = process.free_port()
    spec = ProcessSpec("sim", _http_server(port, grandchild=True), health_url=f"http://127.0.0.1:{port}/health",
                       port=port, health_timeout_s=30)
    r = process.start(spec, tmp_path)
    try:
        took = process.wait_healthy(r, 30)
        assert took < 30
        assert r.alive()
        deadline = time.monotonic() + 10
        while len(_group_members(r.pgid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(_group_members(r.pgid)) >= 2, "the grandchild should be in the server's process group"
        assert process.port_in_use("127.0.0.1", port)
    finally:
        how = process.stop(r, grace_s=5)
    assert how == "terminated"
    assert _group_members(r.pgid) == []  # no orphans: the grandchild went with it
    assert not r.alive()
    assert (tmp_path / "sim.log").read_text().startswith("$ ")


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path):
    port = process.free_port()
    spec = ProcessSpec("proxy", _http_server(port, ignore_term=True), health_url=f"http://127.0.0.1:{port}/",
                       port=port)
    r = process.start(spec, tmp_path)
    process.wait_healthy(r, 30)
    t0 = time.monotonic()
    assert process.stop(r, grace_s=0.5) == "killed"
    assert time.monotonic() - t0 < 8
    assert _group_members(r.pgid) == []


def test_port_in_use_is_refused_before_starting(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        spec = ProcessSpec("engine", (sys.executable, "-c", "pass"), port=port)
        with pytest.raises(LaunchError, match=rf"port {port} on 127.0.0.1 is already in use"):
            process.start(spec, tmp_path)
    assert not (tmp_path / "engine.log").exists()


def test_missing_binary_is_refused(tmp_path, monkeypatch):
    with pytest.raises(LaunchError, match="binary 'no-such-binary-tb' not found on PATH"):
        process.start(ProcessSpec("engine", ("no-such-binary-tb", "serve")), tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no vllm here
    with pytest.raises(LaunchError, match="binary 'vllm' not found on PATH .install vLLM"):
        process.check_binary("vllm")


def test_process_that_dies_reports_exit_code_and_last_log_line(tmp_path):
    spec = ProcessSpec("engine", (sys.executable, "-c", "import sys; print('boom: no weights'); sys.exit(3)"),
                       health_url=f"http://127.0.0.1:{process.free_port()}/health")
    r = process.start(spec, tmp_path)
    with pytest.raises(LaunchError, match=r"engine exited \(code 3\) before becoming healthy: boom: no weights"):
        process.wait_healthy(r, 30)
    process.stop(r)


def test_never_healthy_hits_the_deadline_and_stop_cleans_up(tmp_path):
    port = process.free_port()
    spec = ProcessSpec("engine", (sys.executable, "-c", "import time; time.sleep(60)"),
                       health_url=f"http://127.0.0.1:{port}/health")
    r = process.start(spec, tmp_path)
    t0 = time.monotonic()
    with pytest.raises(LaunchError, match=r"did not become healthy .* within 1 s"):
        process.wait_healthy(r, 1.0)
    assert time.monotonic() - t0 < 5
    process.stop(r, grace_s=2)
    assert not r.alive()


def test_state_file_roundtrip_and_recycled_pid_is_not_alive(tmp_path, monkeypatch):
    monkeypatch.setenv("THUNDERBENCH_STATE_DIR", str(tmp_path))
    me = process.Running("engine", os.getpid(), os.getpgid(0), ["x"], "log", None, None,
                         process._start_ticks(os.getpid()), time.time())
    process.save_state("glm4.6", "vllm", [me])
    st = process.load_state()
    assert st["recipe"] == "glm4.6" and st["processes"][0].pid == os.getpid()
    assert st["processes"][0].alive()
    stale = process.Running(**{**st["processes"][0].__dict__, "start_ticks": (me.start_ticks or 0) + 1})
    assert not stale.alive()  # same pid, different start time: someone else's process
    process.clear_state()
    assert process.load_state() is None
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(LaunchError, match="unreadable"):
        process.load_state()


def test_cpu_seconds_of_this_process_grows_and_unknown_pid_is_none():
    a = process.cpu_seconds(os.getpid())
    sum(i * i for i in range(300_000))
    b = process.cpu_seconds(os.getpid())
    assert a is not None and b is not None and b >= a
    assert process.cpu_seconds(2**22 + 12345) is None  # above any pid_max


def test_supervisor_stops_in_reverse_order_on_error(tmp_path):
    port = process.free_port()
    good = ProcessSpec("sim", _http_server(port), health_url=f"http://127.0.0.1:{port}/", port=port)
    bad = ProcessSpec("proxy", (sys.executable, "-c", "raise SystemExit(5)"),
                      health_url=f"http://127.0.0.1:{process.free_port()}/")
    with pytest.raises(LaunchError, match="proxy exited"):
        with process.Supervisor(tmp_path) as sup:
            first = sup.start(good)
            sup.start(bad)
    assert not first.alive()
    assert not process.port_in_use("127.0.0.1", port)
