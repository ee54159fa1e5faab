"""What a workload asks of the KV cache: summary figures of trajectories (recorded, or sampled from a
parameter file) and a figure of context growth.

  deepest context   the last call's prompt + output per program (p50, p95, max): the most KV one program
                    ever holds;
  mean context      the non-shared context (prompt + output - shared prefix) averaged over calls;
  held during tools the same, weighted by the tool time that follows each call: what a program keeps
                    resident while it is not computing (what program-aware scheduling decides about);
  growth per turn   output + observation tokens added per call (mean, p50).
Programs x mean context ~ the KV tokens a concurrency level needs, which is where plain vLLM's curve breaks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from harness.workload import Trajectory


def summarize(trajs: Sequence[Trajectory], cap: int | None = None) -> dict[str, Any]:
    if not trajs:
        return {}
    turns = np.array([len(t.turns) for t in trajs])
    deepest = np.array([t.prompt_tokens(len(t.turns) - 1) + t.turns[-1].output_tokens for t in trajs])
    ctx, held_num, held_den, growth = [], 0.0, 0.0, []
    for t in trajs:
        for k, x in enumerate(t.turns):
            c = t.prompt_tokens(k) + x.output_tokens - t.system_tokens
            ctx.append(c)
            if k + 1 < len(t.turns):
                held_num += c * x.tool_time_s
                held_den += x.tool_time_s
                growth.append(x.output_tokens + x.observation_tokens)
    at_cap = np.array([t.censored or (cap is not None and len(t.turns) >= cap) for t in trajs])
    out = {
        "trajectories": len(trajs),
        "calls": int(turns.sum()),
        "turns_mean": round(float(turns.mean()), 2),
        "turns_p50": float(np.median(turns)),
        "censored_share": round(float(at_cap.mean()), 3),
        "shared_prefix_tokens": int(np.median([t.system_tokens for t in trajs])),
        "first_user_tokens_p50": float(np.median([t.first_user_tokens for t in trajs])),
        "deepest_context_p50": float(np.median(deepest)),
        "deepest_context_p95": float(np.percentile(deepest, 95)),
        "deepest_context_max": int(deepest.max()),
        "mean_context_per_call": round(float(np.mean(ctx)), 1),
        "mean_context_held_during_tools": round(held_num / held_den, 1) if held_den > 0 else None,
        "growth_per_turn_mean": round(float(np.mean(growth)), 1) if growth else 0.0,
        "growth_per_turn_p50": float(np.median(growth)) if growth else 0.0,
        "output_tokens_mean": round(float(np.mean([x.output_tokens for t in trajs for x in t.turns])), 1),
        "tool_time_mean_s": round(float(np.mean([x.tool_time_s for t in trajs for x in t.turns[:-1]] or [0.0])), 3),
        "prep_time_mean_s": round(float(np.mean([t.prep_time_s for t in trajs])), 2),
    }
    return out


def plot_context(trajs: Sequence[Trajectory], path: str | Path, title: str) -> Path:
    """Context (prompt tokens) by call index, median and 10-90% band, and the deepest-context histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(t.turns) for t in trajs)
    rows = np.full((len(trajs), n), np.nan)
    for i, t in enumerate(trajs):
        rows[i, :len(t.turns)] = [t.prompt_tokens(k) for k in range(len(t.turns))]
    live = np.sum(~np.isnan(rows), axis=0)
    keep = live >= max(3, 0.05 * len(trajs))
    x = np.arange(1, n + 1)[keep]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.fill_between(x, np.nanpercentile(rows[:, keep], 10, axis=0), np.nanpercentile(rows[:, keep], 90, axis=0),
                   alpha=0.3, label="10-90% of programs")
    a.plot(x, np.nanmedian(rows[:, keep], axis=0), label="median")
    a.set_xlabel("LLM call")
    a.set_ylabel("prompt tokens")
    a.legend()
    a.set_title("context growth")
    deepest = [t.prompt_tokens(len(t.turns) - 1) + t.turns[-1].output_tokens for t in trajs]
    b.hist(deepest, bins=30)
    b.set_xlabel("deepest context per program (tokens)")
    b.set_ylabel("programs")
    b.set_title("deepest context")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
