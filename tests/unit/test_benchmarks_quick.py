"""scripts/bench.sh runs every benchmark with --quick (CI runs it after the tests): each benchmark that parses
its arguments must accept that flag. One that does not exits 2 and fails CI after a green test run, as
fairness_burst.py did."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = sorted(p for p in (Path(__file__).resolve().parents[2] / "benchmarks").glob("[!_]*.py"))


def test_there_are_benchmarks() -> None:
    assert len(BENCH) >= 5, BENCH


@pytest.mark.parametrize("bench", [p for p in BENCH if "argparse" in p.read_text(encoding="utf-8")],
                         ids=lambda p: p.name)
def test_every_benchmark_that_parses_arguments_accepts_quick(bench: Path) -> None:
    r = subprocess.run([sys.executable, str(bench), "--quick", "--help"], capture_output=True, text=True,
                       timeout=120, cwd=bench.parents[1])
    assert r.returncode == 0 and "--quick" in r.stdout, (r.returncode, r.stdout[-500:], r.stderr[-500:])
