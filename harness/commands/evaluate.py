"""`thunderbench evaluate` (grade predictions) and `thunderbench recipes` (list the bundled recipes)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from harness.commands.common import guard, out
from harness.errors import ReproduceError


def evaluate(
    predictions: Path = typer.Argument(..., help="predictions.jsonl (swebench format) from a run directory."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="toy | lite | a .jsonl/.parquet path | an HF name (default: inferred)."),
    split: str = typer.Option("test", "--split"),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="swebench run id (real instances)."),
    max_workers: int = typer.Option(4, "--max-workers", help="swebench parallel containers."),
    timeout: int = typer.Option(1800, "--timeout", help="swebench per-instance timeout (s)."),
    report_dir: Optional[Path] = typer.Option(None, "--report-dir", help="swebench logs/report directory."),
) -> None:
    """Grade predictions: swebench's harness (Docker) for real instances, local grading for toy fixtures.

    Example: [bold]thunderbench evaluate results/tiny/run/predictions.jsonl --dataset toy[/]
    """
    with guard():
        if not predictions.exists():
            raise ReproduceError(f"{predictions} does not exist")
        from harness import evaluate as ev

        report = ev.evaluate(predictions, dataset, split=split, run_id=run_id, max_workers=max_workers,
                             timeout_s=timeout, report_dir=report_dir)
        t = Table(title=f"{predictions} ({report.dataset})")
        for c in ("instance", "status", "grader", "error"):
            t.add_column(c)
        for g in report.grades:
            t.add_row(g.instance_id, g.status, g.grader, g.error or "")
        out.print(t)
        out.print(report.summary(), highlight=False)


def recipes() -> None:
    """List the bundled recipes."""
    from harness.recipes import list_recipes, load_recipe

    with guard():
        t = Table()
        for c in ("recipe", "model", "engine", "profile", "levels", "window"):
            t.add_column(c)
        for n in list_recipes():
            r = load_recipe(n)
            t.add_row(n, r.engine.model, f"{r.engine.kind} TP{r.engine.tensor_parallel_size}", r.sim.profile,
                      ",".join(map(str, r.sweep.levels)), r.sweep.window)
        out.print(t)
