"""notebooks/analysis.ipynb executes (nbclient, a real kernel) on a fresh DES sweep and on the committed
results/, and draws its figures."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from typer.testing import CliRunner

from harness.cli import app

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "analysis.ipynb"


def _execute(results: Path, monkeypatch) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("THUNDERBENCH_RESULTS", str(results))
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    return nb


def _images(nb: nbformat.NotebookNode) -> int:
    return sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if "image/png" in o.get("data", {}))


def test_notebook_runs_on_a_fresh_sweep(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results" / "glm4.6" / "tiny"
    r = CliRunner().invoke(app, ["reproduce", "glm4.6", "-e", "des", "-l", "2,4", "--duration", "4m", "-w", "1m-4m",
                                 "--arms", "vllm,thunderagent", "-j", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    nb = _execute(tmp_path / "results", monkeypatch)
    assert _images(nb) >= 2  # the comparison figure and the timeline (this sweep kept its step records)
    text = "".join(str(o.get("data", {}).get("text/plain", "")) + o.get("text", "")
                   for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "1 sweeps, 6 points" in text  # vllm and thunderagent at 2 levels, and the bound arm a DES sweep adds
    assert "thunderagent/vllm" in text


def test_notebook_runs_on_committed_results(monkeypatch):
    if not any((REPO / "results").rglob("summary.json")):
        pytest.fail("no committed results under results/ (results/reference should hold the simulated references)")
    nb = _execute(REPO / "results", monkeypatch)
    assert _images(nb) >= 2  # the comparison figure and the timeline from the reference's steps.jsonl.gz
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "no step records" not in text
