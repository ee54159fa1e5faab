"""`thunderbench reproduce glm4.6 --engine live-sim`: the simulator server and the real ThunderAgent proxy
run as processes, W's runner drives synthetic agents over HTTP on an accelerated clock; afterwards every
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
