"""`thunderbench reproduce` and `thunderbench run`: the sweep (arms x concurrency levels x seeds), one fresh
engine per point, then the summary table, CSV/JSON and the figure.

Output: results/<recipe>/<timestamp>/ with manifest.json, one directory per point (<arm>-<programs>/ with
manifest.json, steps.jsonl, engine_metrics.jsonl, predictions.jsonl), summary.json, summary.csv and
throughput.png. A sweep (and a single `run`) is written in `<out>.incomplete` and renamed to `<out>` at the
end; one that fails or is interrupted stays there with its logs, and `--resume DIR` continues it from
DIR/options.json (finished points are kept, the others run again; a single live run skips its finished
instances). A point that fails (engine died, never healthy) is recorded as failed with its reason and the
sweep goes on; the command then exits 1 unless --allow-failures.

matplotlib is imported only when the figure is drawn (harness.plots loads it: heavy).
"""

from __future__ import annotations

import multiprocessing as mp
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from harness import __version__
from harness.errors import ReproduceError
from harness.records import git_revision, package_versions
from harness.sweep.bands import apply_bands, print_bands, run_bands
from harness.sweep.files import OPTIONS_FILE, read_json, write_json
from harness.sweep.inputs import workload_record
from harness.sweep.options import SweepOptions
from harness.sweep.points import PointFailed, des_worker, point_name, point_runner, run_one
from harness.sweep.progress import SweepProgress
from harness.sweep.resume import keep_or_drop, say_deadline, set_aside, work_dir_of, write_options
from harness.sweep.summary import (FIGURE_NAME, PointResult, combine_repeats, figure_title, print_table, summarize,
                                   write_summary)


def reproduce(opts: SweepOptions, console: Console | None = None) -> tuple[Path, list[dict[str, Any]]]:
    """Run the sweep (or, with opts.resume, the points of an earlier one that did not finish); returns the final
    results directory and the summary rows. It is written in `<out>.incomplete` and renamed at the end; a
    failed or interrupted sweep stays there, to be continued with --resume."""
    console = console or Console(stderr=True)
    final = opts.out
    work = work_dir_of(opts)
    t0 = time.time()
    manifest = read_json(work / "manifest.json") if opts.resume is not None else {}
    if manifest:
        manifest.setdefault("resumed", []).append({"at": t0, "command": list(opts.argv) or None})
        manifest.pop("finished", None)
    else:
        work.mkdir(parents=True, exist_ok=opts.resume is not None)
        manifest = _sweep_manifest(opts, t0)
    write_options(work, "reproduce", opts)
    write_json(work / "manifest.json", manifest)
    runner = point_runner(opts.engine)
    points = [(arm, programs, seed) for programs in opts.levels for arm in opts.arms for seed in opts.seeds]
    done: dict[tuple[str, int, int], PointResult] = {}
    for p in manifest.get("points") or []:  # finished in an earlier run of this sweep: kept as they are
        key = (p.get("arm"), p.get("programs"), opts.seed if p.get("seed") is None else p.get("seed"))
        if p.get("status") == "ok" and key in points and (work / str(p.get("run_dir")) / "manifest.json").exists():
            done[key] = PointResult(**p)
    todo = [p for p in points if p not in done]
    if opts.resume is not None:
        console.print(f"resuming {escape(str(work))}: {len(done)} point(s) finished, {len(todo)} to run",
                      highlight=False, soft_wrap=True)
    for arm, programs, seed in todo:
        set_aside(work, point_name(opts, arm, programs, seed), opts.engine)

    def record() -> None:
        manifest["points"] = [asdict(done[p]) for p in points if p in done]
        write_json(work / "manifest.json", manifest)

    ok = False
    bands = None
    rows: list[dict[str, Any]] = []
    try:
        parallel = opts.engine == "des" and opts.jobs > 1 and len(todo) > 1
        progress = SweepProgress(console, len(todo), jobs=min(opts.jobs, len(todo)) if parallel else 1,
                                 time_scale=opts.time_scale if opts.engine == "live-sim" else 1.0)
        with progress.shown():
            if parallel:
                done.update(zip(todo, _run_parallel(opts, todo, work, console, progress)))
            else:
                for arm, programs, seed in todo:
                    done[(arm, programs, seed)] = run_one(
                        replace(opts, seed=seed), runner, arm, programs, work, console,
                        name=point_name(opts, arm, programs, seed), progress=progress)
                    record()
        results = [done[p] for p in points]
        for r in results:  # reasons name files by where they will be once the directory has its final name
            if r.reason and work != final:
                r.reason = r.reason.replace(str(work), str(final))
        per_seed = summarize(work, opts.window, results, recipe=opts.recipe.name)
        rows = combine_repeats(per_seed) if opts.repeats > 1 else per_seed
        record()
        if opts.bands:
            bands = apply_bands(rows, run_bands(opts, work, console), opts)
            manifest["bands"] = {k: bands[k] for k in ("method", "points", "inputs", "design")}
        write_summary(work, rows, bands, repeats=per_seed if opts.repeats > 1 else None)
        if any(r["status"] == "ok" for r in rows):
            from harness.plots import plot_summary

            plot_summary(rows, work / FIGURE_NAME, title=figure_title(rows))
        manifest.update(finished=time.time(), wall_s=round(time.time() - t0, 3))
        write_json(work / "manifest.json", manifest)
        if work != final:
            work.rename(final)
        ok = True
    finally:
        if not ok:
            keep_or_drop(work, "reproduce", console)
    print_table(rows, console, title=f"{opts.recipe.name} on {opts.engine}"
                + (f" (SIMULATED, profile {opts.profile})" if opts.simulated else ""))
    if bands is not None:
        print_bands(bands, console)
    return final, rows


