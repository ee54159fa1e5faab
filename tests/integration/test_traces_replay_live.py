"""`--workload trace:PATH` through live-sim: the simulator server, the real ThunderAgent proxy and the synthetic
agent replaying recorded trajectories over HTTP."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.traces import write_traces
from harness.workload import Trajectory, Turn
from ThunderAgent.records import read_step_records

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_live_sim_replays_the_trace_pool(tmp_path, monkeypatch):
    monkeypatch.setenv("THUNDERBENCH_STATE_DIR", str(tmp_path / "state"))
    pool = [Trajectory(f"t{i}", 300, 100 + 20 * i, 0.0, tuple(Turn(40 + i, 60, 2.0, "bash") for _ in range(3 + i)))
            for i in range(4)]
    src = write_traces(tmp_path / "pool.jsonl", pool)
    r = CliRunner().invoke(app, ["run", "-r", "tiny-cpu", "--arm", "thunderagent", "-n", "2", "-e", "live-sim",
                                 "--duration", "1m", "-w", "0m-1m", "--time-scale", "4", "-o", str(tmp_path / "run"),
                                 "--workload", f"trace:{src}"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["workload"] == f"trace:{src}"
    ok = [s for s in read_step_records(tmp_path / "run" / "steps.jsonl") if s.status == "ok"]
    assert len(ok) >= 6
    # every program replays one trace of the pool: its outputs are that trace's, exactly
    by_program: dict[str, set[int]] = {}
    for s in ok:
        by_program.setdefault(s.program_id, set()).add(int(s.completion_tokens or 0))
    assert all(len(v) == 1 and v <= {40, 41, 42, 43} for v in by_program.values())
