"""`thunderbench workload import | fit | show`: workloads from evidence (agent traces, the fitted model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from harness.commands.common import err, guard, out
from harness.errors import ReproduceError


_FORMAT_HELP = ("auto (detected) | trace | steps | openhands-v0 | openhands-sdk | miniswe | messages "
                "(see harness/traces/)")
_TOKENIZER_HELP = ("tokenizer.json or a model directory to count tokens that traces do not record "
                   "(default: tiktoken cl100k_base bundled with litellm, else chars/4)")


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

    with guard():
        trajs, hows = import_many(traces, fmt, tokenizer=tokenizer, cap=cap)
        write_traces(output, trajs, source="; ".join(hows))
        out.print(f"{len(trajs)} trajectories -> {output} ({'; '.join(hows)})", highlight=False, soft_wrap=True)


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

    with guard():
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
    from harness.traces import load_traces
    from harness.traces.show import plot_context, summarize
    from harness.workload import available_workloads, load_workload_params, sample_trajectories

    with guard():
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
