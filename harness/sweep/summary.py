"""The summary of a sweep: one row per point (steps/min and its CI, hit rate, latency percentiles, ...),
ratios to the vllm arm and the headroom to the "bound" arm, repeats combined across seeds, summary.json and
summary.csv, the terminal table and the figure's title; and the rows of results directories read back.

matplotlib is imported only where a figure's labels are needed (harness.plots loads it): it is heavy, and
the table and the CLI's start-up do not need it.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness import throughput
from harness.errors import ReproduceError
from harness.records import RunPaths
from harness.recipes import RecipeError
from harness.sweep.files import read_json, write_json

SUMMARY_FIELDS = (
    "recipe", "arm", "programs", "status", "steps_per_min", "ci_low", "ci_high", "steps_per_min_records",
    "prefix_hit_rate", "preemptions", "p50_step_latency_s", "p95_step_latency_s", "steps_in_window",
    "simulated", "profile", "engine", "run_dir", "reason", "agree",
)
SUMMARY_FIELDS += ("headroom",)  # thunderagent rows: its steps/min ÷ the "bound" arm's at that level
SUMMARY_FIELDS += (
    "ratio_vs_vllm",  # every arm but vllm: its steps/min ÷ the vllm arm's at the same level
    "p99_step_latency_s", "p50_ttft_s", "p95_ttft_s", "p99_ttft_s",
    "p50_queue_wait_s", "p95_queue_wait_s", "p99_queue_wait_s",
    "errors_in_window", "window", "window_bins", "engine_steps_per_min", "steps_source", "hit_rate_source",
    "seed", "repeats", "steps_per_min_repeats", "notes", "agent", "dataset",
)
FIGURE_NAME = "throughput.png"

# Summary columns the prediction bands add (present only in a --bands sweep).
BAND_FIELDS = ("steps_per_min_band_low", "steps_per_min_band_high", "ratio_vs_vllm", "ratio_band_low",
               "ratio_band_high", "knee_kv", "knee_kv_low", "knee_kv_high", "knee_sim", "knee_sim_low",
               "knee_sim_high", "band_points")


@dataclass
class PointResult:
    arm: str
    programs: int
    run_dir: str
    status: str = "ok"
    reason: str | None = None
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None


def summarize_run(run_dir: Path, window: str) -> dict[str, Any]:
    """The summary-row fields of one run directory (harness.throughput does the counting)."""
    return summary_row(throughput.RunData.load(run_dir), window)


def summary_row(run: throughput.RunData, window: str) -> dict[str, Any]:
    """The summary-row fields of one run, read from its directory or still in memory (a DES point)."""
    s = throughput.summarize(run, window)
    m = run.manifest
    engine, agent, dataset = m.engine, m.agent, m.dataset
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
        "p99_step_latency_s": s.p99_step_latency_s,
        "p50_ttft_s": s.p50_ttft_s,
        "p95_ttft_s": s.p95_ttft_s,
        "p99_ttft_s": s.p99_ttft_s,
        "p50_queue_wait_s": s.p50_queue_wait_s,
        "p95_queue_wait_s": s.p95_queue_wait_s,
        "p99_queue_wait_s": s.p99_queue_wait_s,
        "errors_in_window": s.errors_in_window,
        "window": s.window,
        "window_bins": s.window_bins,
        "engine_steps_per_min": s.engine_steps_per_min,
        "steps_source": s.steps_source,
        "hit_rate_source": s.hit_rate_source,
        "notes": list(s.notes),
        "agent": agent,
        "dataset": dataset,
    }


def summarize(root: Path, window: str, points: list[PointResult], recipe: str) -> list[dict[str, Any]]:
    """One summary row per point (failed points included, marked)."""
    rows = []
    for p in points:
        base = {k: None for k in SUMMARY_FIELDS}
        base.update(recipe=recipe, arm=p.arm, programs=p.programs, run_dir=p.run_dir, status=p.status,
                    reason=p.reason, seed=p.seed, repeats=1)
        if p.status == "ok":
            try:
                base.update(p.extra.pop("summary", None) or summarize_run(root / p.run_dir, window))
            except (ValueError, OSError) as e:
                base.update(status="failed", reason=f"no throughput: {e}")
        else:
            base.update(_manifest_labels(root / p.run_dir))
        rows.append(base)
    add_headroom(rows)
    add_ratios(rows)
    return rows


def add_headroom(rows: list[dict[str, Any]]) -> None:
    """ThunderAgent's steps/min ÷ the "bound" arm's (the same profile with the KV limit lifted) at each level,
    on the thunderagent rows: how much of what a perfect scheduler could reach it gets."""
    bound = {r["programs"]: r.get("steps_per_min") for r in rows if r["arm"] == "bound" and r["status"] == "ok"}
    for r in rows:
        b = bound.get(r["programs"])
        if r["arm"] == "thunderagent" and r["status"] == "ok" and b and r.get("steps_per_min") is not None:
            r["headroom"] = round(r["steps_per_min"] / b, 3)


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Every arm's steps/min ÷ the vllm arm's at the same level (`ratio_vs_vllm`, on the rows of the other
    arms), so the comparison is read per level and not only at the largest one."""
    base = {r["programs"]: r.get("steps_per_min") for r in rows if r["arm"] == "vllm" and r["status"] == "ok"}
    for r in rows:
        b = base.get(r["programs"])
        if r["arm"] != "vllm" and r["status"] == "ok" and b and r.get("steps_per_min") is not None:
            r["ratio_vs_vllm"] = r["steps_per_min"] / b


