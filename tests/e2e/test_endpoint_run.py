"""`thunderbench run` / `reproduce` against servers that are already running: the simulator server
(`python -m harness.entry sim serve`) as the engine and a real `thunderagent` process as the proxy, given by URL
(--endpoint / --proxy) or found in what `thunderbench up` recorded. The steps must be recorded against those
URLs, the engine's /metrics scraped from the given URL, and nothing launched by the run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

MODEL = "zai-org/GLM-4.6-FP8"  # the glm4.6 recipe's served name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tb(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def _wait_healthy(url: str, proc: subprocess.Popen, deadline_s: float = 90.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        assert proc.poll() is None, f"{url}: process exited with {proc.returncode}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)  # poll interval (the deadline bounds the wait)
    raise AssertionError(f"{url} not healthy within {deadline_s} s")


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as f:
        return subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)


def _success_total(engine: str) -> float:
    text = httpx.get(engine + "/metrics", timeout=5).text
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
               if ln.startswith("vllm:request_success_total"))


def _proxy_requests(proxy: str) -> float:
    text = httpx.get(proxy + "/metrics", timeout=5).text
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
               if ln.startswith("thunderagent_requests_total{"))


@pytest.fixture
def servers(tmp_path):
    """A simulator server and a ThunderAgent in front of it, started by the test (not by thunderbench)."""
    sp, pp = _free_port(), _free_port()
    engine, proxy = f"http://127.0.0.1:{sp}", f"http://127.0.0.1:{pp}"
    sim = _start([sys.executable, "-m", "harness.entry", "sim", "serve", "--profile", "glm4.6-8xh100", "--port", str(sp),
                  "--time-scale", "60", "--served-model-name", MODEL], tmp_path / "sim.log")
    ta = None
    try:
        _wait_healthy(engine + "/health", sim)
        ta = _start([str(Path(sys.executable).parent / "thunderagent"), "--backends", engine, "--port", str(pp),
                     "--router", "tr", "--metrics"], tmp_path / "proxy.log")
        _wait_healthy(proxy + "/health", ta)
        yield engine, proxy
    finally:
        if ta is not None:
            _stop(ta)
        _stop(sim)


def _steps(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "steps.jsonl").read_text().splitlines() if ln.strip()]


def test_run_against_given_urls_launches_nothing(servers, tmp_path):
    engine, proxy = servers
    before_engine, before_proxy = _success_total(engine), _proxy_requests(proxy)
    out = tmp_path / "ta"
    r = _tb("run", "-r", "glm4.6", "--arm", "thunderagent", "-n", "3", "--duration", "3m", "--window", "1m-3m",
            "--endpoint", engine + "/v1", "--proxy", proxy, "-o", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "nothing is started" in r.stderr and "time scale 60" in r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["endpoint"] == proxy + "/v1"  # the agents talked to the given proxy
    assert m["metrics_urls"] == [engine]  # and the engine's /metrics was scraped from the given URL
    assert m["simulated"] is True and m["profile"] == "glm4.6-8xh100" and m["time_scale"] == 60
    assert m["extra"]["processes"] == [] and not (out / "logs").exists()  # nothing launched
    assert m["extra"]["targets"]["proxy"] == proxy and m["extra"]["targets"]["engine"] == engine
    steps = [s for s in _steps(out) if s["status"] == "ok"]
    assert steps and all(s["arm"] == "thunderagent" for s in steps)
    scraped = [json.loads(ln) for ln in (out / "engine_metrics.jsonl").read_text().splitlines()]
    assert len(scraped) >= 2 and {s["engine"] for s in scraped} == {engine}
    # the servers really served these steps: both counters moved by at least the recorded steps
    assert _success_total(engine) - before_engine >= len(steps)
    assert _proxy_requests(proxy) - before_proxy >= len(steps)

    # the vllm arm with only --endpoint talks to the engine directly
    out2 = tmp_path / "vllm"
    r = _tb("run", "-r", "glm4.6", "--arm", "vllm", "-n", "3", "--duration", "2m", "--window", "0m-2m",
            "--endpoint", engine, "-o", str(out2), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    m2 = json.loads((out2 / "manifest.json").read_text())
    assert m2["endpoint"] == engine + "/v1" and m2["extra"]["processes"] == []
    assert _steps(out2)


def test_reproduce_against_a_running_proxy(servers, tmp_path):
    """--proxy alone: the engine is the proxy's backend; both arms measured, nothing launched per point."""
    engine, proxy = servers
    out = tmp_path / "sweep"
    r = _tb("reproduce", "glm4.6", "--levels", "2", "--arms", "vllm,thunderagent", "--duration", "2m",
            "--window", "0m-2m", "--proxy", proxy, "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    sweep = json.loads((out / "manifest.json").read_text())
    assert sweep["engine"] == "live-sim" and sweep["targets"]["engine"] == engine
    for arm, url in (("vllm", engine), ("thunderagent", proxy)):
        m = json.loads((out / f"{arm}-2" / "manifest.json").read_text())
        assert m["endpoint"] == url + "/v1" and m["extra"]["processes"] == []
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert {x["arm"]: x["status"] for x in rows} == {"vllm": "ok", "thunderagent": "ok"}


def test_bad_endpoint_is_one_line(tmp_path):
    port = _free_port()
    r = _tb("run", "-r", "glm4.6", "--arm", "vllm", "-n", "2", "--endpoint", f"http://127.0.0.1:{port}",
            "-o", str(tmp_path / "x"), cwd=tmp_path, timeout=60)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and f"127.0.0.1:{port}/v1/models does not answer" in r.stderr
    assert not (tmp_path / "x").exists()
    r = _tb("run", "-r", "glm4.6", "--arm", "vllm", "-n", "2", "--endpoint", "localhost:8100",
            "-o", str(tmp_path / "x"), cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and "give an http(s) URL" in r.stderr


def test_readme_up_run_down(tmp_path):
    """The README's sequence: `up` holds the engine and the proxy; `run` with no URL measures them (it used to
    refuse: port already in use); `down` stops them and removes the state file."""
    sp, pp = _free_port(), _free_port()
    recipe = tmp_path / "live.toml"
    recipe.write_text(textwrap.dedent(f"""
        name = "live"
        [engine]
        model = "{MODEL}"
        [proxy]
        port = {pp}
        [sim]
        profile = "glm4.6-8xh100"
        port = {sp}
        time_scale = 60.0
        """))
    env = {**os.environ, "THUNDERBENCH_STATE_DIR": str(tmp_path / "state")}
    try:
        up = _tb("up", "-r", str(recipe), "--engine", "sim", cwd=tmp_path, env=env, timeout=120)
        assert up.returncode == 0, up.stdout + up.stderr
        state = json.loads((tmp_path / "state" / "state.json").read_text())
        assert state["endpoints"] == {"engine": f"http://127.0.0.1:{sp}", "proxy": f"http://127.0.0.1:{pp}"}
        out = tmp_path / "run"
        r = _tb("run", "-r", str(recipe), "--arm", "thunderagent", "-n", "3", "--duration", "2m",
                "--window", "0m-2m", "-o", str(out), cwd=tmp_path, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "from thunderbench up" in r.stderr
        m = json.loads((out / "manifest.json").read_text())
        assert m["endpoint"] == f"http://127.0.0.1:{pp}/v1" and m["metrics_urls"] == [f"http://127.0.0.1:{sp}"]
        assert m["extra"]["processes"] == [] and _steps(out)
        assert (out / "predictions.jsonl").exists()
    finally:
        down = _tb("down", cwd=tmp_path, env=env, timeout=120)
    assert down.returncode == 0, down.stderr
    assert not (tmp_path / "state" / "state.json").exists()


@pytest.mark.real
@pytest.mark.agents
def test_run_a_real_agent_against_a_running_server_then_evaluate(tmp_path):
    """run -> evaluate as the README has it, with a real agent (mini-swe-agent on the toy fixtures) against a
    running engine given by URL: a simulator server scripted to look around, then submit."""
    from tests.e2e.agents_e2e import require

    require("minisweagent", "miniswe")  # fails in CI when the extra is missing, as the other agent tests do
    script = tmp_path / "script.json"
    script.write_text(json.dumps([
        {"tool_calls": [{"name": "bash", "arguments": {"command": "ls"}}]},
        {"tool_calls": [{"name": "bash", "arguments": {
            "command": "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT && git diff --no-color"}}]},
    ]))
    sp = _free_port()
    engine = f"http://127.0.0.1:{sp}"
    sim = _start([sys.executable, "-m", "harness.entry", "sim", "serve", "--profile", "glm4.6-8xh100", "--port", str(sp),
                  "--served-model-name", MODEL, "--script", str(script)], tmp_path / "sim.log")
    try:
        _wait_healthy(engine + "/health", sim)
        out = tmp_path / "mini"
        r = _tb("run", "-r", "glm4.6", "--arm", "vllm", "-n", "3", "--agent", "mini-swe-agent", "--dataset", "toy",
                "--max-iterations", "4", "--duration", "90s", "--window", "0s-90s", "--endpoint", engine,
                "-o", str(out), cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        _stop(sim)
    m = json.loads((out / "manifest.json").read_text())
    assert m["agent"] == "mini-swe-agent" and m["dataset"] == "toy" and m["extra"]["processes"] == []
    preds = [json.loads(ln) for ln in (out / "predictions.jsonl").read_text().splitlines() if ln.strip()]
    assert preds and all(p["instance_id"].startswith("thunderbench-toy__") for p in preds)
    ev = _tb("evaluate", str(out / "predictions.jsonl"), "--dataset", "toy", cwd=tmp_path)
    assert ev.returncode == 0, ev.stdout + ev.stderr
    assert all(p["instance_id"] in ev.stdout for p in preds)
