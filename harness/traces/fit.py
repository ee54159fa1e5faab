"""Fit the statistical workload model (harness.workload.WorkloadParams) to recorded trajectories.

What is fitted, and how (maximum likelihood throughout; numpy only):
  * turns — lognormal of the number of LLM calls, rounded and clipped to [min, cap] as the sampler does.
    Counts are interval data (n stands for X in [n - 0.5, n + 0.5)); the lowest count is left-censored
    (X < min + 0.5) and a run that the step cap ended is right-censored (X >= n - 0.5): it says only that
    the agent would have gone on. A run is censored when its trace says so (`censored`, from the agent's
    exit status) or when it reached `cap`. Ignoring this biases the median low exactly where the knee is
    decided (a large share of OpenHands runs end at the 50-call cap).
  * output_tokens, observation_tokens — lognormal per call; a point mass at the smallest/largest value
    (the agent's truncation) is treated as censored there; min/max are the observed extremes.
  * tool_time — two-component lognormal mixture (quick edits/reads vs commands), EM on log seconds; the
    last call's tool time is not used (the program ends there), zero times (unknown) are left out.
  * first_user — system prompt tokens (the shared prefix) = the median over traces; the instance message
    = `template_tokens` (given: the instruction around the issue) + a lognormal issue length.
  * prep_time — the mean and log-spread of environment preparation at `programs` parallel workflows.
Where the traces do not carry an input (no tool times, no preparation times), it is taken from a base
parameter file and its source says so. The result names its source (the trace files) for every section.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from harness.traces.format import TraceError
from harness.workload import LogNormal, PrepTime, ToolTime, Trajectory, WorkloadParams

_SQRT2 = math.sqrt(2.0)
_erf = np.frompyfunc(math.erf, 1, 1)


def _norm_cdf(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + _erf(np.asarray(z, dtype=float) / _SQRT2).astype(float))


def _log_cdf(z: np.ndarray) -> np.ndarray:
    return np.log(np.clip(_norm_cdf(z), 1e-300, 1.0))


def _log_sf(z: np.ndarray) -> np.ndarray:
    return np.log(np.clip(_norm_cdf(-np.asarray(z, dtype=float)), 1e-300, 1.0))


def nelder_mead(f: Callable[[np.ndarray], float], x0: Sequence[float], step: float = 0.3,
                iters: int = 600, tol: float = 1e-9) -> np.ndarray:
    """Minimise f from x0 (the standard Nelder-Mead simplex; enough for these 2-parameter fits)."""
    n = len(x0)
    pts = [np.asarray(x0, float)] + [np.asarray(x0, float) + step * np.eye(n)[i] for i in range(n)]
    vals = [f(p) for p in pts]
    for _ in range(iters):
        order = np.argsort(vals)
        pts, vals = [pts[i] for i in order], [vals[i] for i in order]
        if abs(vals[-1] - vals[0]) < tol:
            break
        c = np.mean(pts[:-1], axis=0)
        r = c + (c - pts[-1])
        fr = f(r)
        if fr < vals[0]:
            e = c + 2 * (c - pts[-1])
            fe = f(e)
            pts[-1], vals[-1] = (e, fe) if fe < fr else (r, fr)
        elif fr < vals[-2]:
            pts[-1], vals[-1] = r, fr
        else:
            k = c + 0.5 * (pts[-1] - c)
            fk = f(k)
            if fk < vals[-1]:
                pts[-1], vals[-1] = k, fk
            else:
                pts = [pts[0]] + [pts[0] + 0.5 * (p - pts[0]) for p in pts[1:]]
                vals = [vals[0]] + [f(p) for p in pts[1:]]
    return pts[int(np.argmin(vals))]


def fit_censored_lognormal(x: np.ndarray, *, lo: float | None = None, hi: float | None = None
                           ) -> tuple[float, float]:
    """(mu, sigma) of a lognormal from values x where x <= lo are left-censored at lo and x >= hi
    right-censored at hi (None: no censoring on that side)."""
    x = np.asarray(x, dtype=float)
    left = x <= lo if lo is not None else np.zeros(len(x), bool)
    right = x >= hi if hi is not None else np.zeros(len(x), bool)
    inner = np.log(x[~left & ~right])
    n, s1, s2 = len(inner), float(inner.sum()), float((inner ** 2).sum())
    nl, nr = int(left.sum()), int(right.sum())
    if n < 2:
        raise TraceError(f"too few uncensored values ({n}) to fit a distribution")

    def nll(p: np.ndarray) -> float:
        mu, ls = p
        s = math.exp(ls)
        v = n * ls + (s2 - 2 * mu * s1 + n * mu * mu) / (2 * s * s)
        if nl:
            v -= nl * float(_log_cdf(np.array([(math.log(lo) - mu) / s]))[0])  # type: ignore[arg-type]
        if nr:
            v -= nr * float(_log_sf(np.array([(math.log(hi) - mu) / s]))[0])  # type: ignore[arg-type]
        return v

    m0 = s1 / n
    sd0 = math.sqrt(max(s2 / n - m0 * m0, 1e-6))
    mu, ls = nelder_mead(nll, [m0, math.log(sd0)])
    return float(mu), float(math.exp(ls))


def fit_turns(counts: np.ndarray, censored: np.ndarray, lo: int) -> tuple[float, float]:
    """(mu, sigma) of the lognormal behind rounded call counts; `censored[i]`: the run was cut at counts[i]."""
    counts = np.asarray(counts, dtype=float)
    censored = np.asarray(censored, dtype=bool)
    keys = sorted({(int(c), bool(z)) for c, z in zip(counts, censored)})
    weight = np.array([np.sum((counts == c) & (censored == z)) for c, z in keys], dtype=float)
    kc = np.array([c for c, _ in keys], dtype=float)
    kz = np.array([z for _, z in keys], dtype=bool)
    a = np.log(np.maximum(kc - 0.5, 1e-9))  # lower edge
    b = np.log(kc + 0.5)  # upper edge
    left = (kc <= lo) & ~kz

    def nll(p: np.ndarray) -> float:
        mu, ls = p
        s = math.exp(ls)
        za, zb = (a - mu) / s, (b - mu) / s
        ll = np.where(kz, _log_sf(za), np.where(left, _log_cdf(zb),
                                                 np.log(np.clip(_norm_cdf(zb) - _norm_cdf(za), 1e-300, 1.0))))
        return -float(np.sum(weight * ll))

    lx = np.log(counts)
    mu, ls = nelder_mead(nll, [float(lx.mean()), math.log(max(float(lx.std()), 0.05))])
    return float(mu), float(math.exp(ls))


def fit_mixture(t: np.ndarray, iters: int = 500) -> tuple[LogNormal, LogNormal, float]:
    """Two-component lognormal mixture by EM on log(t): (short, long, P(long))."""
    y = np.log(np.asarray(t, dtype=float))
    if len(y) < 10:
        raise TraceError(f"too few tool times ({len(y)}) to fit a mixture")
    split = np.median(y)
    m = np.array([y[y <= split].mean(), y[y > split].mean() if np.any(y > split) else split + 1.0])
    s = np.array([max(y.std(), 0.1)] * 2)
    w = np.array([0.5, 0.5])
    for _ in range(iters):
        pdf = w / s * np.exp(-0.5 * ((y[:, None] - m) / s) ** 2)
        r = pdf / np.maximum(pdf.sum(axis=1, keepdims=True), 1e-300)
        nk = r.sum(axis=0)
        if np.any(nk < 1e-6):
            break
        m_new = (r * y[:, None]).sum(axis=0) / nk
        s = np.sqrt(np.maximum((r * (y[:, None] - m_new) ** 2).sum(axis=0) / nk, 1e-4))
        w = nk / len(y)
        if np.allclose(m_new, m, atol=1e-9):
            m = m_new
            break
        m = m_new
    lo, hi = (0, 1) if m[0] <= m[1] else (1, 0)
    return (LogNormal(float(math.exp(m[lo])), float(s[lo])), LogNormal(float(math.exp(m[hi])), float(s[hi])),
            float(w[hi]))


def _mass_at(x: np.ndarray, v: float) -> bool:
    k = int(np.sum(x == v))
    return k >= 2 and k >= 0.005 * len(x)


def _lognormal_of(x: np.ndarray) -> tuple[LogNormal, str]:
    x = np.maximum(np.asarray(x, dtype=float), 1.0)
    lo, hi = float(x.min()), float(x.max())
    clo, chi = _mass_at(x, lo), _mass_at(x, hi)
    mu, s = fit_censored_lognormal(x, lo=lo if clo else None, hi=hi if chi else None)
    note = "; ".join(f"{int(np.sum(x == v))} values censored at {'min' if v == lo else 'max'} {_n(v)}"
                     for v, c in ((lo, clo), (hi, chi)) if c)
    return LogNormal(round(math.exp(mu), 3), round(s, 4), lo, hi), note


def median_ci(d: LogNormal, n: int) -> str:
    """The 95% sampling interval of a fitted median, counting one sample per trajectory (calls of one
    program are not independent in real traces, so per-call counts would overstate the precision)."""
    half = 1.96 * d.sigma / math.sqrt(max(n, 1))
    return f"median 95% CI {d.median * math.exp(-half):.4g}-{d.median * math.exp(half):.4g} (n = {n} trajectories)"


@dataclass
class FitReport:
    params: WorkloadParams
    trajectories: int
    censored: int
    cap: int | None


def fit_params(trajs: Sequence[Trajectory], *, name: str, source: str, cap: int | None = None,
               template_tokens: int = 0, programs: int = 1, base: WorkloadParams | None = None) -> FitReport:
    """Fit WorkloadParams to `trajs`. `cap`: the agent's step cap (runs reaching it are censored; None =
    only runs marked censored). `base`: where inputs the traces lack come from."""
    if len(trajs) < 5:
        raise TraceError(f"{len(trajs)} trajectories: need at least 5 to fit a workload")
    counts = np.array([len(t.turns) for t in trajs])
    cens = np.array([t.censored or (cap is not None and len(t.turns) >= cap) for t in trajs])
    if int((~cens).sum()) < 3:
        raise TraceError(f"{int(cens.sum())} of {len(trajs)} runs were cut by the step cap: too few finished runs "
                         "to fit how long runs are (the median is not identifiable)")
    lo = int(counts.min())
    mu, s = fit_turns(counts, cens, lo)
    top = int(cap if cap is not None else counts.max())
    turns = LogNormal(round(math.exp(mu), 3), round(s, 4), float(lo), float(top))
    outs = np.concatenate([[x.output_tokens for x in t.turns] for t in trajs])
    obs = np.concatenate([[x.observation_tokens for x in t.turns[:-1]] for t in trajs if len(t.turns) > 1])
    out_ln, out_note = _lognormal_of(outs)
    if len(obs) < 2:
        raise TraceError("no observations in the traces (every trajectory has a single call)")
    obs_ln, obs_note = _lognormal_of(obs)
    sys_t = int(np.median([t.system_tokens for t in trajs]))
    issue = np.array([t.first_user_tokens - template_tokens for t in trajs], dtype=float)
    if np.any(issue < 1):
        raise TraceError(f"template_tokens {template_tokens} is larger than a trace's first user message "
                         f"({int(min(t.first_user_tokens for t in trajs))} tokens)")
    issue_ln, _ = _lognormal_of(issue)
    tools = np.concatenate([[x.tool_time_s for x in t.turns[:-1]] for t in trajs if len(t.turns) > 1])
    tools = tools[tools > 0]
    sources = {}
    where = f"fit of {len(trajs)} trajectories from {source}"
    if len(tools) >= 10:
        short, long_, p = fit_mixture(np.maximum(tools, 1e-3))
        tmax = float(max(tools.max(), base.tool_time.max if base else 0.0))
        tool_time = ToolTime(LogNormal(round(short.median, 4), round(short.sigma, 4)),
                             LogNormal(round(long_.median, 4), round(long_.sigma, 4)), round(p, 4), tmax)
        sources["tool_time"] = f"{where}: 2-component lognormal mixture (EM) over {len(tools)} tool times"
    elif base is not None:
        tool_time = base.tool_time
        sources["tool_time"] = f"not in the traces ({len(tools)} tool times): from {base.name}: {base.sources.get('tool_time', '')}"
    else:
        raise TraceError("the traces carry fewer than 10 tool times: give a base parameter file for tool times")
    preps = np.array([t.prep_time_s for t in trajs if t.prep_time_s > 0])
    if len(preps) >= 2:
        ls = np.log(preps)
        prep = PrepTime((programs,), (round(float(preps.mean()), 3),), round(float(ls.std()), 4))
        sources["prep_time"] = f"{where}: mean and log-spread of {len(preps)} preparation times at {programs} programs"
    elif base is not None:
        prep = base.prep_time
        sources["prep_time"] = f"not in the traces: from {base.name}: {base.sources.get('prep_time', '')}"
    else:
        prep = PrepTime((programs,), (0.0,), 0.0)
        sources["prep_time"] = "not in the traces: no preparation time"
    nc = int(cens.sum())
    sources.update({
        "system": f"{where}: median shared-prefix tokens",
        "first_user.source_template": f"given: {template_tokens} tokens of instruction around the issue",
        "first_user.source_issue": f"{where}: lognormal (ML) of first-user tokens minus the template",
        "turns": f"{where}: lognormal (ML), counts as intervals, {nc} of {len(trajs)} runs right-censored"
                 + (f" at the {cap}-call cap" if cap is not None else " (marked in the traces)")
                 + f"; {median_ci(turns, len(trajs))}",
        "output_tokens": f"{where}: lognormal (ML) over {len(outs)} calls" + (f"; {out_note}" if out_note else "")
                         + f"; {median_ci(out_ln, len(trajs))}",
        "observation_tokens": f"{where}: lognormal (ML) over {len(obs)} observations"
                              + (f"; {obs_note}" if obs_note else "") + f"; {median_ci(obs_ln, len(trajs))}",
    })
    params = WorkloadParams(
        name=name, description=f"fitted to {len(trajs)} recorded trajectories ({source})",
        system_tokens=sys_t, first_user_template_tokens=int(template_tokens), issue_tokens=issue_ln,
        turns=turns, output_tokens=out_ln, observation_tokens=obs_ln, tool_time=tool_time, prep_time=prep,
        sources=sources)
    return FitReport(params, len(trajs), nc, cap)


# ------------------------------------------------------------------------------------------ TOML output

def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def _n(x: float) -> str:
    """A number as TOML, exactly (repr round-trips a float)."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _ln(d: LogNormal) -> str:
    parts = [f"median = {_n(d.median)}", f"sigma = {_n(d.sigma)}"]
    if d.min:
        parts.append(f"min = {_n(d.min)}")
    if math.isfinite(d.max):
        parts.append(f"max = {_n(d.max)}")
    return "{ " + ", ".join(parts) + " }"


