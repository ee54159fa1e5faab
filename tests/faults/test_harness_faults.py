"""Harness faults. The runner SIGKILLed again and again, and killed in the middle of writing a record (a torn
last line), then resumed: no step record lost or duplicated, every instance finished exactly once.
(tests/unit/test_runner.py (W) covers one SIGKILL and resume; tests/unit/test_cli_reproduce.py (C) covers a
failed point with a stand-in point runner; here the engine process of a live-sim point really dies.)"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from harness.records import read_instance_events, read_step_records
from harness.runner import Runner
from tests.faults.kit import ROOT
from tests.unit.test_runner import FakeAgent, _cfg

_CHILD = """
import asyncio, sys
sys.path.insert(0, {repo!r})
from tests.unit.test_runner import FakeAgent, _cfg
from pathlib import Path
from harness.runner import Runner
cfg = _cfg(Path({tmp!r}), n=60, programs=4)
asyncio.run(Runner(cfg, FakeAgent(steps=5, delay=0.02)).run())
"""


def _lines(path: Path) -> int:
    return sum(1 for _ in open(path, encoding="utf-8")) if path.exists() else 0


def _kill_after(tmp_path: Path, at_least: int) -> None:
    """Start the runner in a child process (resuming whatever is there) and SIGKILL it once `steps.jsonl`
    holds `at_least` lines."""
    steps = tmp_path / "run" / "steps.jsonl"
    child = subprocess.Popen([sys.executable, "-c", _CHILD.format(repo=str(ROOT), tmp=str(tmp_path))], cwd=ROOT,
                             stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while _lines(steps) < at_least:
        if child.poll() is not None:
            pytest.fail(f"child exited early ({child.returncode}): {child.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"the child run did not reach {at_least} steps in 60 s")
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stderr.close()


def _check_complete(tmp_path: Path, n: int = 60, steps: int = 5) -> None:
    recs = read_step_records(tmp_path / "run" / "steps.jsonl")
    keys = Counter((r.program_id, r.step) for r in recs)
    assert all(c == 1 for c in keys.values()), [k for k, c in keys.items() if c > 1]
    events = read_instance_events(tmp_path / "run" / "instances.jsonl")
    ok = Counter(e.instance_id for e in events if e.event == "end" and e.status == "ok")
    assert set(ok) == {f"inst-{i:03d}" for i in range(n)} and set(ok.values()) == {1}
    for e in events:
        if e.event == "end" and e.status == "ok":  # the finished program has all its steps, each once
            assert sorted(r.step for r in recs if r.program_id == e.program_id) == list(range(1, steps + 1)), e


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_runner_killed_three_times_then_resumed(tmp_path: Path) -> None:
    before: list = []
    for at in (20, 90, 180):
        await asyncio.to_thread(_kill_after, tmp_path, at)
        now = read_step_records(tmp_path / "run" / "steps.jsonl")
        assert now[: len(before)] == before  # a resumed run only appends
        before = now
    res = await Runner(_cfg(tmp_path, n=60, programs=4), FakeAgent(steps=5, delay=0.001)).run()
    assert res.ok + res.skipped == 60
    _check_complete(tmp_path)


@pytest.mark.timeout(120)
async def test_runner_killed_mid_record_then_resumed(tmp_path: Path) -> None:
    """SIGKILL while a record line is half written leaves a torn last line; the resumed run must not glue
    its first record onto it (that would corrupt the file for every reader and lose the record)."""
    await asyncio.to_thread(_kill_after, tmp_path, 30)
    for name in ("steps.jsonl", "instances.jsonl"):
        with open(tmp_path / "run" / name, "a", encoding="utf-8") as f:
            f.write('{"program_id": "torn-by-kill", "st')  # what a kill between write() and "\n" leaves
    res = await Runner(_cfg(tmp_path, n=60, programs=4), FakeAgent(steps=5, delay=0.001)).run()
    assert res.ok + res.skipped == 60
    _check_complete(tmp_path)
    for name in ("steps.jsonl", "instances.jsonl"):
        text = (tmp_path / "run" / name).read_text(encoding="utf-8")
        assert "torn-by-kill" not in text
        for line in text.splitlines():
            json.loads(line)  # every line is whole JSON


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_engine_dies_during_a_live_reproduce_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`thunderbench reproduce -e live-sim` with two levels; the simulator process of the first point is
    SIGKILLed while the point runs: that point is marked failed with the reason, the next point runs."""
    from typer.testing import CliRunner

    from harness.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("THUNDERBENCH_STATE_DIR", str(tmp_path / "state"))
    killed: list[int] = []
    stop = threading.Event()

    def killer() -> None:  # kill the first simulator server this process starts, once it is up a moment
        me = psutil.Process()
        while not stop.is_set() and not killed:
            for p in me.children(recursive=True):
                try:
                    cmd = " ".join(p.cmdline())
                    if "sim serve" in cmd and time.time() - p.create_time() > 3:
                        p.kill()
                        killed.append(p.pid)
                        break
                except psutil.Error:
                    continue
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    out = tmp_path / "res"
    try:
        r = CliRunner().invoke(app, ["reproduce", "glm4.6", "-e", "live-sim", "-l", "2,3", "--duration", "10m",
                                     "-w", "1m-10m", "--arms", "vllm", "--time-scale", "60", "-j", "1", "--out", str(out)])
    finally:
        stop.set()
        t.join(5)
    assert killed, "the simulator was never seen running"
    # the sweep goes on past the failed point, then exits 1 naming it and the command that reruns it
    assert r.exit_code == 1, r.output
    assert "1 of 2 points failed (vllm-2" in r.output and f"--resume {out}" in r.output, r.output
    rows = json.loads((out / "summary.json").read_text())["rows"]
    by = {(x["arm"], x["programs"]): x for x in rows}
    assert by[("vllm", 2)]["status"] == "failed", rows
    assert "died" in by[("vllm", 2)]["reason"] or "engine" in by[("vllm", 2)]["reason"], rows
    assert by[("vllm", 3)]["status"] == "ok", rows


@pytest.mark.parametrize(
    ("content", "kept"),
    [(b"", b""), (b'{"a":1}\n', b'{"a":1}\n'), (b'{"a":1}\n{"b"', b'{"a":1}\n'), (b'{"tor', b""),
     (b'{"a":1}\n' + b"x" * 200_000, b'{"a":1}\n')],
)
def test_writer_cuts_a_torn_last_line_before_appending(tmp_path: Path, content: bytes, kept: bytes) -> None:
    from ThunderAgent.records import JsonlWriter, StepRecord

    p = tmp_path / "steps.jsonl"
    p.write_bytes(content)
    with JsonlWriter(p) as w:
        w.write(StepRecord("p", 1, arrival=0.0, start=0.0, end=1.0))
    data = p.read_bytes()
    assert data.startswith(kept) and data.count(b"\n") == kept.count(b"\n") + 1
    from ThunderAgent.records import read_jsonl

    assert list(read_jsonl(p))[-1]["program_id"] == "p"
