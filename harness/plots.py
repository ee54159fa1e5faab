"""The comparison figure: per recipe (or sweep) one row of four panels — steps/min vs parallel workflows (one
line per arm, 95% CI band), each arm's steps/min ÷ vLLM's per level, prefix-cache hit rate, per-step latency —
and the throughput-over-time plot of single runs.

Input is the summary rows of harness/sweep/summary.py (one dict per arm x concurrency, the rows of summary.json).
Honest labels: when every series is simulated the main title says SIMULATED once, with the profiles; a figure
that mixes real and simulated series says so in the main title and tags each row. Colours are the Okabe-Ito
palette (distinguishable with the common colour-vision deficiencies), and every arm also has its own line
style and marker, drawn so that arms lying on top of each other stay visible (the widest line and largest
marker underneath, hollow markers over them).
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable

import matplotlib

if "matplotlib.pyplot" not in sys.modules:  # files only, never a display; a notebook keeps its inline backend
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from harness.throughput import RunData, timeline  # noqa: E402

# Okabe & Ito (2008), "Color Universal Design": vermillion, blue, bluish green, black.
OKABE_ITO = {"orange": "#E69F00", "sky_blue": "#56B4E9", "bluish_green": "#009E73", "yellow": "#F0E442",
             "blue": "#0072B2", "vermillion": "#D55E00", "reddish_purple": "#CC79A7", "black": "#000000"}
ARM_STYLE: dict[str, dict[str, Any]] = {
    "vllm": {"label": "vLLM", "color": OKABE_ITO["vermillion"], "marker": "o", "ls": "-", "lw": 3.2, "ms": 10,
             "mfc": None},
    "continuum": {"label": "Continuum-style", "color": OKABE_ITO["bluish_green"], "marker": "s", "ls": "--",
                  "lw": 2.0, "ms": 7, "mfc": "none"},
    "thunderagent": {"label": "ThunderAgent", "color": OKABE_ITO["blue"], "marker": "^", "ls": "-", "lw": 2.0,
                     "ms": 6, "mfc": None},
    "bound": {"label": "vLLM, KV limit lifted (bound)", "color": OKABE_ITO["black"], "marker": "D", "ls": ":",
              "lw": 1.4, "ms": 5, "mfc": "none"},
}
# drawing order: the widest line / largest marker first, so the arms drawn over it leave it visible
ARM_ORDER = ("vllm", "bound", "continuum", "thunderagent")
_OTHER_MARKERS = ("v", "P", "X", "*", "h")


def _ok(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("status", "ok") == "ok" and _num(r.get("steps_per_min")) is not None]


def _num(x: Any) -> float | None:
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _style(arm: str) -> dict[str, Any]:
    if arm in ARM_STYLE:
        return ARM_STYLE[arm]
    i = sum(map(ord, arm)) % len(_OTHER_MARKERS)
    return {"label": arm, "color": OKABE_ITO["reddish_purple"], "marker": _OTHER_MARKERS[i], "ls": "-.", "lw": 1.6,
            "ms": 6, "mfc": None}


def sim_tag(rows: Iterable[dict[str, Any]]) -> str:
    """"SIMULATED (profiles)", "real engine", or "real and SIMULATED series" for the rows that plot."""
    ok = _ok(rows)
    sims = sorted({str(r.get("profile")) for r in ok if r.get("simulated")})
    real = any(not r.get("simulated") for r in ok)
    if sims and not real:
        return f"SIMULATED (profile{'s' if len(sims) > 1 else ''} {', '.join(sims)})"
    return "real engine" if not sims else "real and SIMULATED series"


def ratios_at_max(rows: list[dict[str, Any]], base: str = "vllm") -> dict[str, float]:
    """arm -> steps/min ratio over `base` at the largest concurrency both ran successfully."""
    by = {(r["arm"], int(r["programs"])): _num(r["steps_per_min"]) for r in _ok(rows)}
    out: dict[str, float] = {}
    for arm in {a for a, _ in by}:
        if arm == base:
            continue
        common = [n for (a, n) in by if a == arm and (base, n) in by and by[(base, n)]]
        if common:
            n = max(common)
            out[arm] = by[(arm, n)] / by[(base, n)]  # type: ignore[operator]
    return out


def ratios_per_level(rows: list[dict[str, Any]], base: str = "vllm") -> dict[str, list[tuple[int, float]]]:
    """arm -> [(programs, steps/min ÷ base's)] at every level both ran successfully."""
    by = {(r["arm"], int(r["programs"])): _num(r["steps_per_min"]) for r in _ok(rows)}
    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for (arm, n), v in sorted(by.items(), key=lambda kv: kv[0][1]):
        b = by.get((base, n))
        if arm != base and b and v is not None:
            out[arm].append((n, v / b))
    return dict(out)


def draw_summary(rows: list[dict[str, Any]], title: str | None = None,
                 key: str | Callable[[dict[str, Any]], str] = "recipe") -> Figure:
    """The figure (one row of four panels per group of rows; groups by `key`, a row field or a function)."""
    rows = list(rows)
    if not _ok(rows):
        raise ValueError("nothing to plot: no successful points in the given results")
    keyf = key if callable(key) else (lambda r: str(r.get(key) or ""))  # type: ignore[arg-type]
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[keyf(r)].append(r)
    names = [g for g in groups if _ok(groups[g])]
    tag = sim_tag(rows)
    mixed = tag == "real and SIMULATED series"
    fig, axes = plt.subplots(len(names), 4, figsize=(20, 4.5 * len(names)), squeeze=False)
    for i, name in enumerate(names):
        _draw_group(axes[i], groups[name], name, row_tag=sim_tag(groups[name]) if mixed else None)
    main = title or "ThunderAgent vs vLLM"
    if tag.startswith("SIMULATED") and "SIMULATED" not in main:
        main += f" — {tag}"
    elif mixed and "SIMULATED" not in main:
        main += " — includes SIMULATED series"
    fig.suptitle(main, fontsize=13, fontweight="bold", y=1 - 0.12 / (4.5 * len(names)))
    # one legend for the figure (every panel draws the arms in the same styles), under the title
    handles, labels = axes[0][0].get_legend_handles_labels()
    seen: dict[str, Any] = {}
    for ax in axes[:, 0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen), loc="upper center", ncol=len(seen), fontsize=10,
               frameon=False, bbox_to_anchor=(0.5, 1 - 0.42 / (4.5 * len(names))))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.75 / (4.5 * len(names))))
    return fig


