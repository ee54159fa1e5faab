"""ThunderAgent's command line from a recipe (`python -m ThunderAgent ...`, as upstream's scripts run it)."""

from __future__ import annotations

import sys

from harness.launch.process import ProcessSpec
from harness.recipes import Recipe


def proxy_command(recipe: Recipe, backend_url: str, *, port: int | None = None,
                  profile_dir: str | None = None, python: str | None = None,
                  kv_offload_tokens: int | None = None) -> list[str]:
    """The proxy in front of `backend_url`. `--metrics` as upstream's reproduce scripts; `--profile` with a
    directory when the caller wants the proxy's own step records (profile_dir)."""
    p = recipe.proxy
    argv = [
        python or sys.executable, "-m", "ThunderAgent",
        "--backends", backend_url,
        "--host", p.host,
        "--port", str(port if port is not None else p.port),
        "--router", p.router,
        "--metrics",
    ]
    if profile_dir:
        argv += ["--profile", "--profile-dir", profile_dir]
    if kv_offload_tokens:  # thunderagent-offload: the engine's host KV tier, which vLLM does not publish
        argv += ["--kv-offload-tokens", str(kv_offload_tokens)]
    argv += list(p.args)
    return argv


def proxy_spec(recipe: Recipe, backend_url: str, *, port: int | None = None,
               profile_dir: str | None = None, kv_offload_gib: float | None = None) -> ProcessSpec:
    p = port if port is not None else recipe.proxy.port
    tokens = offload_tokens(recipe, kv_offload_gib) if kv_offload_gib else None
    return ProcessSpec(
        name="proxy", argv=tuple(proxy_command(recipe, backend_url, port=p, profile_dir=profile_dir,
                                               kv_offload_tokens=tokens)),
        health_url=f"http://{recipe.proxy.host}:{p}/health", host=recipe.proxy.host, port=p,
        health_timeout_s=recipe.proxy.health_timeout_s,
    )


def offload_tokens(recipe: Recipe, gib: float) -> int:
    """KV tokens `gib` of host memory hold for the recipe's model (the [sim] profile's KV bytes per token over all
    GPUs, in whole blocks, as vLLM sizes its CPU tier): what thunderagent-offload passes as --kv-offload-tokens."""
    from harness.sim.timing import load_profile

    prof = load_profile(recipe.sim.profile)
    return prof.host_link().capacity_blocks(gib, prof.engine.block_size) * prof.engine.block_size
