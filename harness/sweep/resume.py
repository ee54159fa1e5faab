"""Continuing an interrupted sweep or run: `--resume DIR` reads the options the command was given from
DIR/options.json, sets aside the points that did not finish, and keeps or drops what a failure left behind."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from harness.errors import ReproduceError
from harness.recipes import load_recipe
from harness.sweep.files import INCOMPLETE, OPTIONS_FILE, read_json, work_dir, write_json
from harness.sweep.options import SweepOptions, make_options


def resume_inputs(directory: Path, command: str) -> tuple[dict[str, Any], Path]:
    """(the options the interrupted command was given, its final directory) from DIR/options.json."""
    if not directory.is_dir():
        raise ReproduceError(f"--resume {directory}: no such directory")
    data = read_json(directory / OPTIONS_FILE)
    if not data:
        raise ReproduceError(f"--resume {directory}: no {OPTIONS_FILE} there (not a directory that "
                             f"`thunderbench {command}` wrote)")
    if data.get("command") != command:
        raise ReproduceError(f"--resume {directory}: it was written by `thunderbench {data.get('command')}`, "
                             f"not `{command}`")
    name = directory.name
    final = directory.with_name(name[: -len(INCOMPLETE)]) if name.endswith(INCOMPLETE) else directory
    if final != directory and final.exists():
        raise ReproduceError(f"--resume {directory}: {final} exists already; move one of them away")
    return {k: v for k, v in data.items() if k != "command"}, final


def inputs_of(opts: SweepOptions, recipe: str) -> dict[str, Any]:
    """The make_options arguments that reproduce these options (engine and servers as resolved, so that a
    resumed sweep measures the same thing even after `up`'s servers are gone or a GPU appeared)."""
    t = opts.targets
    spec = str(Path(recipe).resolve()) if recipe.endswith(".toml") else recipe
    return {
        "recipe": spec, "engine": "auto" if t is not None else opts.engine, "levels": list(opts.levels),
        "arms": list(opts.arms), "window": opts.window, "duration": f"{opts.duration_s:g}s", "seed": opts.seed,
        "time_scale": None if t is not None else opts.time_scale, "agent": opts.agent, "dataset": opts.dataset,
        "jobs": opts.jobs, "workload": opts.workload or None, "bands": opts.bands, "band_points": opts.band_points,
        "endpoint": t.engine if t is not None else None, "proxy": t.proxy if t is not None else None,
        "slice": opts.slice, "instances": list(opts.instances) if opts.instances else None,
        "workspace": opts.workspace, "repos_dir": opts.repos_dir,
        "max_iterations": opts.recipe.workload.max_iterations, "repeats": opts.repeats,
        "kv_offload_gib": opts.kv_offload_gib,
    }


def options_from_inputs(inputs: dict[str, Any], final: Path, resume: Path, argv: tuple[str, ...]) -> SweepOptions:
    """make_options again from what options.json recorded (for --resume)."""
    kw = dict(inputs)
    recipe = load_recipe(kw.pop("recipe"))
    kw["levels"] = tuple(kw["levels"])
    kw["arms"] = tuple(kw["arms"])
    if kw.get("instances"):
        kw["instances"] = tuple(kw["instances"])
    return make_options(recipe, **kw, out=final, argv=argv, inputs=inputs, resume=resume)


def work_dir_of(opts: SweepOptions) -> Path:
    return opts.resume if opts.resume is not None else work_dir(opts.out)


def write_options(work: Path, command: str, opts: SweepOptions) -> None:
    if opts.inputs is not None:
        write_json(work / OPTIONS_FILE, {"command": command, **opts.inputs})


def set_aside(work: Path, name: str, engine: str) -> None:
    """A point that did not finish, before it runs again: a simulated one is deleted (rerunning it gives the
    same records), a measured one moves to superseded/<name>-<k> (its logs and steps are kept, outside the
    sweep's point directories so no summary reads them)."""
    d = work / name
    if not d.exists():
        return
    if engine == "des":
        shutil.rmtree(d)
        return
    k = 1
    while (work / "superseded" / f"{name}-{k}").exists():
        k += 1
    (work / "superseded").mkdir(exist_ok=True)
    d.rename(work / "superseded" / f"{name}-{k}")


def keep_or_drop(work: Path, command: str, console: Console) -> None:
    """After a failure or interrupt: keep what was written (and say where), or remove a directory that holds
    nothing but the options."""
    left = [p for p in work.iterdir() if p.name not in (OPTIONS_FILE, "manifest.json")] if work.exists() else []
    if not left:
        shutil.rmtree(work, ignore_errors=True)
        return
    console.print(f"[yellow]kept[/] {escape(str(work))} (continue with: thunderbench {command} --resume "
                  f"{escape(str(work))})", highlight=False, soft_wrap=True)


def say_deadline(work: Path, console: Console) -> None:
    """A resumed live run continues until its original deadline (its window stays on one clock): say how
    much of it is left."""
    m = read_json(work / "manifest.json")
    if not m.get("start_time") or not m.get("duration_s"):
        return
    left = m["start_time"] + m["duration_s"] - time.time()
    console.print(f"resuming {escape(str(work))}: finished instances are skipped; "
                  + (f"{left:.0f} s left until the run's original deadline" if left > 0 else
                     "its duration already elapsed (the run continues until its original deadline, so nothing "
                     "more is run: start a new run for more data)"), highlight=False, soft_wrap=True)
