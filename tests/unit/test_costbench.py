"""benchmarks/_costbench.py without an engine: what the cost-aware watcher reports about the measured window."""

from __future__ import annotations

from benchmarks._costbench import summarize


def _poll(t: float, m: float, pauses: float) -> dict[str, float]:
    return {"t": t, "overcommit": m, "share": 0.3, "pauses": pauses}


def test_window_figures_exclude_the_learning_phase() -> None:
    # learning at m = 1 with pauses until 12 s, relaxed after; window [40, 90)
    samples = [_poll(t, 1.0, 4.0 * t) for t in range(0, 14, 2)] + [_poll(t, 4.0, 48.0) for t in range(14, 92, 2)]
    s = summarize(samples, {"overcommit": 4.0, "share": 0.3, "prefill_seconds_per_token": 1.5e-5}, (40.0, 90.0),
                  cpu_s=3.0)
    assert s.window_overcommit_mean == 4.0 and s.window_pauses == 0.0
    assert 1.0 < s.overcommit_mean < 4.0 and s.overcommit_max == 4.0 and s.overcommit_last == 4.0
    assert s.share == 0.3 and s.prefill_s_per_token == 1.5e-5
    assert "in the window: overcommit mean 4.00, pauses 0" in s.row() and "proxy cpu 3.0 s" in s.row()


def test_pauses_inside_the_window_are_counted_from_the_last_poll_before_it() -> None:
    samples = [_poll(30, 4.0, 10.0), _poll(38, 4.0, 12.0), _poll(50, 2.0, 15.0), _poll(60, 2.0, 20.0),
               _poll(95, 4.0, 30.0)]
    s = summarize(samples, {}, (40.0, 90.0))
    assert s.window_pauses == 8.0  # 20 at the last poll inside, 12 at the last poll before
    assert s.window_overcommit_mean == 2.0
    assert s.proxy_cpu_s is None and "proxy cpu" not in s.row()


def test_no_poll_inside_the_window_reports_nothing_rather_than_zero() -> None:
    s = summarize([_poll(1, 1.0, 0.0)], {}, (40.0, 90.0))
    assert s.window_overcommit_mean is None and s.window_pauses is None
    assert "in the window" not in s.row() and "unlearned" in s.row()

