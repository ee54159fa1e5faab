"""The committed results/reference: it ships each point's step records compressed, they recompute the committed
summary exactly, its manifests record a clean revision and the workload file by content hash, and its figure
says what ran."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from harness.sweep.summary import load_results

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
REF = REPO / "results" / "reference"
RECIPES = ("glm4.6", "qwen3-235b")


@pytest.mark.parametrize("recipe", RECIPES)
def test_reference_ships_compressed_records_that_recompute_the_summary(recipe):
    root = REF / recipe
    summary = json.loads((root / "summary.json").read_text())
    points = [root / r["run_dir"] for r in summary["rows"]]
    for d in points:
        assert (d / "steps.jsonl.gz").is_file() and (d / "engine_metrics.jsonl.gz").is_file(), d
        assert not (d / "steps.jsonl").exists()
    m = json.loads((root / "manifest.json").read_text())
    again = {(r["arm"], r["programs"]): r for r in load_results([root], m["window"])}
    for r in summary["rows"]:
        x = again[(r["arm"], r["programs"])]
        for k in ("steps_per_min", "ci_low", "ci_high", "prefix_hit_rate", "preemptions", "p95_step_latency_s",
                  "p99_ttft_s", "p99_queue_wait_s", "steps_in_window", "ratio_vs_vllm"):
            assert x[k] == r[k], (r["arm"], r["programs"], k)


@pytest.mark.parametrize("recipe", RECIPES)
def test_reference_manifests_record_a_clean_revision_and_the_workload(recipe):
    root = REF / recipe
    m = json.loads((root / "manifest.json").read_text())
    assert m["git_revision"] and not m["git_revision"].endswith("-dirty")
    wp = m["workload_params"]
    (f,) = wp["files"]
    assert not Path(f).is_absolute()  # no machine paths in the repository
    assert wp["sha256"] == hashlib.sha256((REPO / f).read_bytes()).hexdigest()
    assert wp["params"]["turns"]["max"] > 0
    for r in json.loads((root / "summary.json").read_text())["rows"]:
        pm = json.loads((root / r["run_dir"] / "manifest.json").read_text())
        assert not pm["git_revision"].endswith("-dirty") and pm["extra"]["workload_params"]["sha256"] == wp["sha256"]
        assert (r["agent"], r["dataset"]) == ("synthetic", "lite-synthetic")


def test_reference_figure_title_names_what_ran():
    from harness.sweep.summary import figure_title

    rows = load_results([REF / r for r in RECIPES], None)
    t = figure_title(rows)
    assert "synthetic agent on lite-synthetic" in t and "SIMULATED" in t and "OpenHands" not in t
