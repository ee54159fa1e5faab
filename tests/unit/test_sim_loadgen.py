"""harness/sim/loadgen.py's count: a live validation run's steps/min is the one records count of
harness/throughput.py (ok calls whose end lies in the run, per virtual minute)."""

from __future__ import annotations

import pytest

from harness.sim.loadgen import LiveResult, id_run
from harness.throughput import ok_steps_per_min
from ThunderAgent.records import StepRecord


def rec(end: float, status: str = "ok") -> StepRecord:
    return StepRecord("p", 1, end - 1.0, end - 1.0, end, status=status)


def test_live_steps_per_min_counts_ok_calls_that_ended_inside_the_run() -> None:
    steps = [rec(0.5), rec(30.0), rec(89.9), rec(45.0, "error"), rec(90.0), rec(120.0)]
    live = LiveResult(steps, duration_s=90.0, time_scale=20.0)
    assert live.steps_per_min() == pytest.approx(3 / 1.5)  # 0.5, 30, 89.9: ends at 90 and later are outside
    assert live.steps_per_min() == ok_steps_per_min(steps, 0.0, 90.0)
    assert ok_steps_per_min(steps, 30.0, 90.0) == pytest.approx(2.0)  # [30, 90): 30 and 89.9


def test_id_runs_are_deterministic_distinct_and_inside_the_tiny_vocabulary() -> None:
    a, b = id_run(1, 500), id_run(2, 500)
    assert a == id_run(1, 500) and a != b
    assert all(16 <= t < 4000 for t in a + b)
