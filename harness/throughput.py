"""Steps/min over a window, counted twice (engine counters and client step records), plus prefix hit
rate, preemptions, per-step latency percentiles and a bootstrap confidence interval.

One step = one served LLM call (the ThunderAgent paper's measure: count the served LLM calls within a
stable serving window and divide by the window's duration). A window like "10m-70m" is
relative to the run's start (manifest.start_time) and measured in *simulated* seconds when the run was
accelerated (manifest.time_scale), so an accelerated live-sim run and a real run read the same way.

Two independent counts:
  * engine: the increase of `vllm:request_success_total` (summed over engines) between the window's
    edges, each edge linearly interpolated between the two scrapes around it;
  * records: step records with status "ok" whose `end` falls inside the window.
They must agree within 1% (`AGREEMENT_TOLERANCE`); otherwise both are reported and `agree` is False.
The headline figure is the engine count when the run has engine metrics, else the record count.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from harness import durations
from harness.durations import WindowError
from harness.errors import UserError
from harness.records import (EngineSample, RunManifest, RunPaths, StepRecord, read_engine_samples,
                             read_step_records)

AGREEMENT_TOLERANCE = 0.01
DEFAULT_WINDOW = "10m-70m"
MIN_WINDOW_BINS = 10  # fewer ~1-minute bins than this and the bootstrap CI says little: warned about

SUCCESS = "vllm:request_success_total"
HITS = "vllm:prefix_cache_hits_total"
QUERIES = "vllm:prefix_cache_queries_total"
PREEMPTIONS = "vllm:num_preemptions_total"


class RunDataError(UserError, ValueError):
    """A run directory whose files cannot be read (corrupt JSON, wrong schema, a directory for a file)."""




# ----------------------------------------------------------------------------------------------- window

@dataclass(frozen=True, slots=True)
class Window:
    """[start_s, end_s) relative to the run start, in (simulated) seconds."""

    start_s: float
    end_s: float
    text: str = ""

    @property
    def minutes(self) -> float:
        return (self.end_s - self.start_s) / 60.0

    def __str__(self) -> str:
        return self.text or f"{self.start_s:g}s-{self.end_s:g}s"


def parse_window(text: str) -> Window:
    """Parse "10m-70m", "600s-4200s", "1h-2h", "1h10m-2h", "600-4200" (seconds): harness.durations' grammar."""
    a, b = durations.parse_window(text)
    return Window(a, b, text.strip())


# ----------------------------------------------------------------------------------------------- data

@dataclass
class RunData:
    """A run directory loaded into memory; times converted to seconds since the run start on the
    simulated clock (rel = (t - start_time) * time_scale)."""

    manifest: RunManifest
    steps: list[StepRecord]
    samples: list[EngineSample]
    root: Path | None = None

    @classmethod
    def load(cls, run_dir: str | Path) -> "RunData":
        paths = RunPaths(Path(run_dir))
        if not paths.manifest.exists():
            raise FileNotFoundError(f"{paths.root} has no manifest.json (not a run directory)")
        try:
            steps = read_step_records(paths.read_steps) if paths.read_steps.exists() else []
            return cls(RunManifest.read(paths.manifest), steps, read_engine_samples(paths.read_engine_metrics),
                       paths.root)
        except (ValueError, TypeError, AttributeError, KeyError, OSError) as e:  # a damaged file, not a bug here
            raise RunDataError(f"{paths.root}: unreadable run files ({type(e).__name__}: {e})") from None

    def rel(self, t: float) -> float:
        return (t - self.manifest.start_time) * self.manifest.time_scale

    def span_s(self) -> float:
        """How far the run's data reaches (simulated seconds since start)."""
        ends = [self.rel(s.end) for s in self.steps] + [self.rel(s.t) for s in self.samples]
        if self.manifest.end_time is not None:
            ends.append(self.rel(self.manifest.end_time))
        return max(ends, default=0.0)


def check_window(run: RunData, window: Window, slack_s: float = 1.0) -> None:
    span = run.span_s()
    if window.end_s > span + slack_s:
        raise WindowError(f"window {window} ends at {window.end_s / 60:.1f} min but the run's data ends at "
                          f"{span / 60:.1f} min: pick a window inside the run (e.g. "
                          f"{max(0, span * 0.125) / 60:.0f}m-{span / 60:.0f}m) or run longer")


# ----------------------------------------------------------------------------------------------- counting

def counter_at(samples: Sequence[tuple[float, float]], t: float) -> float | None:
    """A cumulative counter's value at time t, interpolated linearly between the scrapes around t.
    None when t lies outside the scraped span (no extrapolation)."""
    if not samples or t < samples[0][0] or t > samples[-1][0]:
        return None
    ts = [s[0] for s in samples]
    i = int(np.searchsorted(ts, t, side="left"))
    if ts[i] == t:
        return samples[i][1]
    (t0, v0), (t1, v1) = samples[i - 1], samples[i]
    return v0 + (v1 - v0) * (t - t0) / (t1 - t0)


