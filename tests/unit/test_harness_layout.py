"""The harness's shape: every error the CLI prints as one line derives from harness.errors.UserError (and one
guard turns it into exit 2), nothing in harness or ThunderAgent imports a benchmark, and neither has an import
loop even counting the imports written inside functions (which is how the old points.py <-> reproduce.py loop
hid)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import typer

from harness.commands.common import guard
from harness.datasets import DatasetError
from harness.durations import DurationError, WindowError, parse_duration, parse_window
from harness.errors import ReproduceError, UserError
from harness.evaluate import EvaluateError
from harness.launch.process import LaunchError
from harness.launch.vllm import VllmSetupError, VllmStartError
from harness.recipes import RecipeError
from harness.runner import RunnerError
from harness.sim.des import DesError
from harness.sim.timing import ProfileError
from harness.throughput import RunDataError
from harness.traces import TraceError
from harness.workload import WorkloadError

ROOT = Path(__file__).resolve().parents[2]
USER_ERRORS = (RecipeError, ReproduceError, DurationError, WindowError, RunDataError, DatasetError, WorkloadError,
               TraceError, RunnerError, EvaluateError, LaunchError, VllmSetupError, VllmStartError, ProfileError,
               DesError)


@pytest.mark.parametrize("cls", USER_ERRORS, ids=lambda c: c.__name__)
def test_every_user_facing_error_derives_from_user_error(cls: type[Exception]) -> None:
    assert issubclass(cls, UserError)


def test_guard_prints_a_user_error_as_one_line_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as e:
        with guard():
            raise WorkloadError("workload x.toml: turns.median must be > 0\n  (see harness/workloads/)")
    assert e.value.exit_code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: workload x.toml: turns.median must be > 0 (see harness/workloads/)" in err


def test_guard_lets_a_bug_through_with_its_traceback() -> None:
    with pytest.raises(KeyError):
        with guard():
            raise KeyError("a bug, not a user error")


def test_one_duration_grammar_one_error_type() -> None:
    assert parse_duration("1h10m") == 4200.0 and parse_window("10m-70m") == (600.0, 4200.0)
    with pytest.raises(DurationError, match="bad duration '70x'"):
        parse_duration("70x")
    with pytest.raises(WindowError, match="cannot read 'x'"):  # a window error is a duration error too
        parse_window("x-70m")


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, inside a function?) for every absolute import in the file."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((a.name, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.extend((f"{child.module}.{a.name}", in_function) for a in child.names)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def _modules() -> dict[str, Path]:
    out = {}
    for f in [*(ROOT / "harness").rglob("*.py"), *(ROOT / "ThunderAgent").rglob("*.py")]:
        parts = f.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def test_nothing_in_harness_imports_a_benchmark() -> None:
    bad = [(m, name) for m, f in _modules().items() for name, _ in _imports(f) if name.split(".")[0] == "benchmarks"]
    assert not bad


def test_no_import_loop_even_through_imports_inside_functions() -> None:
    mods = _modules()

    def resolve(name: str) -> str | None:  # `from a.b import c` names module a.b.c, or a.b's attribute c
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {m: {t for name, _ in _imports(f) if (t := resolve(name)) and t != m} for m, f in mods.items()}
    seen: dict[str, int] = {}
    loops: list[list[str]] = []

    def walk(m: str, stack: list[str]) -> None:
        seen[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if seen.get(t) == 1:
                loops.append(stack[stack.index(t):] + [t])
            elif t not in seen:
                walk(t, stack)
        stack.pop()
        seen[m] = 2

    for m in sorted(graph):
        if m not in seen:
            walk(m, [])
    assert not loops, loops
