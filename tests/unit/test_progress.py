"""The sweep progress display on a fake clock: points done / total, ETA, the live steps/min of the running
point from its growing steps.jsonl, and plain lines when the output is not a terminal."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from rich.console import Console

from harness.sweep.progress import SweepProgress, fmt_duration


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _plain(clock: Clock, total: int = 4, **kw) -> tuple[SweepProgress, io.StringIO]:
    buf = io.StringIO()
    con = Console(file=buf, force_terminal=False, width=200)
    return SweepProgress(con, total, clock=clock, **kw), buf


def test_done_total_and_eta_from_the_mean_point_time(tmp_path):
    clock = Clock()
    p, buf = _plain(clock)
    p.start("vllm-24", tmp_path)
    clock.t += 60
    p.finish("vllm-24", True)
    assert p.eta_s() == pytest.approx(180.0)  # 3 points left x 60 s
    assert "[1/4] vllm-24 done; ETA 3m00s" in buf.getvalue()
    p.start("thunderagent-24", tmp_path)
    clock.t += 30  # half of the running point is done already
    assert p.eta_s() == pytest.approx(150.0)
    assert p.line().startswith("1/4 points done · elapsed 1m30s · ETA 2m30s · running thunderagent-24")


def test_parallel_points_divide_the_eta():
    clock = Clock()
    p, _ = _plain(clock, total=8, jobs=4)
    for i in range(4):
        p.finish(f"p{i}", True, wall_s=40.0)
    assert p.eta_s() == pytest.approx(40.0)  # 4 left x 40 s / 4 workers
    p.finish("p4", False, wall_s=40.0)
    assert "5/8 points done (1 failed)" in p.line()


def test_live_steps_per_minute_of_the_running_point(tmp_path):
    clock = Clock()
    p, buf = _plain(clock, time_scale=1.0, plain_every_s=60)
    p.start("vllm-48", tmp_path)
    with open(tmp_path / "steps.jsonl", "w") as f:
        f.write('{"step": 1}\n' * 90 + '{"step": 9')  # 90 whole records and a partial one
    clock.t += 30
    assert p.live_rate("vllm-48") == (90, pytest.approx(180.0))
    assert "running vllm-48: 90 steps, 180.0 steps/min" in p.line()
    with open(tmp_path / "steps.jsonl", "a") as f:
        f.write('1}\n')  # the partial line completes: counted once
    clock.t += 30
    p.refresh()  # a plain line is due (60 s since the start)
    assert p.live_rate("vllm-48") == (91, pytest.approx(91.0))
    assert "running vllm-48: 91 steps" in buf.getvalue()


def test_accelerated_clock_reads_in_simulated_minutes(tmp_path):
    clock = Clock()
    p, _ = _plain(clock, time_scale=60.0)
    p.start("thunderagent-8", tmp_path)
    (tmp_path / "steps.jsonl").write_text('{}\n' * 120)
    clock.t += 60  # one wall minute = one simulated hour
    assert p.live_rate("thunderagent-8")[1] == pytest.approx(2.0)


def test_no_rate_without_step_records_or_too_early(tmp_path):
    clock = Clock()
    p, _ = _plain(clock)
    p.start("continuum-96", None)
    assert p.live_rate("continuum-96") == (0, None)
    p.start("vllm-96", tmp_path)
    (tmp_path / "steps.jsonl").write_text('{}\n' * 3)
    clock.t += 2
    assert p.live_rate("vllm-96") == (3, None)


def test_fmt_duration():
    assert [fmt_duration(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]


def test_a_sweep_piped_to_a_file_prints_plain_progress_lines(tmp_path):
    out = tmp_path / "res"
    r = subprocess.run([sys.executable, "-m", "harness.cli", "reproduce", "glm4.6", "-e", "des", "-l", "2",
                        "--duration", "4m", "-w", "1m-4m", "--arms", "vllm,thunderagent", "-j", "1",
                        "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert any(ln.strip().startswith("[1/3] vllm-2 done; ETA") for ln in lines), r.stderr
    assert any(ln.strip() == "[3/3] bound-2 done" for ln in lines), r.stderr
    assert "\r" not in r.stderr and "\x1b[" not in r.stderr  # no redrawn status line in a pipe
