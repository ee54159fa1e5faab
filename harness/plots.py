"""The comparison figure: steps/min vs parallel workflows (one line per arm, ThunderAgent/vLLM ratio at the
largest concurrency), prefix-cache hit rate, and per-step latency.

Input is the summary rows of harness/reproduce.py (one dict per arm x concurrency, the rows of
summary.json). Simulated series are labelled "simulated" with their profile in the legend and the title;
real and simulated series are never drawn under one unlabelled title. One row of panels per recipe.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

ARM_STYLE: dict[str, dict[str, Any]] = {
    "vllm": {"label": "vLLM", "color": "#d62728", "marker": "o", "ls": "-", "lw": 2.6},
    "continuum": {"label": "Continuum-style", "color": "#ff7f0e", "marker": "s", "ls": "--", "lw": 1.8},
    "thunderagent": {"label": "ThunderAgent", "color": "#1f77b4", "marker": "^", "ls": "-", "lw": 2.2},
    "bound": {"label": "vLLM, KV limit lifted (bound)", "color": "#7f7f7f", "marker": ".", "ls": ":", "lw": 1.4},
}
ARM_ORDER = ("vllm", "continuum", "thunderagent")  # drawing order: dashed Continuum stays visible over vLLM


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


def _label(arm: str, simulated: bool, profile: str | None) -> str:
    base = ARM_STYLE.get(arm, {"label": arm})["label"]
    return f"{base} (simulated, {profile})" if simulated else f"{base} (real)"


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


def plot_summary(rows: list[dict[str, Any]], out: str | Path, title: str | None = None) -> Path:
    """Draw the three panels per recipe and save to `out` (PNG/SVG/PDF by suffix). Returns the path."""
    rows = list(rows)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[str(r.get("recipe") or "")].append(r)
    if not _ok(rows):
        raise ValueError("nothing to plot: no successful points in the given results")
    names = [g for g in groups if _ok(groups[g])]
    fig, axes = plt.subplots(len(names), 3, figsize=(16, 4.6 * len(names)), squeeze=False)
    for i, name in enumerate(names):
        _draw_recipe(axes[i], groups[name], name)
    if title:
        fig.suptitle(title, fontsize=13, fontweight="bold")
    fig.tight_layout(rect=(0, 0, 1, 0.96) if title else None)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


def _draw_recipe(ax_row: Any, rows: list[dict[str, Any]], recipe: str) -> None:
    ok = _ok(rows)
    sim = sorted({str(r.get("profile")) for r in ok if r.get("simulated")})
    real = any(not r.get("simulated") for r in ok)
    tag = ("SIMULATED (" + ", ".join(sim) + ")") if sim and not real else ("real engine" if not sim else
                                                                          "real + SIMULATED series")
    ax_tp, ax_hit, ax_lat = ax_row
    arms = [a for a in ARM_ORDER if any(r["arm"] == a for r in ok)] + sorted(
        {r["arm"] for r in ok} - set(ARM_ORDER))
    for arm in arms:
        for simulated in (True, False):
            pts = sorted((r for r in ok if r["arm"] == arm and bool(r.get("simulated")) == simulated),
                         key=lambda r: int(r["programs"]))
            if not pts:
                continue
            st = ARM_STYLE.get(arm, {"color": None, "marker": "x"})
            label = _label(arm, simulated, pts[0].get("profile"))
            ls = st.get("ls", "-") if simulated is False or not real else ":"
            x = [int(r["programs"]) for r in pts]
            y = [_num(r["steps_per_min"]) for r in pts]
            lo = [_num(r.get("ci_low")) for r in pts]
            hi = [_num(r.get("ci_high")) for r in pts]
            kw = dict(color=st.get("color"), marker=st.get("marker"), ls=ls, lw=st.get("lw", 2), ms=6, label=label)
            ax_tp.plot(x, y, **kw)
            if all(v is not None for v in lo + hi):
                ax_tp.fill_between(x, lo, hi, color=st.get("color"), alpha=0.15, lw=0)  # type: ignore[arg-type]
            blo = [_num(r.get("steps_per_min_band_low")) for r in pts]
            bhi = [_num(r.get("steps_per_min_band_high")) for r in pts]
            if all(v is not None for v in blo + bhi):  # prediction band over the input ranges (--bands)
                ax_tp.fill_between(x, blo, bhi, color=st.get("color"), alpha=0.12, lw=0.8, ls="--",  # type: ignore[arg-type]
                                   edgecolor=st.get("color"), hatch="//")
            hit = [_num(r.get("prefix_hit_rate")) for r in pts]
            if any(h is not None for h in hit):
                ax_hit.plot(x, [100 * h if h is not None else math.nan for h in hit], **kw)
            p50 = [_num(r.get("p50_step_latency_s")) for r in pts]
            p95 = [_num(r.get("p95_step_latency_s")) for r in pts]
            ax_lat.plot(x, [v if v is not None else math.nan for v in p50], **kw)
            if any(v is not None for v in p95):
                ax_lat.plot(x, [v if v is not None else math.nan for v in p95], color=st.get("color"),
                            ls=":", lw=1.5, marker=st.get("marker"), ms=4, alpha=0.85)
    # ratio labels at the largest concurrency, spread apart vertically so close values stay readable
    rat = ratios_at_max(ok)
    top = max(int(r["programs"]) for r in ok)
    labels = []
    for arm, ratio in rat.items():
        pt = [r for r in ok if r["arm"] == arm and int(r["programs"]) == top]
        if pt:
            lo, hi = _num(pt[0].get("ratio_band_low")), _num(pt[0].get("ratio_band_high"))
            band = f" [{lo:.2f}–{hi:.2f}]" if lo is not None and hi is not None else ""
            labels.append((_num(pt[0]["steps_per_min"]) or 0.0, arm, f"{ratio:.2f}×{band}"))
    ymax = max(max(_num(r.get("ci_high")) or 0.0, _num(r.get("steps_per_min_band_high")) or 0.0,
                   _num(r["steps_per_min"]) or 0.0) for r in ok) or 1.0
    gap = 0.085 * ymax
    placed: list[float] = []
    for y, arm, ratio in sorted(labels):
        ty = max([y] + [p + gap for p in placed])
        placed.append(ty)
        ax_tp.annotate(f"  {ratio} vLLM", xy=(top, y), xytext=(top, ty), textcoords="data",
                       xycoords="data", va="center", ha="left", fontsize=9.5, fontweight="bold",
                       color=ARM_STYLE.get(arm, {}).get("color", "black"),
                       bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))
    xs = sorted({int(r["programs"]) for r in ok})
    for ax in (ax_tp, ax_hit, ax_lat):
        ax.set_xticks(xs)
        ax.set_xlabel("parallel workflows (agent programs in flight)")
        ax.grid(True, alpha=0.3)
        span = (max(xs) - min(xs)) or max(xs)
        ax.set_xlim(min(xs) - span * 0.06, max(xs) + span * (0.3 if ax is ax_tp else 0.06))
    ax_tp.set_ylim(0, max(ymax, max(placed, default=0.0) + gap) * 1.08)
    ax_tp.set_ylabel("steps / min")
    banded = any(r.get("steps_per_min_band_low") is not None for r in ok)
    ax_tp.set_title(f"{recipe} — {tag}\nthroughput (band: 95% CI"
                    + ("; hatched: input ranges" if banded else "") + ")", fontsize=10.5)
    ax_tp.legend(fontsize=8, loc="lower left", framealpha=0.9)
    ax_hit.set_ylabel("prefix-cache hit rate (%)")
    ax_hit.set_ylim(0, 105)
    ax_hit.set_title(f"{recipe} — {tag}\nprefix-cache hit rate in the window", fontsize=10.5)
    ax_lat.set_ylabel("per-step latency (s)")
    ax_lat.set_ylim(bottom=0)
    ax_lat.set_title(f"{recipe} — {tag}\nper-step latency (arrival to last token)", fontsize=10.5)
    from matplotlib.lines import Line2D

    ax_lat.legend(handles=[Line2D([], [], color="black", lw=2, label="p50"),
                           Line2D([], [], color="black", lw=1.5, ls=":", label="p95")],
                  fontsize=8, loc="upper left", framealpha=0.9)
