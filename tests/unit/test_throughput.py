"""Window arithmetic, the two step counts and their agreement check, hit rate, preemptions, latency."""

from __future__ import annotations

import math

import pytest

from harness.records import EngineSample, JsonlWriter, RunManifest, RunPaths, StepRecord
from harness.throughput import (RunData, WindowError, agreement, bootstrap_ci, counter_at, parse_window,
                                summarize, summarize_run, timeline)


@pytest.mark.parametrize("text,start,end", [
    ("10m-70m", 600, 4200), ("600s-4200s", 600, 4200), ("1h-2h", 3600, 7200), ("1h10m-2h", 4200, 7200),
    ("600-4200", 600, 4200), (" 0m - 1.5m ", 0, 90),
])
def test_parse_window(text, start, end):
    w = parse_window(text)
    assert (w.start_s, w.end_s) == (start, end)
    assert w.minutes == pytest.approx((end - start) / 60)


@pytest.mark.parametrize("text,msg", [
    ("70m-10m", "end must come after"), ("abc", "START-END"), ("", "empty"), ("10m-", "empty bound"),
    ("10x-20m", "cannot read"), ("5m-5m", "end must come after"), ("1-2-3", "START-END"), ("m-2m", "cannot read"),
])
def test_bad_windows(text, msg):
    with pytest.raises(WindowError, match=msg):
        parse_window(text)


def _run(tmp_path, *, start=1000.0, scale=1.0, minutes=80, per_min=60, engine_extra=0.0,
         scrape_s=5.0) -> RunData:
    """A run with `per_min` ok steps per (simulated) minute spread evenly, each taking 2 s, and an engine
    counter that tracks them (+ `engine_extra` fraction), 10% prefix misses, 1 preemption per minute."""
    paths = RunPaths.create(tmp_path / "run")
    RunManifest(run_id="r", arm="vllm", programs=24, agent="synthetic", engine="sim", simulated=True,
                profile="glm4.6-8xh100", start_time=start, time_scale=scale).write(paths.manifest)
    total = minutes * per_min
    ends = [(i + 0.5) * 60.0 / per_min for i in range(total)]  # simulated seconds since start
    with JsonlWriter(paths.steps) as w:
        for i, e in enumerate(ends):
            w.write(StepRecord(f"p{i % 24}", i // 24 + 1, arrival=start + (e - 2.0) / scale, start=start + (e - 2.0) / scale,
                               end=start + e / scale, prompt_tokens=1000, cached_tokens=900, completion_tokens=100))
        w.write(StepRecord("p0", 999, arrival=start + 700 / scale, start=start + 700 / scale,
                           end=start + 701 / scale, status="error"))
    with JsonlWriter(paths.engine_metrics) as w:
        t = 0.0
        while t <= minutes * 60 + 1e-9:
            done = sum(1 for e in ends if e <= t) * (1 + engine_extra)
            w.write_line(EngineSample(start + t / scale, "sim", {
                "vllm:request_success_total": done, "vllm:prefix_cache_queries_total": done * 1000,
                "vllm:prefix_cache_hits_total": done * 900, "vllm:num_preemptions_total": math.floor(t / 60)}).to_json())
            t += scrape_s
    return RunData.load(paths.root)


def test_both_counts_agree_on_a_steady_run(tmp_path):
    s = summarize(_run(tmp_path), "10m-70m")
    assert s.record_steps_per_min == pytest.approx(60.0)
    assert s.engine_steps_per_min == pytest.approx(60.0, rel=1e-3)
    assert s.agree is True and s.steps_source == "engine" and not s.notes
    assert s.steps_per_min == pytest.approx(60.0, rel=1e-3)
    assert s.prefix_hit_rate == pytest.approx(0.9) and s.hit_rate_source == "engine"
    assert s.preemptions == pytest.approx(60.0, abs=1)
    assert s.p50_step_latency_s == pytest.approx(2.0) and s.p95_step_latency_s == pytest.approx(2.0)
    assert s.ci_low <= s.steps_per_min <= s.ci_high
    assert s.errors_in_window == 1 and s.steps_in_window == 3600
    assert s.simulated and s.profile == "glm4.6-8xh100" and s.programs == 24