def run_single(opts: SweepOptions, console: Console) -> dict[str, Any]:
    """`thunderbench run`: one arm at one concurrency, written in `<out>.incomplete` and renamed to opts.out
    at the end (kept, logs and all, when it fails or is interrupted: `--resume` continues it). Returns its
    summary row."""
    arm, programs = opts.arms[0], opts.levels[0]
    final = opts.out
    work = work_dir_of(opts)
    if opts.resume is None:
        work.mkdir(parents=True)
    elif opts.engine == "des":  # a simulated point is not continued mid-way: it is simulated again
        for p in work.iterdir():
            if p.name != OPTIONS_FILE:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    write_options(work, "run", opts)
    if opts.resume is not None and opts.engine != "des":
        say_deadline(work, console)
    ok = False
    try:
        try:
            point_runner(opts.engine)(opts, arm, programs, work, console)
        except PointFailed as e:
            raise ReproduceError(f"{arm} x {programs} on {opts.engine} failed: {e}") from None
        rows = summarize(work.parent, opts.window, [PointResult(arm, programs, work.name, seed=opts.seed)],
                         opts.recipe.name)
        if work != final:
            work.rename(final)
        ok = True
    finally:
        if not ok:
            keep_or_drop(work, "run", console)
    rows[0]["run_dir"] = str(final)
    return rows[0]


def _run_parallel(opts: SweepOptions, points: list[tuple[str, int, int]], root: Path,
                  console: Console, progress: SweepProgress) -> list[PointResult]:
    """DES points in `opts.jobs` worker processes (they are independent: one engine model each). The
    biggest points start first; results keep the sweep's order."""
    for arm, programs, seed in points:
        (root / point_name(opts, arm, programs, seed)).mkdir()
    done: dict[tuple[str, int, int], PointResult] = {}
    order = sorted(points, key=lambda p: -p[1])
    label = f"on des (simulated, {opts.profile})"
    with ProcessPoolExecutor(max_workers=min(opts.jobs, len(points)), mp_context=mp.get_context("spawn")) as ex:
        futs = {ex.submit(des_worker, replace(opts, seed=seed), arm, n, root / point_name(opts, arm, n, seed)):
                (arm, n, seed) for arm, n, seed in order}
        # the progress display (points done / total, ETA) is the caller's
        try:
            for f in as_completed(futs):
                arm, n, seed = futs[f]
                res = f.result()
                done[(arm, n, seed)] = res
                name = point_name(opts, arm, n, seed)
                if res.status == "ok":
                    sm = res.extra.get("summary") or {}
                    spm = (f": {sm['steps_per_min']:.1f} steps/min" if sm.get("steps_per_min") is not None
                           else "")
                    hit = (f", hit rate {100 * sm['prefix_hit_rate']:.1f}%"
                           if sm.get("prefix_hit_rate") is not None else "")
                    console.print(f"[green]✓[/] {name} {escape(label)}{spm}{hit} ({res.wall_s:.1f} s)",
                                  soft_wrap=True, highlight=False)
                else:
                    console.print(f"[red]✗[/] {name} {escape(label)}: failed: {escape(str(res.reason))}",
                                  soft_wrap=True, highlight=False)
                progress.finish(name, res.status == "ok", res.wall_s)
        except BaseException:
            for f in futs:
                f.cancel()
            raise
    return [done[p] for p in points]


def _sweep_manifest(opts: SweepOptions, t0: float) -> dict[str, Any]:
    return {
        "kind": "sweep",
        "recipe": opts.recipe.name,
        "recipe_file": opts.recipe.path.name,
        "engine": opts.engine,
        "simulated": opts.simulated,
        "profile": opts.profile,
        "levels": list(opts.levels),
        "arms": list(opts.arms),
        "skipped_arms": list(opts.skipped_arms),
        "window": opts.window,
        "duration_s": opts.duration_s,
        "seed": opts.seed,
        "repeats": opts.repeats,
        "seeds": list(opts.seeds),
        "bands": {"points": opts.band_points} if opts.bands else None,
        "kv_offload_gib": opts.offload_gib if any(a.endswith("-offload") for a in opts.arms) else None,
        "agent": opts.agent,
        "workload": opts.workload or None,
        "workload_params": workload_record(opts),
        "time_scale": opts.time_scale if opts.engine == "live-sim" else None,
        "targets": opts.targets.as_dict() if opts.targets is not None else None,
        "command": list(opts.argv) or None,
        "thunderbench": __version__,
        "git_revision": git_revision(),
        "versions": package_versions(),
        "started": t0,
        "points": [],
    }