def params_toml(p: WorkloadParams) -> str:
    """The TOML text of harness/workloads/*.toml for `p` (readable by parse_workload_params)."""
    s = p.sources
    lines = [f"# Fitted by `thunderbench workload fit`: {p.description}", f"name = {_q(p.name)}",
             f"description = {_q(p.description)}", "",
             "[system]", f"tokens = {p.system_tokens}", f"source = {_q(s['system'])}", "",
             "[first_user]", f"template_tokens = {p.first_user_template_tokens}",
             f"source_template = {_q(s['first_user.source_template'])}", f"issue = {_ln(p.issue_tokens)}",
             f"source_issue = {_q(s['first_user.source_issue'])}", ""]
    for key, d in (("turns", p.turns), ("output_tokens", p.output_tokens), ("observation_tokens", p.observation_tokens)):
        lines += [f"[{key}]", f"median = {_n(d.median)}", f"sigma = {_n(d.sigma)}", f"min = {_n(d.min)}", f"max = {_n(d.max)}",
                  f"source = {_q(s[key])}", ""]
    tt = p.tool_time
    lines += ["[tool_time]", f"short = {_ln(tt.short)}", f"long = {_ln(tt.long)}",
              f"long_probability = {_n(tt.long_probability)}", f"max = {_n(tt.max)}", f"source = {_q(s['tool_time'])}", "",
              "[prep_time]", f"programs = [{', '.join(str(x) for x in p.prep_time.programs)}]",
              f"mean_s = [{', '.join(f'{_n(x)}' for x in p.prep_time.mean_s)}]", f"sigma = {_n(p.prep_time.sigma)}",
              f"source = {_q(s['prep_time'])}", ""]
    return "\n".join(lines)


def write_params(path: str | os.PathLike[str], p: WorkloadParams) -> Path:
    """Write atomically, after checking the text parses back to the same parameters."""
    import tempfile
    import tomllib

    from harness.workload import parse_workload_params

    text = params_toml(p)
    parse_workload_params(tomllib.loads(text), str(path))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
