"""One measurement point (one arm at one concurrency) on each engine, and its summary row.

  * run_point_des  — E's discrete-event simulator (harness/sim/des.py), in-process, virtual time, with
                     the same ThunderAgent policy core as the proxy (S's CapacityPolicy, via make_policy);
  * run_point_live — a fresh engine process per point (the simulator's HTTP server on an accelerated
                     clock, or the recipe's real vLLM), ThunderAgent in front of it for the thunderagent
                     arm, and W's runner driving N agent programs over HTTP; every process is stopped
                     (process group, SIGTERM then SIGKILL) before the function returns.
Each writes a run directory in W's format (harness/records.py): manifest.json, steps.jsonl,
engine_metrics.jsonl (+ instances.jsonl, predictions.jsonl from the runner).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

if TYPE_CHECKING:
    from harness.reproduce import SweepOptions


def summarize_run(run_dir: Path, window: str) -> dict[str, Any]:
    """The summary-row fields of one run directory (W's harness.throughput does the counting)."""
    from harness.throughput import summarize_run as _summarize

    s = _summarize(run_dir, window)
    engine = None
    try:
        from harness.records import RunManifest

        engine = RunManifest.read(Path(run_dir) / "manifest.json").engine
    except (OSError, ValueError, TypeError):
        pass
    return {
        "steps_per_min": s.steps_per_min,
        "ci_low": s.ci_low,
        "ci_high": s.ci_high,
        "steps_per_min_records": s.record_steps_per_min,
        "prefix_hit_rate": s.prefix_hit_rate,
        "preemptions": s.preemptions,
        "p50_step_latency_s": s.p50_step_latency_s,
        "p95_step_latency_s": s.p95_step_latency_s,
        "steps_in_window": s.steps_in_window,
        "simulated": s.simulated,
        "profile": s.profile,
        "engine": engine,
        "agree": s.agree,
    }


def run_point_des(opts: "SweepOptions", arm: str, programs: int, run_dir: Path, console: Console) -> dict[str, Any]:
    raise NotImplementedError("waiting for harness/sim/des.py")


def run_point_live(opts: "SweepOptions", arm: str, programs: int, run_dir: Path, console: Console) -> dict[str, Any]:
    raise NotImplementedError("waiting for harness/runner.py")
