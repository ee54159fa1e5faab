"""ThunderAgent's command line from a recipe (`python -m ThunderAgent ...`, as upstream's scripts run it)."""

from __future__ import annotations

import sys

from harness.launch.process import ProcessSpec
from harness.recipes import Recipe


def proxy_command(recipe: Recipe, backend_url: str, *, port: int | None = None,
                  profile_dir: str | None = None, python: str | None = None) -> list[str]:
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
    argv += list(p.args)
    return argv


def proxy_spec(recipe: Recipe, backend_url: str, *, port: int | None = None,
               profile_dir: str | None = None) -> ProcessSpec:
    p = port if port is not None else recipe.proxy.port
    return ProcessSpec(
        name="proxy", argv=tuple(proxy_command(recipe, backend_url, port=p, profile_dir=profile_dir)),
        health_url=f"http://{recipe.proxy.host}:{p}/health", host=recipe.proxy.host, port=p,
        health_timeout_s=recipe.proxy.health_timeout_s,
    )
