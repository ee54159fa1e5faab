"""Prediction bands for `thunderbench reproduce --bands` (DES only).

The workload inputs (harness/workloads/<agent>.toml) and the simulator profile's KV capacity each carry a
sourced range (low / central / high). A band is the spread of the answer when those inputs move inside their
ranges together: the central sweep plus a Latin hypercube of `band_points` design points (default 8). In a
Latin hypercube every input's range is cut into `n` equal strata and each stratum is used exactly once, so
every input is spread over its whole range with n points however many inputs there are, and the inputs vary
jointly. That matters here because the knee depends on a product (programs x mean resident context vs KV
tokens): a one-at-a-time design (2k + 1 runs for k inputs) would cost twice as much for 8 inputs and never
combine long observations with many turns and a small cache. A full corner design would take 2^8 = 256 runs.

A design coordinate u in [0, 1] maps to the input piecewise linearly: 0 = its low end, 0.5 = central, 1 = its
high end (harness.workload.WorkloadParams.at; KV capacity between the profile's low/central/high blocks).

Per concurrency level the band of each arm's steps/min and of the ThunderAgent (and Continuum) / vLLM ratio is
[min, max] over the central sweep and the design points. The knee is reported two ways: `knee_kv`, the
programs whose mean non-shared contexts fill the KV capacity (KV tokens - shared prefix) / mean context, and
`knee_sim`, the level at which simulated vLLM's steps/min peaks. Design points run the vllm and thunderagent
arms only (the Continuum-style arm stays in the central sweep).
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape

from harness.errors import ReproduceError
from harness.sim.timing import load_profile
from harness.sweep.inputs import workload_params
from harness.sweep.options import SweepOptions
from harness.sweep.points import des_worker
from harness.sweep.summary import PointResult, summarize
from harness.workload import kv_limited_programs

BAND_ARMS = ("vllm", "thunderagent")
KV_INPUT = "kv_capacity"


def latin_hypercube(names: list[str], n: int, seed: int) -> list[dict[str, float]]:
    """`n` points in [0, 1]^k: each name's range cut into n strata, one random draw per stratum, the strata
    shuffled independently per name (seeded, so a sweep's design is reproducible)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0xBA4D5]))
    cols = {name: (rng.permutation(n) + rng.random(n)) / n for name in names}
    return [{name: round(float(cols[name][i]), 4) for name in names} for i in range(n)]


def _lerp3(u: float, low: float, central: float, high: float) -> float:
    return central + (low - central) * (1 - 2 * u) if u < 0.5 else central + (high - central) * (2 * u - 1)


def band_inputs(opts: SweepOptions) -> tuple[list[str], tuple[int, int, int] | None]:
    """The ranged inputs of the recipe's workload, and the KV blocks range (None when the capacity is fixed:
    a recipe [sim] num_gpu_blocks override, or a profile without a capacity range)."""
    names = [r.path for r in workload_params(opts).ranges]
    kv = None
    if not opts.recipe.sim.num_gpu_blocks:
        lo, c, hi = load_profile(opts.recipe.sim.profile).kv_blocks_range()
        if lo != hi:
            kv = (lo, c, hi)
    return names, kv


def design_options(opts: SweepOptions) -> list[SweepOptions]:
    """One SweepOptions per design point (arms vllm and thunderagent, inputs moved, KV blocks set)."""
    names, kv = band_inputs(opts)
    if not names and kv is None:
        raise ReproduceError(f"--bands: neither the workload nor profile {opts.recipe.sim.profile} carries a "
                             f"range (add low/high to the workload TOML or a [memory] table to the profile)")
    points = latin_hypercube(names + ([KV_INPUT] if kv else []), opts.band_points, opts.seed)
    out = []
    for d in points:
        blocks = int(round(_lerp3(d[KV_INPUT], *kv))) if kv else None
        out.append(dataclasses.replace(opts, design=d, kv_blocks=blocks,
                                       arms=tuple(a for a in BAND_ARMS if a in opts.arms)))
    return out


def knee_kv(opts: SweepOptions) -> float:
    """Programs whose mean non-shared contexts fill the KV capacity of this (central or design) point."""
    prof = load_profile(opts.recipe.sim.profile, num_gpu_blocks=opts.kv_blocks or opts.recipe.sim.num_gpu_blocks
                        or None)
    return kv_limited_programs(workload_params(opts), prof.engine.kv_tokens, samples=1000, seed=opts.seed)


def knee_sim(rows: list[dict[str, Any]]) -> int | None:
    """The level at which simulated vLLM's steps/min is highest (beyond it more programs lower throughput)."""
    pts = [(r["steps_per_min"], int(r["programs"])) for r in rows
           if r["arm"] == "vllm" and r["status"] == "ok" and r.get("steps_per_min") is not None]
    return max(pts)[1] if pts else None


def run_bands(opts: SweepOptions, root: Path, console: Console) -> list[dict[str, Any]]:
    """Simulate every design point at every level (one worker pool for all), into root/bands/dNN/.
    Returns one record per design point: its coordinates, KV blocks, summary rows and knees."""
    designs = design_options(opts)
    jobs: list[tuple[int, str, int, Path]] = []
    for i, dopts in enumerate(designs):
        droot = root / "bands" / f"d{i + 1:02d}"
        for n in opts.levels:
            for arm in dopts.arms:
                (droot / f"{arm}-{n}").mkdir(parents=True)
                jobs.append((i, arm, n, droot / f"{arm}-{n}"))
    jobs.sort(key=lambda j: -j[2])  # biggest points first
    results: dict[tuple[int, str, int], PointResult] = {}
    label = f"{len(designs)} design points x {len(opts.levels)} levels"
    with ProcessPoolExecutor(max_workers=max(1, min(opts.jobs, len(jobs))),
                             mp_context=mp.get_context("spawn")) as ex:
        futs = {ex.submit(des_worker, designs[i], arm, n, pdir): (i, arm, n) for i, arm, n, pdir in jobs}
        with console.status(f"prediction bands: simulating {label} ...") as st:
            try:
                for f in as_completed(futs):
                    results[futs[f]] = f.result()
                    st.update(f"prediction bands: {len(results)}/{len(jobs)} points of {label} done ...")
            except BaseException:
                for f in futs:
                    f.cancel()
                raise
    out = []
    for i, dopts in enumerate(designs):
        droot = root / "bands" / f"d{i + 1:02d}"
        pts = [results[(i, arm, n)] for n in opts.levels for arm in dopts.arms]
        rows = summarize(droot, opts.window, pts, recipe=opts.recipe.name)
        out.append({"design": dopts.design, "kv_blocks": dopts.kv_blocks, "rows": rows,
                    "knee_kv": round(knee_kv(dopts), 1), "knee_sim": knee_sim(rows)})
    failed = sum(r["status"] != "ok" for d in out for r in d["rows"])
    console.print(f"[green]✓[/] prediction bands: {len(designs)} design points simulated"
                  + (f" ([red]{failed} points failed[/])" if failed else ""), highlight=False)
    return out


def _spm(rows: list[dict[str, Any]], arm: str, n: int) -> float | None:
    for r in rows:
        if r["arm"] == arm and int(r["programs"]) == n and r["status"] == "ok":
            v = r.get("steps_per_min")
            return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
    return None


def _span(values: list[float | None]) -> tuple[float | None, float | None]:
    v = [x for x in values if x is not None]
    return (min(v), max(v)) if v else (None, None)


def apply_bands(rows: list[dict[str, Any]], designs: list[dict[str, Any]], opts: SweepOptions) -> dict[str, Any]:
    """Add the band columns to the central rows (in place) and return the summary's `bands` block."""
    central_knee_kv = round(knee_kv(opts), 1)
    kv_knees = [central_knee_kv] + [d["knee_kv"] for d in designs]
    sim_knees = [knee_sim(rows)] + [d["knee_sim"] for d in designs]
    kk, ks = _span(kv_knees), _span([float(k) if k is not None else None for k in sim_knees])
    per_level: dict[str, Any] = {}
    banded = {a for d in designs for r in d["rows"] for a in [r["arm"]]}
    for r in rows:
        arm, n = r["arm"], int(r["programs"])
        if arm not in banded:  # the Continuum-style arm runs in the central sweep only
            continue
        worlds = [rows] + [d["rows"] for d in designs]
        lo, hi = _span([_spm(w, arm, n) for w in worlds])
        r.update(steps_per_min_band_low=lo, steps_per_min_band_high=hi, band_points=len(designs),
                 knee_kv=central_knee_kv, knee_kv_low=kk[0], knee_kv_high=kk[1], knee_sim=sim_knees[0],
                 knee_sim_low=ks[0], knee_sim_high=ks[1])
        if arm != "vllm":
            ratios = []
            for w in worlds:
                a, b = _spm(w, arm, n), _spm(w, "vllm", n)
                ratios.append(a / b if a is not None and b else None)
            rlo, rhi = _span(ratios)
            r.update(ratio_vs_vllm=ratios[0], ratio_band_low=rlo, ratio_band_high=rhi)
            if arm == "thunderagent":
                per_level[str(n)] = {"ratio": ratios[0], "ratio_low": rlo, "ratio_high": rhi,
                                     "ratios": ratios[1:]}
    return {
        "method": f"central sweep + Latin hypercube of {len(designs)} design points over the input ranges "
                  f"(harness/sweep/bands.py); band = [min, max] over all of them",
        "points": len(designs),
        "inputs": sorted({k for d in designs for k in d["design"]}),
        "design": [{"design": d["design"], "kv_blocks": d["kv_blocks"], "knee_kv": d["knee_kv"],
                    "knee_sim": d["knee_sim"]} for d in designs],
        "ratio_thunderagent_vs_vllm": per_level,
        "knee_kv": {"central": central_knee_kv, "low": kk[0], "high": kk[1],
                    "definition": "(KV tokens - shared prefix) / mean non-shared context per program"},
        "knee_sim": {"central": sim_knees[0], "low": ks[0], "high": ks[1],
                     "definition": "the level where simulated vLLM steps/min peaks"},
    }


def _f(v: Any, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def print_bands(bands: dict[str, Any], console: Console) -> None:
    """The bands under the comparison table: per level the TA/vLLM ratio with its band, then the knee."""
    console.print(f"  prediction bands ({escape(bands['method'])}):", highlight=False, soft_wrap=True)
    for n, b in sorted(bands["ratio_thunderagent_vs_vllm"].items(), key=lambda kv: int(kv[0])):
        console.print(f"    N={n:>4}: thunderagent / vllm [bold]{_f(b['ratio'], '.2f')}×[/] "
                      f"(band {_f(b['ratio_low'], '.2f')}–{_f(b['ratio_high'], '.2f')}×)", highlight=False)
    k, s = bands["knee_kv"], bands["knee_sim"]
    console.print(f"    knee: KV fills at ≈{_f(k['central'], '.0f')} programs (band {_f(k['low'], '.0f')}–"
                  f"{_f(k['high'], '.0f')}); simulated vLLM peaks at N={_f(s['central'], '.0f')} "
                  f"(band {_f(s['low'], '.0f')}–{_f(s['high'], '.0f')})", highlight=False, soft_wrap=True)
