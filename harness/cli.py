"""The `thunderbench` command line (typer): the app, its command groups, and the console entry point.

Thin: each command (harness/commands/) validates its input and calls one function of the harness. User
mistakes (unknown recipe, malformed TOML, bad window, missing run directory, port in use, engine never
healthy, ...) derive from harness.errors.UserError and are printed as ONE line on stderr with exit code 2,
never a traceback (harness/commands/common.py `guard`).
"""

from __future__ import annotations

import typer

from harness import __version__
from harness.commands import evaluate, sim, stack, sweep, workload

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
sim_app = typer.Typer(help="The engine simulator (vLLM v1 model): serve it over HTTP, calibrate it against a live vLLM.", no_args_is_help=True)
app.add_typer(sim_app, name="sim")
workload_app = typer.Typer(help="Workloads from evidence: import agent traces, fit the trajectory model, show it.",
                           no_args_is_help=True)
app.add_typer(workload_app, name="workload")

# the commands, in the order `thunderbench --help` lists them
app.command()(stack.up)
app.command()(stack.down)
app.command()(stack.status)
app.command()(sweep.reproduce)
app.command()(sweep.run)
app.command()(sweep.throughput)
app.command()(sweep.plot)
sim_app.command("serve")(sim.sim_serve)
sim_app.command("calibrate")(sim.sim_calibrate)
workload_app.command("import")(workload.workload_import)
workload_app.command("fit")(workload.workload_fit)
workload_app.command("show")(workload.workload_show)
app.command()(evaluate.evaluate)
app.command()(evaluate.recipes)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"thunderbench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """thunderbench: ThunderAgent vs raw vLLM on SWE-bench agents."""


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
