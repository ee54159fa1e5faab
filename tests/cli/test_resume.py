"""Nothing lost, in a subprocess as a user runs it: a failed or interrupted `run`/`reproduce` is kept as
`<out>.incomplete` with its logs, every path it prints exists, `--resume DIR` continues it (finished points or
instances are not run again, no step is written twice), and a sweep with a failed point exits 1 unless
--allow-failures."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _tb(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, "THUNDERBENCH_STATE_DIR": str(cwd / "state")})


def _popen(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "harness.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd,
                            env={**os.environ, "THUNDERBENCH_STATE_DIR": str(cwd / "state")})


def _poll(cond, proc: subprocess.Popen[str], deadline_s: float, what: str) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if cond():
            return
        assert proc.poll() is None, f"exited before {what}: {proc.communicate()}"
        time.sleep(0.1)  # poll interval (the deadline bounds the wait)
    raise AssertionError(f"never saw {what} within {deadline_s} s")


def _lines(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _printed_paths(text: str) -> list[str]:
    """Paths the command printed after `log:`/`log `/`kept`/`--resume` (the ones a user would open)."""
    flat = " ".join(text.split())
    return re.findall(r"(?:log:? |kept |--resume )(\S+?)[)`,]?(?= |$)", flat)


def _failing_recipe(tmp_path: Path) -> Path:
    """A live-sim recipe whose simulator is given no time to become healthy: every point fails at start-up."""
    recipe = tmp_path / "never.toml"
    recipe.write_text(textwrap.dedent("""
        name = "never"
        [engine]
        model = "tiny"
        served_model_name = "tiny"
        [sim]
        profile = "tiny-cpu"
        health_timeout_s = 0.001
        [workload]
        agent = "synthetic"
        dataset = "lite-synthetic"
        max_iterations = 8
        params = "%s"
        """ % (Path(__file__).resolve().parents[2] / "harness" / "recipes" / "workloads" / "tiny-cpu.toml")))
    return recipe


def test_failed_run_is_kept_with_its_logs_and_printed_paths_exist(tmp_path):
    recipe = _failing_recipe(tmp_path)
    out = tmp_path / "runs" / "v2"
    r = _tb("run", "-r", str(recipe), "-e", "live-sim", "--arm", "vllm", "-n", "2", "--duration", "1m",
            "-w", "0s-1m", "-o", str(out), cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    kept = out.with_name("v2.incomplete")
    assert not out.exists() and (kept / "logs" / "sim.log").exists() and (kept / "options.json").exists()
    paths = _printed_paths(r.stderr)
    assert str(kept / "logs" / "sim.log") in paths and str(kept) in paths, r.stderr
    assert all(Path(p).exists() for p in paths), (paths, r.stderr)
    # the same --out again is refused with the way forward, not "exists and is not empty"
    again = _tb("run", "-r", str(recipe), "-e", "live-sim", "--arm", "vllm", "-n", "2", "-o", str(out), cwd=tmp_path)
    assert again.returncode == 2 and f"continue it with --resume {kept}" in again.stderr


def test_sweep_with_failed_points_exits_1_and_its_summary_cites_existing_files(tmp_path):
    recipe = _failing_recipe(tmp_path)
    out = tmp_path / "sweep"
    args = ["reproduce", str(recipe), "-e", "live-sim", "-l", "2", "--arms", "vllm", "--duration", "1m",
            "-w", "0s-1m", "--out", str(out)]
    r = _tb(*args, cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "1 of 1 points failed (vllm-2" in r.stderr and f"--resume {out}" in r.stderr
    assert out.is_dir() and not out.with_name("sweep.incomplete").exists()
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert rows[0]["status"] == "failed"
    cited = _printed_paths(rows[0]["reason"])
    assert cited and all(Path(p).exists() for p in cited), rows[0]["reason"]
    ok = _tb(*args[:-1], str(tmp_path / "sweep2"), "--allow-failures", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr


def test_interrupted_sweep_resumes_keeping_finished_points(tmp_path):
    out = tmp_path / "res"
    work = tmp_path / "res.incomplete"
    p = _popen("reproduce", "glm4.6", "-e", "des", "-l", "8,64", "--arms", "vllm", "--duration", "40m",
               "-w", "1m-40m", "-j", "1", "--out", str(out), cwd=tmp_path)

    def first_point_done() -> bool:
        try:
            return len(json.loads((work / "manifest.json").read_text())["points"]) >= 1
        except (OSError, ValueError, KeyError):
            return False

    _poll(first_point_done, p, 120, "the first point finish")
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert not out.exists() and work.is_dir()
    assert f"--resume {work}" in " ".join(err.split())
    first = work / "vllm-8" / "steps.jsonl"
    before = (first.stat().st_ino, first.stat().st_mtime_ns)

    r = _tb("reproduce", "--resume", str(work), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 point(s) finished, 1 to run" in r.stderr
    assert out.is_dir() and not work.exists()
    moved = out / "vllm-8" / "steps.jsonl"
    assert (moved.stat().st_ino, moved.stat().st_mtime_ns) == before  # the finished point was not run again
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert [(x["arm"], x["programs"], x["status"]) for x in rows] == [("vllm", 8, "ok"), ("vllm", 64, "ok")]
    m = json.loads((out / "manifest.json").read_text())
    assert len(m["resumed"]) == 1 and m["finished"]
    for d in ("vllm-8", "vllm-64"):
        keys = Counter((s["program_id"], s["step"]) for s in _lines(out / d / "steps.jsonl"))
        assert keys and max(keys.values()) == 1

    # options given next to --resume are refused (the recorded ones are the experiment)
    bad = _tb("reproduce", "glm4.6", "--resume", str(out), cwd=tmp_path)
    assert bad.returncode == 2 and "drop recipe" in bad.stderr, bad.stderr


def test_interrupted_live_run_resumes_without_duplicate_steps(tmp_path):
    out = tmp_path / "run"
    work = tmp_path / "run.incomplete"
    p = _popen("run", "-r", "tiny-cpu", "-e", "live-sim", "--arm", "thunderagent", "-n", "4", "--duration", "5m",
               "-w", "0s-2m", "--time-scale", "4", "-o", str(out), cwd=tmp_path)

    def some_finished() -> bool:
        f = work / "instances.jsonl"
        return f.exists() and sum('"status":"ok"' in ln for ln in f.read_text().splitlines()) >= 2

    _poll(some_finished, p, 120, "two instances finish")
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert work.is_dir() and not out.exists()
    ends = [e for e in _lines(work / "instances.jsonl") if e["event"] == "end"]
    finished = {(e["instance_id"], e["round"]) for e in ends if e["status"] == "ok"}
    assert any(e["status"] == "cancelled" for e in ends)
    steps_before = len(_lines(work / "steps.jsonl"))

    r = _tb("run", "--resume", str(work), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "s left until the run's original deadline" in r.stderr  # a duration run keeps its clock
    assert out.is_dir() and not work.exists()
    m = json.loads((out / "manifest.json").read_text())
    assert len(m["extra"]["resumed_at"]) == 1
    steps = _lines(out / "steps.jsonl")
    assert len(steps) > steps_before  # it went on
    keys = Counter((s["program_id"], s["step"]) for s in steps)
    assert max(keys.values()) == 1  # no step written twice
    starts = [e for e in _lines(out / "instances.jsonl") if e["event"] == "start"]
    again = [(e["instance_id"], e["round"]) for e in starts]
    for key in finished:  # an instance that finished in a round is not started again in that round
        assert again.count(key) == 1, key
    done = _tb("run", "--resume", str(out), cwd=tmp_path)
    assert done.returncode == 0 and "nothing to resume" in done.stdout