def plot_summary(rows: list[dict[str, Any]], out: str | Path, title: str | None = None,
                 key: str | Callable[[dict[str, Any]], str] = "recipe") -> Path:
    """Draw the figure and save it to `out` (PNG/SVG/PDF by suffix). Returns the path."""
    fig = draw_summary(rows, title, key)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


def _series_label(arm: str, simulated: bool, mixed: bool) -> str:
    base = _style(arm)["label"]
    return f"{base} ({'simulated' if simulated else 'real'})" if mixed else base


def _draw_group(ax_row: Any, rows: list[dict[str, Any]], name: str, row_tag: str | None) -> None:
    ok = _ok(rows)
    mixed_here = len({bool(r.get("simulated")) for r in ok}) > 1
    ax_tp, ax_ratio, ax_hit, ax_lat = ax_row
    present = {r["arm"] for r in ok}
    arms = [a for a in ARM_ORDER if a in present] + sorted(present - set(ARM_ORDER))
    for arm in arms:
        st = _style(arm)
        for simulated in (True, False):
            pts = sorted((r for r in ok if r["arm"] == arm and bool(r.get("simulated")) == simulated),
                         key=lambda r: int(r["programs"]))
            if not pts:
                continue
            kw = dict(color=st["color"], marker=st["marker"], ls=st["ls"] if simulated or not mixed_here else "-",
                      lw=st["lw"], ms=st["ms"], mfc=st["mfc"] or st["color"], mew=1.6,
                      label=_series_label(arm, simulated, mixed_here))
            x = [int(r["programs"]) for r in pts]
            ax_tp.plot(x, [_num(r["steps_per_min"]) for r in pts], **kw)
            lo = [_num(r.get("ci_low")) for r in pts]
            hi = [_num(r.get("ci_high")) for r in pts]
            if all(v is not None for v in lo + hi):
                ax_tp.fill_between(x, lo, hi, color=st["color"], alpha=0.15, lw=0)  # type: ignore[arg-type]
            blo = [_num(r.get("steps_per_min_band_low")) for r in pts]
            bhi = [_num(r.get("steps_per_min_band_high")) for r in pts]
            if all(v is not None for v in blo + bhi):  # prediction band over the input ranges (--bands)
                for edge in (blo, bhi):  # its edges only: filled, two arms' bands would hide the lines
                    ax_tp.plot(x, edge, color=st["color"], ls=(0, (2, 2)), lw=1.0, alpha=0.8)
            hit = [_num(r.get("prefix_hit_rate")) for r in pts]
            if any(h is not None for h in hit):
                ax_hit.plot(x, [100 * h if h is not None else math.nan for h in hit], **kw)
            p50 = [_num(r.get("p50_step_latency_s")) for r in pts]
            p95 = [_num(r.get("p95_step_latency_s")) for r in pts]
            ax_lat.plot(x, [v if v is not None else math.nan for v in p50], **kw)
            if any(v is not None for v in p95):
                ax_lat.plot(x, [v if v is not None else math.nan for v in p95], color=st["color"], ls=":",
                            lw=1.3, marker=st["marker"], ms=max(3, st["ms"] - 3), mfc="none", alpha=0.85)
    _draw_ratios(ax_ratio, ok, arms)
    xs = sorted({int(r["programs"]) for r in ok})
    for ax in ax_row:
        ax.set_xticks(xs)
        ax.set_xlabel("parallel workflows (agent programs in flight)")
        ax.grid(True, alpha=0.3)
        span = (max(xs) - min(xs)) or max(xs)
        ax.set_xlim(min(xs) - span * 0.06, max(xs) + span * 0.06)
    ymax = max(max(_num(r.get("ci_high")) or 0.0, _num(r.get("steps_per_min_band_high")) or 0.0,
                   _num(r["steps_per_min"]) or 0.0) for r in ok) or 1.0
    ax_tp.set_ylim(0, ymax * 1.08)
    ax_tp.set_ylabel("steps / min")
    banded = any(r.get("steps_per_min_band_low") is not None for r in ok)
    head = f"{name} ({row_tag})" if row_tag else name
    ax_tp.set_title(f"{head}: throughput\n(shaded: 95% CI" + ("; thin dashed: input-range band" if banded else "")
                    + ")", fontsize=10.5)
    ax_hit.set_ylabel("prefix-cache hit rate (%)")
    ax_hit.set_ylim(0, 105)
    ax_hit.set_title(f"{head}: prefix-cache hit rate in the window", fontsize=10.5)
    ax_lat.set_ylabel("per-step latency (s)")
    ax_lat.set_ylim(bottom=0)
    ax_lat.set_title(f"{head}: per-step latency\n(arrival to last token)", fontsize=10.5)
    from matplotlib.lines import Line2D

    ax_lat.legend(handles=[Line2D([], [], color="black", lw=2, label="p50"),
                           Line2D([], [], color="black", lw=1.3, ls=":", label="p95")],
                  fontsize=8.5, loc="upper left", framealpha=0.9)
    ax_ratio.set_title(f"{head}: ratio to vLLM per level\n(whiskers: input-range band)"
                       if any(r.get("ratio_band_low") is not None for r in ok) else
                       f"{head}: ratio to vLLM per level", fontsize=10.5)


