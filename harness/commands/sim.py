"""`thunderbench sim serve`: the engine simulator with vLLM's HTTP API and /metrics."""

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
