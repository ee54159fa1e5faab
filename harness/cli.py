"""The `thunderbench` command line (typer). Thin: each command calls one function of the harness."""

from __future__ import annotations

import typer

from harness import __version__

app = typer.Typer(
    name="thunderbench",
    help="Measure how many agent steps/min ThunderAgent buys over raw vLLM (real GPUs or the simulator).",
    no_args_is_help=True,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"thunderbench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """thunderbench: ThunderAgent vs raw vLLM on SWE-bench agents."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