def engine_delta(run: RunData, key: str, window: Window) -> float | None:
    """Increase of counter `key` over the window, summed over engines; None if any engine that exports
    the counter does not cover both edges, or no engine exports it."""
    series: dict[str, list[tuple[float, float]]] = {}
    for s in run.samples:
        if key in s.values:
            series.setdefault(s.engine, []).append((run.rel(s.t), s.values[key]))
    if not series:
        return None
    total = 0.0
    for pts in series.values():
        pts.sort()
        a, b = counter_at(pts, window.start_s), counter_at(pts, window.end_s)
        if a is None or b is None:
            return None
        total += b - a
    return total


def ok_steps_per_min(steps: Iterable[StepRecord], start_s: float, end_s: float,
                     rel: Callable[[float], float] = float) -> float:
    """Steps/min, counted one way for every caller (a run directory, the DES in memory, the live load generator):
    ok step records whose end, as `rel(end)` (default: as recorded), lies in [start_s, end_s), per minute of
    that span."""
    n = sum(1 for r in steps if r.status == "ok" and start_s <= rel(r.end) < end_s)
    return n / ((end_s - start_s) / 60.0)


def _in_window(run: RunData, window: Window, ok_only: bool = True) -> list[StepRecord]:
    return [r for r in run.steps if (not ok_only or r.status == "ok")
            and window.start_s <= run.rel(r.end) < window.end_s]


def record_steps_per_min(run: RunData, window: Window) -> float:
    """Step records with status "ok" whose end falls inside the window, per minute of the window."""
    return ok_steps_per_min(run.steps, window.start_s, window.end_s, run.rel)


