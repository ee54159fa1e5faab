"""`thunderbench up`, `down`, `status`: the engine (and ThunderAgent) as background services of this directory."""

from __future__ import annotations

import typer
from rich.table import Table

from harness.commands.common import err, guard, out, recipe_named


def up(
    recipe: str = typer.Option(..., "--recipe", "-r", help="Recipe name (glm4.6, qwen3-235b, tiny-cpu) or a .toml path."),
    arm: str = typer.Option("thunderagent", "--arm", help="thunderagent = engine + ThunderAgent proxy; vllm = engine only; vllm-offload / thunderagent-offload: the same with the recipe's KV offloading (kv_offload_gib)."),
    engine: str = typer.Option("auto", "--engine", "-e", help="auto | vllm | live-sim (alias sim): vllm = the recipe's real engine, live-sim = the simulator's HTTP server, auto = vllm if it can run here, else live-sim."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the exact command lines and exit without starting anything."),
) -> None:
    """Start the engine (and ThunderAgent) in the background, wait until healthy, record them for `down`.

    Example: [bold]thunderbench up -r glm4.6 --dry-run[/] prints the vLLM and ThunderAgent command lines a user
    on 8×H100 runs. Logs go to .thunderbench/logs/ (or $THUNDERBENCH_STATE_DIR).
    """
    from harness.launch import engine_name, stack

    with guard():
        r = recipe_named(recipe)
        if dry_run:
            want = "vllm" if engine_name(engine) in ("auto", "vllm") else engine
            p = stack.plan(r, arm, want, dry_run=True)
            out.print(f"# recipe {r.name}: {r.description}", highlight=False, soft_wrap=True)
            for spec in p.specs:
                env = " ".join(f"{k}={v}" for k, v in spec.env.items())
                out.print(f"# {spec.name}  (health: {spec.health_url})", highlight=False)
                out.print((env + " " if env else "") + " ".join(spec.argv), highlight=False, soft_wrap=True)
            if engine_name(engine) == "auto" and not stack.real_engine_available(r):
                sim = stack.plan(r, arm, "live-sim").specs[0]
                out.print("# no GPU/vLLM here: `up` would start the simulator instead (SIMULATED):", highlight=False)
                out.print(" ".join(sim.argv), highlight=False, soft_wrap=True)
            out.print(f"# agents use: {stack.env_hint(p, r)}", highlight=False, soft_wrap=True)
            return
        p, started = stack.up(r, arm, engine, err)
        label = " (SIMULATED, profile " + r.sim.profile + ")" if p.engine == "live-sim" else ""
        out.print(f"[bold green]up[/]: {r.name}, arm {arm}, engine {p.engine}{label}")
        out.print(f"  endpoint {p.endpoint}  model {r.engine.served_name}", highlight=False)
        out.print("  stop with: thunderbench down", highlight=False)


def down(grace: float = typer.Option(15.0, "--grace", help="Seconds between SIGTERM and SIGKILL.")) -> None:
    """Stop everything `thunderbench up` started (whole process groups: no orphans)."""
    from harness.launch import stack

    with guard():
        stopped = stack.down(grace)
        if not stopped:
            out.print("nothing is running (no state file)")
            return
        for name, pid, how in stopped:
            out.print(f"{name} (pid {pid}): {how}")


def status() -> None:
    """Show what `thunderbench up` started: pid, alive, healthy, URL, log file (exit 1 if one has died).

    The state lives in ./.thunderbench/ (or $THUNDERBENCH_STATE_DIR): run up/status/down from one directory.
    """
    from harness.launch import stack

    with guard():
        state, rows = stack.status()
        if state is None:
            out.print("nothing is running (no state file)")
            return
        t = Table(title=f"recipe {state['recipe']}, arm {state['arm']}")
        for c in ("process", "pid", "alive", "healthy", "url", "log"):
            t.add_column(c)
        for r in rows:
            t.add_row(r["name"], str(r["pid"]), "yes" if r["alive"] else "[red]no[/]",
                      "yes" if r["healthy"] else "[red]no[/]", r["url"], r["log"])
        out.print(t)
        if not all(r["alive"] for r in rows):
            raise typer.Exit(1)
