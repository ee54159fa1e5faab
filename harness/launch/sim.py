"""The simulator server's command line from a recipe (live-sim: it stands where vLLM would)."""

from __future__ import annotations

import sys

from harness.launch.process import ProcessSpec
from harness.recipes import Recipe


def sim_command(recipe: Recipe, *, port: int | None = None, time_scale: float | None = None,
                host: str = "127.0.0.1", kv_offload_gib: float | None = None) -> list[str]:
    """`thunderbench sim serve ...` run with this interpreter (no dependence on PATH)."""
    s = recipe.sim
    argv = [
        sys.executable, "-m", "harness.cli", "sim", "serve",
        "--profile", s.profile,
        "--host", host,
        "--port", str(port if port is not None else s.port),
        "--time-scale", _num(time_scale if time_scale is not None else s.time_scale),
        "--served-model-name", recipe.engine.served_name,
    ]
    if s.num_gpu_blocks:
        argv += ["--num-gpu-blocks", str(s.num_gpu_blocks)]
    if kv_offload_gib is not None:  # the offload arms: the host KV tier, vLLM's flag name
        argv += ["--kv-offloading-size", _num(kv_offload_gib)]
    return argv


def sim_spec(recipe: Recipe, *, port: int | None = None, time_scale: float | None = None,
             host: str = "127.0.0.1", kv_offload_gib: float | None = None) -> ProcessSpec:
    p = port if port is not None else recipe.sim.port
    return ProcessSpec(
        name="sim", argv=tuple(sim_command(recipe, port=p, time_scale=time_scale, host=host,
                                           kv_offload_gib=kv_offload_gib)),
        health_url=f"http://{host}:{p}/health", host=host, port=p, health_timeout_s=recipe.sim.health_timeout_s,
    )


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))