def bootstrap_ci(values: Sequence[float], *, resamples: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of `values` (here: per-minute step counts). Minutes are
    treated as exchangeable, which ignores serial correlation: read it as a lower bound on uncertainty."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return (math.nan, math.nan)
    if v.size == 1:
        return (float(v[0]), float(v[0]))
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
    lo, hi = np.percentile(means, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return (float(lo), float(hi))


def window_bins(window: Window) -> int:
    """How many ~60 s bins the window is cut into for the CI (equal widths, as close to a minute as fits)."""
    return max(1, int(round((window.end_s - window.start_s) / 60.0)))


def per_minute_counts(run: RunData, window: Window) -> np.ndarray:
    """Ok steps per bin of ~60 s across the window (bins of equal width, as close to a minute as fits)."""
    length = window.end_s - window.start_s
    nbins = window_bins(window)
    edges = np.linspace(window.start_s, window.end_s, nbins + 1)
    ends = np.array([run.rel(r.end) for r in _in_window(run, window)])
    counts, _ = np.histogram(ends, bins=edges)
    return counts * (60.0 / (length / nbins))  # per-minute rate of each bin


def timeline(run: RunData, bin_s: float = 60.0) -> list[tuple[float, float]]:
    """(bin start in minutes, steps/min) across the whole run: the throughput-over-time plot."""
    span = run.span_s()
    if span <= 0:
        return []
    edges = np.arange(0.0, span + bin_s, bin_s)
    ends = np.array([run.rel(r.end) for r in run.steps if r.status == "ok"])
    counts, _ = np.histogram(ends, bins=edges)
    return [(float(e / 60.0), float(c * 60.0 / bin_s)) for e, c in zip(edges[:-1], counts)]


# ----------------------------------------------------------------------------------------------- summary

@dataclass
class ThroughputSummary:
    """One row of the comparison table (harness/sweep/summary.py, harness/plots.py)."""

    arm: str
    programs: int
    steps_per_min: float
    ci_low: float
    ci_high: float
    prefix_hit_rate: float | None
    preemptions: float | None
    p50_step_latency_s: float | None
    p95_step_latency_s: float | None
    p99_step_latency_s: float | None
    simulated: bool
    profile: str | None
    window: str = DEFAULT_WINDOW
    engine_steps_per_min: float | None = None
    record_steps_per_min: float | None = None
    agree: bool | None = None  # engine vs records within AGREEMENT_TOLERANCE (None: only one count)
    steps_source: str = "records"  # which count steps_per_min is
    hit_rate_source: str | None = None  # "engine" | "records"
    steps_in_window: int = 0
    errors_in_window: int = 0
    run_id: str | None = None
    run_dir: str | None = None
    notes: list[str] = field(default_factory=list)
    # time to first token (arrival to first streamed token, the scheduler's hold included) and queue wait (the
    # time the scheduler held the call before forwarding it, StepRecord.pause_s), over the window's ok steps;
    # None where the records carry no first-token time
    p50_ttft_s: float | None = None
    p95_ttft_s: float | None = None
    p99_ttft_s: float | None = None
    p50_queue_wait_s: float | None = None
    p95_queue_wait_s: float | None = None
    p99_queue_wait_s: float | None = None
    window_bins: int = 0  # ~1-minute bins the CI is computed over

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def label(self) -> str:
        return f"{self.arm} ({'simulated, ' + str(self.profile) if self.simulated else 'real'})"


def agreement(engine: float | None, records: float | None,
              tolerance: float = AGREEMENT_TOLERANCE) -> bool | None:
    """True when both counts exist and differ by at most `tolerance` of the larger one."""
    if engine is None or records is None:
        return None
    big = max(abs(engine), abs(records))
    return big == 0 or abs(engine - records) / big <= tolerance


def summarize(run: RunData, window: Window | str = DEFAULT_WINDOW) -> ThroughputSummary:
    """All figures of one run over `window`."""
    w = parse_window(window) if isinstance(window, str) else window
    check_window(run, w)
    m = run.manifest
    in_win = _in_window(run, w)
    rec_spm = record_steps_per_min(run, w)
    eng = engine_delta(run, SUCCESS, w)
    eng_spm = eng / w.minutes if eng is not None else None
    notes: list[str] = []
    ok = agreement(eng_spm, rec_spm)
    if ok is False:
        notes.append(f"engine and record counts disagree by more than {AGREEMENT_TOLERANCE:.0%}: "
                     f"engine {eng_spm:.1f} vs records {rec_spm:.1f} steps/min")
    if eng is None and run.samples:
        notes.append("engine metrics do not cover the window: steps counted from records only")
    headline = eng_spm if eng_spm is not None else rec_spm
    # CI from per-minute record counts, re-centred on the headline count when it is the engine's
    counts = per_minute_counts(run, w)
    lo, hi = bootstrap_ci(counts)
    if eng_spm is not None and counts.size and not math.isnan(lo):
        shift = eng_spm - float(counts.mean())
        lo, hi = lo + shift, hi + shift
    hits, queries = engine_delta(run, HITS, w), engine_delta(run, QUERIES, w)
    if hits is not None and queries:
        hit_rate, hit_src = hits / queries, "engine"
    else:
        with_cache = [r for r in in_win if r.cached_tokens is not None and r.prompt_tokens]
        prompt = sum(r.prompt_tokens or 0 for r in with_cache)
        hit_rate = (sum(r.cached_tokens or 0 for r in with_cache) / prompt) if prompt else None
        hit_src = "records" if hit_rate is not None else None
    lat = np.array([(r.end - r.arrival) * m.time_scale for r in in_win])
    pct = (lambda q: float(np.percentile(lat, q)) if lat.size else None)
    ttft = _percentiles([(r.first_token - r.arrival) * m.time_scale for r in in_win if r.first_token is not None])
    wait = _percentiles([(r.pause_s or 0.0) * m.time_scale for r in in_win])
    bins = window_bins(w)
    if bins < MIN_WINDOW_BINS:
        notes.append(f"the window {w} holds {bins} one-minute bin{'s' if bins != 1 else ''} (fewer than "
                     f"{MIN_WINDOW_BINS}): its confidence interval says little; use a longer window")
    errors = len([r for r in _in_window(run, w, ok_only=False) if r.status != "ok"])
    pre = engine_delta(run, PREEMPTIONS, w)  # a count: interpolated edges make it fractional, so round
    return ThroughputSummary(
        arm=m.arm, programs=m.programs, steps_per_min=float(headline), ci_low=lo, ci_high=hi,
        prefix_hit_rate=hit_rate, preemptions=None if pre is None else float(round(pre)),
        p50_step_latency_s=pct(50), p95_step_latency_s=pct(95), p99_step_latency_s=pct(99),
        simulated=m.simulated, profile=m.profile, window=str(w), engine_steps_per_min=eng_spm,
        record_steps_per_min=rec_spm, agree=ok, steps_source="engine" if eng_spm is not None else "records",
        hit_rate_source=hit_src, steps_in_window=len(in_win), errors_in_window=errors, run_id=m.run_id,
        run_dir=str(run.root) if run.root else None, notes=notes,
        p50_ttft_s=ttft[0], p95_ttft_s=ttft[1], p99_ttft_s=ttft[2],
        p50_queue_wait_s=wait[0], p95_queue_wait_s=wait[1], p99_queue_wait_s=wait[2], window_bins=bins)


def _percentiles(values: list[float], qs: tuple[float, ...] = (50, 95, 99)) -> tuple[float | None, ...]:
    if not values:
        return tuple(None for _ in qs)
    return tuple(float(v) for v in np.percentile(np.asarray(values, dtype=float), qs))


def summarize_run(run_dir: str | Path, window: Window | str = DEFAULT_WINDOW) -> ThroughputSummary:
    return summarize(RunData.load(run_dir), window)


def summarize_runs(run_dirs: Iterable[str | Path], window: Window | str = DEFAULT_WINDOW) -> list[ThroughputSummary]:
    """Rows sorted by (arm, programs)."""
    rows = [summarize_run(d, window) for d in run_dirs]
    return sorted(rows, key=lambda r: (r.arm, r.programs))


def to_dataframe(rows: Iterable[ThroughputSummary]):  # -> pandas.DataFrame
    import pandas as pd

    return pd.DataFrame([r.as_dict() for r in rows])
