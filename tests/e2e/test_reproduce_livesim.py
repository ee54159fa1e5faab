"""`thunderbench reproduce glm4.6 --engine live-sim`: the simulator server and the real ThunderAgent proxy
run as processes, the runner drives synthetic agents over HTTP on an accelerated clock; afterwards every
process (and its group) is gone and the ports are free."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _gone(pid: int) -> bool:
    p = Path(f"/proc/{pid}/stat")
    return not p.exists() or p.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def _group_empty(pgid: int) -> bool:
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                rest = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if rest[2] == str(pgid) and rest[0] != "Z":
                return False
    return True


def test_live_sim_sweep_starts_and_stops_real_processes(tmp_path):
    out = tmp_path / "live"
    r = subprocess.run(
        [sys.executable, "-m", "harness.cli", "reproduce", "glm4.6", "--engine", "live-sim", "--levels", "3",
         "--duration", "3m", "--window", "1m-3m", "--time-scale", "60", "--out", str(out)],
        capture_output=True, text=True, timeout=400, cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "skipping continuum (not supported by live-sim)" in r.stderr

    rows = {x["arm"]: x for x in json.loads((out / "summary.json").read_text())["rows"]}
    assert set(rows) == {"vllm", "thunderagent"}
    for arm, row in rows.items():
        assert row["status"] == "ok", row
        assert row["simulated"] is True and row["profile"] == "glm4.6-8xh100" and row["engine"] == "sim"
        assert row["steps_per_min"] > 0 and row["steps_in_window"] > 0
        assert row["prefix_hit_rate"] is not None and row["prefix_hit_rate"] > 0.5

    expected = {"vllm": {"sim"}, "thunderagent": {"sim", "proxy"}}
    for arm, names in expected.items():
        d = out / f"{arm}-3"
        m = json.loads((d / "manifest.json").read_text())
        assert m["simulated"] and m["time_scale"] == 60 and m["endpoint"].endswith("/v1")
        procs = m["extra"]["processes"]
        assert {p["name"] for p in procs} == names
        for p in procs:
            log = (d / p["log"]).read_text()
            assert log.startswith("$ "), log[:200]
            assert p["stopped"] in ("terminated", "killed")
            assert _gone(p["pid"]), f"{p['name']} (pid {p['pid']}) still running"
            assert _group_empty(p["pgid"]), f"{p['name']}'s process group still has members (orphans)"
        sim_log = (d / "logs" / "sim.log").read_text()
        assert "simulated vLLM: profile glm4.6-8xh100" in sim_log
        for f in ("steps.jsonl", "engine_metrics.jsonl", "predictions.jsonl"):
            assert (d / f).exists()
    # the thunderagent arm really went through the proxy: its step records carry the proxy's endpoint
    ta = json.loads((out / "thunderagent-3" / "manifest.json").read_text())
    assert ta["extra"]["thunderagent"] is True
    proxy_cmd = [p for p in ta["extra"]["processes"] if p["name"] == "proxy"]
    assert proxy_cmd and "-m ThunderAgent" in (out / "thunderagent-3" / proxy_cmd[0]["log"]).read_text().splitlines()[0]


def test_sigterm_mid_sweep_stops_everything_and_keeps_the_partial_sweep(tmp_path):
    """Killing `thunderbench reproduce` (SIGTERM) while a point runs: the simulator and proxy process
    groups are stopped, no final results directory appears, and what was measured stays in
    <out>.incomplete (logs included) for --resume."""
    import signal
    import time

    out = tmp_path / "results" / "live"
    p = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "reproduce", "glm4.6", "--engine", "live-sim", "--levels", "2",
         "--arms", "thunderagent", "--duration", "30m", "--window", "1m-30m", "--time-scale", "20",
         "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.monotonic() + 120
    logs: list[Path] = []
    while time.monotonic() < deadline:
        logs = list((tmp_path / "results").glob("live.incomplete/thunderagent-2/logs/proxy.log"))
        if logs and "Uvicorn running" in logs[0].read_text():
            break
        if p.poll() is not None:
            break
        time.sleep(0.2)
    assert p.poll() is None, p.communicate()
    assert logs, "the proxy never started"
    # the supervised processes are the CLI's direct children (each the leader of its own group)
    me = p.pid
    kids = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and _ppid(int(d.name)) == me]
    assert kids, "the CLI should have supervised children"
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    for k in kids:
        assert _gone(k), f"child {k} survived"
        assert _group_empty(k), f"child {k}'s group survived"
    kept = tmp_path / "results" / "live.incomplete"
    assert not out.exists() and (kept / "thunderagent-2" / "logs" / "proxy.log").exists()
    assert f"--resume {kept}" in " ".join(err.split())


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def test_engine_dying_mid_point_marks_it_failed_and_the_sweep_goes_on(tmp_path):
    """SIGKILL the simulator server of the first point while it serves: that point is recorded as failed
    with the reason, the next point starts a fresh engine and succeeds, and the sweep completes."""
    import os
    import signal
    import time

    out = tmp_path / "live"
    p = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "reproduce", "glm4.6", "--engine", "live-sim", "--levels", "2",
         "--arms", "vllm,thunderagent", "--duration", "4m", "--window", "1m-4m", "--time-scale", "30",
         "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and time.monotonic() < deadline and p.poll() is None:
        steps = list(tmp_path.glob("live.incomplete/vllm-2/steps.jsonl"))
        if steps and steps[0].stat().st_size > 0:  # the engine is serving the first point
            for d in Path("/proc").iterdir():
                if d.name.isdigit() and _ppid(int(d.name)) == p.pid:
                    cmd = (d / "cmdline").read_bytes().split(b"\0")
                    if b"serve" in cmd and b"sim" in cmd:
                        os.killpg(int(d.name), signal.SIGKILL)
                        killed = int(d.name)
        time.sleep(0.1)
    stdout, stderr = p.communicate(timeout=300)
    assert killed is not None, "never saw the first point's simulator serving"
    assert p.returncode == 1, stderr  # a failed point fails the command (--allow-failures to opt out)
    assert "1 of 2 points failed (vllm-2" in stderr
    rows = {x["arm"]: x for x in json.loads((out / "summary.json").read_text())["rows"]}
    assert rows["vllm"]["status"] == "failed" and "sim died during the run" in rows["vllm"]["reason"]
    log = rows["vllm"]["reason"].split("(log ")[1].rstrip(")")
    assert Path(log).exists(), log  # the summary cites the final directory, not a deleted one
    assert rows["thunderagent"]["status"] == "ok" and rows["thunderagent"]["steps_per_min"] > 0
    assert (out / "vllm-2" / "failed.json").exists()
    assert "failed vllm × 2: sim died during the run" in stderr
    assert _group_empty(killed)