def test_disagreement_above_one_percent_reports_both(tmp_path):
    s = summarize(_run(tmp_path, engine_extra=0.03), "10m-70m")
    assert s.agree is False
    assert s.engine_steps_per_min == pytest.approx(61.8, rel=1e-3)
    assert s.record_steps_per_min == pytest.approx(60.0)
    assert "disagree" in s.notes[0]


def test_half_percent_difference_still_agrees():
    assert agreement(100.0, 99.5) is True
    assert agreement(100.0, 98.9) is False
    assert agreement(None, 5.0) is None and agreement(0.0, 0.0) is True


def test_accelerated_run_reads_in_simulated_time(tmp_path):
    # 80 simulated minutes played 60x faster: record clock spans 80 s, the window is still 10m-70m
    s = summarize(_run(tmp_path, scale=60.0), "10m-70m")
    assert s.record_steps_per_min == pytest.approx(60.0)
    assert s.engine_steps_per_min == pytest.approx(60.0, rel=1e-3)
    assert s.p50_step_latency_s == pytest.approx(2.0)  # latencies in simulated seconds too


def test_window_outside_the_run_is_a_clear_error(tmp_path):
    run = _run(tmp_path, minutes=40)
    with pytest.raises(WindowError, match="ends at 70.0 min but the run's data ends at 40.0 min"):
        summarize(run, "10m-70m")


def test_records_only_when_no_engine_metrics(tmp_path):
    run = _run(tmp_path)
    run.samples = []
    s = summarize(run, "10m-70m")
    assert s.steps_source == "records" and s.agree is None and s.engine_steps_per_min is None
    assert s.prefix_hit_rate == pytest.approx(0.9) and s.hit_rate_source == "records"
    assert s.preemptions is None


def test_counter_interpolation():
    pts = [(0.0, 0.0), (10.0, 100.0), (20.0, 100.0)]
    assert counter_at(pts, 5.0) == 50.0 and counter_at(pts, 10.0) == 100.0 and counter_at(pts, 15.0) == 100.0
    assert counter_at(pts, -1.0) is None and counter_at(pts, 21.0) is None


def test_bootstrap_ci_brackets_the_mean_and_shrinks_with_steady_data():
    lo, hi = bootstrap_ci([10, 12, 8, 11, 9, 10, 13, 7] * 4)
    assert lo < 10 < hi
    assert bootstrap_ci([10.0] * 30) == (10.0, 10.0)
    assert all(math.isnan(x) for x in bootstrap_ci([]))


def test_summarize_run_reads_a_directory_and_timeline(tmp_path):
    run = _run(tmp_path, minutes=20)
    s = summarize_run(run.root, "5m-15m")
    assert s.steps_per_min == pytest.approx(60.0, rel=1e-3)
    tl = timeline(run)
    assert len(tl) >= 20 and tl[3] == (3.0, 60.0)
    with pytest.raises(FileNotFoundError, match="manifest"):
        summarize_run(tmp_path)


from hypothesis import given, strategies as st  # noqa: E402


@given(a=st.integers(0, 10_000), d=st.integers(1, 10_000), unit=st.sampled_from(["s", "m", "h"]))
def test_window_roundtrip_property(a, d, unit):
    scale = {"s": 1, "m": 60, "h": 3600}[unit]
    w = parse_window(f"{a}{unit}-{a + d}{unit}")
    assert w.start_s == a * scale and w.end_s == (a + d) * scale and w.minutes == pytest.approx(d * scale / 60)
    with pytest.raises(WindowError):
        parse_window(f"{a + d}{unit}-{a}{unit}")