def _draw_ratios(ax: Any, ok: list[dict[str, Any]], arms: list[str]) -> None:
    """Each arm's steps/min ÷ vLLM's at every level (1 = no gain), with the --bands ratio band as whiskers
    and the ThunderAgent value written next to each point."""
    per = ratios_per_level(ok)
    ax.axhline(1.0, color=ARM_STYLE["vllm"]["color"], lw=1.5, ls="-", alpha=0.8)
    top = 1.0
    for arm in arms:
        if arm not in per or arm == "bound":  # the bound's ratio is in the throughput panel; here it would
            continue  # set the scale and flatten the arms being compared
        st = _style(arm)
        x = [n for n, _ in per[arm]]
        y = [v for _, v in per[arm]]
        top = max(top, *y)
        ax.plot(x, y, color=st["color"], marker=st["marker"], ls=st["ls"], lw=st["lw"], ms=st["ms"],
                mfc=st["mfc"] or st["color"], mew=1.6)
        band = {int(r["programs"]): (_num(r.get("ratio_band_low")), _num(r.get("ratio_band_high")))
                for r in ok if r["arm"] == arm}
        for n, v in per[arm]:
            lo, hi = band.get(n, (None, None))
            if lo is not None and hi is not None:
                ax.errorbar([n], [v], yerr=[[max(0.0, v - lo)], [max(0.0, hi - v)]], color=st["color"],
                            capsize=4, lw=1.2, alpha=0.7)
                top = max(top, hi)
            if arm == "thunderagent":
                ax.annotate(f"{v:.2f}×", xy=(n, v), xytext=(6, 6), textcoords="offset points", fontsize=9,
                            fontweight="bold", color=st["color"])
    ax.set_ylim(0, top * 1.15)
    ax.set_ylabel("steps/min ÷ vLLM's (vLLM = 1)")


def draw_timeline(run_dirs: Iterable[str | Path], ax: Any = None, bin_s: float = 60.0,
                  window: tuple[float, float] | None = None) -> Any:
    """Steps/min over time (bins of `bin_s`) of single run directories (steps.jsonl or steps.jsonl.gz), one
    line per run, in its arm's colour and style; `window` (minutes) is shaded. Returns the axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 3.8))
    profiles = set()
    for d in run_dirs:
        run = RunData.load(d)
        m = run.manifest
        st = _style(m.arm)
        tl = timeline(run, bin_s)
        ax.plot([t for t, _ in tl], [v for _, v in tl], color=st["color"], ls=st["ls"], lw=1.4,
                label=f"{st['label']} × {m.programs}")
        if m.simulated:
            profiles.add(str(m.profile))
    if window is not None:
        ax.axvspan(window[0], window[1], color="0.85", alpha=0.5, lw=0, label="steps/min window")
    ax.set_xlabel("minutes since the run's start" + (" (simulated time)" if profiles else ""))
    ax.set_ylabel("steps / min")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    if profiles:
        ax.set_title(f"throughput over time — SIMULATED (profile {', '.join(sorted(profiles))})", fontsize=10.5)
    return ax