# two-sided 95% quantiles of Student's t by degrees of freedom (1..30); beyond 30 the normal 1.96 is within 2%
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t95(df: int) -> float:
    return _T95[df - 1] if 1 <= df <= len(_T95) else 1.96


# numbers averaged over the repeats of a point (the rest are taken from its first repeat)
_MEAN_FIELDS = ("steps_per_min_records", "prefix_hit_rate", "preemptions", "p50_step_latency_s",
                "p95_step_latency_s", "p99_step_latency_s", "p50_ttft_s", "p95_ttft_s", "p99_ttft_s",
                "p50_queue_wait_s", "p95_queue_wait_s", "p99_queue_wait_s", "engine_steps_per_min")
_SUM_FIELDS = ("steps_in_window", "errors_in_window")


def combine_repeats(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (arm, programs) from the rows of its repeats (seeds): steps/min is their mean and its CI
    the t-interval of that mean across the repeats (the spread between seeds, which the per-minute bootstrap
    of one run cannot see); other figures are means (counts: sums). A point with a failed repeat is failed."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["arm"], int(r["programs"])), []).append(r)
    out = []
    for (arm, n), reps in groups.items():
        row = dict(reps[0])
        row.update(seed=None, repeats=len(reps), run_dir=", ".join(str(r["run_dir"]) for r in reps),
                   steps_per_min_repeats=[r.get("steps_per_min") for r in reps], headroom=None,
                   ratio_vs_vllm=None)
        bad = [r for r in reps if r["status"] != "ok"]
        if bad:
            row.update(status="failed", reason=f"seed {bad[0].get('seed')}: {bad[0].get('reason')}")
            out.append(row)
            continue
        spm = [float(r["steps_per_min"]) for r in reps]
        mean = sum(spm) / len(spm)
        sd = math.sqrt(sum((v - mean) ** 2 for v in spm) / (len(spm) - 1))
        half = t95(len(spm) - 1) * sd / math.sqrt(len(spm))
        row.update(steps_per_min=mean, ci_low=mean - half, ci_high=mean + half,
                   agree=all(r.get("agree") is not False for r in reps),
                   notes=list(dict.fromkeys(n for r in reps for n in (r.get("notes") or ()))))
        for k in _MEAN_FIELDS:
            vals = [float(r[k]) for r in reps if r.get(k) is not None]
            row[k] = sum(vals) / len(vals) if len(vals) == len(reps) else None
        for k in _SUM_FIELDS:
            row[k] = sum(int(r.get(k) or 0) for r in reps)
        out.append(row)
    add_headroom(out)
    add_ratios(out)
    return out


def summary_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """The notes of every row, once each (the short-window warning is the same on every point)."""
    seen: dict[str, None] = {}
    for r in rows:
        for n in r.get("notes") or ():
            seen.setdefault(n if "bin" in n and "window" in n else f"{r['arm']} × {r['programs']}: {n}")
    return list(seen)


def _manifest_labels(run_dir: Path) -> dict[str, Any]:
    try:
        m = json.loads((run_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return {"simulated": m.get("simulated"), "profile": m.get("profile"), "engine": m.get("engine"),
            "agent": m.get("agent"), "dataset": m.get("dataset")}


def write_summary(root: Path, rows: list[dict[str, Any]], bands: dict[str, Any] | None = None,
                  repeats: list[dict[str, Any]] | None = None) -> None:
    """summary.json (rows, warnings, the bands block, and with --repeats every seed's own row) and
    summary.csv (the rows)."""
    write_json(root / "summary.json", {"rows": rows, "warnings": summary_warnings(rows),
                                       **({"bands": bands} if bands is not None else {}),
                                       **({"repeats": repeats} if repeats is not None else {})})
    fields = list(SUMMARY_FIELDS) + [k for k in BAND_FIELDS if k not in SUMMARY_FIELDS and any(k in r for r in rows)]
    with open(root / "summary.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_cell(r.get(k)) for k in fields})


def _csv_cell(v: Any) -> Any:
    """One CSV cell: empty for None, lists joined with "; " (notes) or "|" (numbers)."""
    if v is None:
        return ""
    if isinstance(v, (list, tuple)):
        return ("; " if any(isinstance(x, str) for x in v) else "|").join(str(x) for x in v)
    return v


def read_summary(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text(encoding="utf-8"))["rows"]


def load_results(paths: list[Path], window: str | None) -> list[dict[str, Any]]:
    """Summary rows from sweep directories (their summary.json, or recomputed when --window is given)
    and/or single run directories (a manifest.json + steps.jsonl)."""
    if not paths:
        raise ReproduceError("give at least one results or run directory")
    rows: list[dict[str, Any]] = []
    for p in paths:
        if not p.exists():
            raise ReproduceError(f"{p} does not exist")
        if not p.is_dir():
            raise ReproduceError(f"{p} is not a directory")
        if (p / "summary.json").exists() and window is None:
            for row in read_summary(p / "summary.json"):
                if "agent" not in row:  # a summary written before rows named their agent and dataset
                    labels = _manifest_labels(p / str(row.get("run_dir")).split(", ")[0])  # repeats: the first
                    row.update(agent=labels.get("agent"), dataset=labels.get("dataset"))
                rows.append(row)
            continue

        runs = [p] if (p / "manifest.json").exists() and RunPaths(p).read_steps.exists() else sorted(
            d for d in p.iterdir() if d.is_dir() and RunPaths(d).read_steps.exists())
        if not runs:
            raise ReproduceError(f"{p} holds no run (no steps.jsonl): is it a results directory?")
        sweep = read_json(p / "manifest.json") if (p / "manifest.json").exists() else {}
        win = window or sweep.get("window")
        these: list[dict[str, Any]] = []
        for d in runs:
            m = read_json(d / "manifest.json")
            w = win or (m.get("extra") or {}).get("window")
            if not w:
                raise ReproduceError(f"{d}: no window recorded; pass --window, e.g. --window 10m-70m")
            try:
                row = {k: None for k in SUMMARY_FIELDS}
                row.update(recipe=m.get("recipe") or sweep.get("recipe"), arm=m.get("arm"),
                           programs=m.get("programs"), run_dir=d.name, status="ok")
                row.update(summarize_run(d, w))
            except RecipeError:
                raise
            except ValueError as e:
                raise ReproduceError(f"{d}: {e}") from None
            these.append(row)
        add_headroom(these)
        add_ratios(these)
        rows.extend(these)
    return rows


def figure_title(rows: list[dict[str, Any]]) -> str:
    """The figure's main title from what the rows' manifests say ran: recipes, agent, dataset and engine, and
    SIMULATED with the profiles when the series are simulated (harness.plots.sim_tag)."""
    from harness.plots import sim_tag

    def names(k: str) -> str:
        return ", ".join(sorted({str(r[k]) for r in rows if r.get(k)}))

    title = f"{names('recipe') or 'ThunderAgent'}: ThunderAgent vs vLLM"
    agents, datasets, engines = names("agent"), names("dataset"), names("engine")
    if agents:
        title += f", {agents} agent{'s' if ',' in agents else ''}" + (f" on {datasets}" if datasets else "")
    if engines:
        title += f", engine {engines}"
    return f"{title} — {sim_tag(rows)}"


def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return format(v, spec)


def print_table(rows: list[dict[str, Any]], console: Console, title: str = "") -> None:
    """The comparison table (fits 80 columns); failed points are listed under it with their reason."""
    from harness.plots import ratios_at_max

    t = Table(title=title, title_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("arm", "N", "steps/min", "95% CI", "×vLLM", "hit", "preempt", "p50 s", "p95 s"):
        t.add_column(col, justify="left" if col == "arm" else "right", no_wrap=True)
    failed = []
    for r in sorted(rows, key=lambda r: (int(r["programs"]), str(r["arm"]))):
        if r["status"] != "ok":
            failed.append(r)
            t.add_row(str(r["arm"]), str(r["programs"]), "[red]failed[/]", "", "", "", "", "", "")
            continue
        ci = (f"{_fmt(r.get('ci_low'), '.0f')}–{_fmt(r.get('ci_high'), '.0f')}"
              if r.get("ci_low") is not None else "—")
        hit = r.get("prefix_hit_rate")
        t.add_row(str(r["arm"]), str(r["programs"]), _fmt(r.get("steps_per_min"), ".1f"), ci,
                  _fmt(r.get("ratio_vs_vllm"), ".2f"),
                  "—" if hit is None else f"{100 * hit:.1f}%", _fmt(r.get("preemptions"), ".0f"),
                  _fmt(r.get("p50_step_latency_s"), ".1f"), _fmt(r.get("p95_step_latency_s"), ".1f"))
    console.print(t)
    reps = sorted({int(r["repeats"]) for r in rows if r.get("repeats")})
    if reps and max(reps) > 1:
        console.print(f"  steps/min and its 95% CI: mean and t-interval over {max(reps)} repeats (seeds)",
                      highlight=False, soft_wrap=True)
    for w in summary_warnings(rows):
        if "bin" in w and "window" in w:
            console.print(f"  [yellow]warning[/] {escape(w)}", highlight=False, soft_wrap=True)
    for r in failed:
        console.print(f"  [red]failed[/] {r['arm']} × {r['programs']}: {escape(str(r.get('reason')))}",
                      highlight=False, soft_wrap=True)
    for r in rows:
        if r.get("agree") is False:
            console.print(f"  [yellow]note[/] {r['arm']} × {r['programs']}: engine count "
                          f"{_fmt(r.get('steps_per_min'), '.1f')} vs step records "
                          f"{_fmt(r.get('steps_per_min_records'), '.1f')} steps/min differ by more than 1%",
                          highlight=False, soft_wrap=True)
    for arm, ratio in sorted(ratios_at_max(rows).items()):
        console.print(f"  {arm} / vllm at the largest concurrency: [bold]{ratio:.2f}×[/]")
    head = sorted((int(r["programs"]), r["headroom"]) for r in rows if r.get("headroom") is not None)
    if head:
        console.print("  thunderagent / bound (same profile, KV limit lifted): "
                      + ", ".join(f"{n}: [bold]{h:.2f}×[/]" for n, h in head), highlight=False, soft_wrap=True)
