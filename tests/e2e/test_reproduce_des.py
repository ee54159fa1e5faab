"""`thunderbench reproduce glm4.6 --engine des` end to end (small levels, short window): the whole output
layout, labels, and that the numbers recompute from the files."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ARMS = {"vllm", "thunderagent", "continuum", "bound"}  # bound: added with thunderagent on des


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    root = tmp_path_factory.mktemp("des")
    out = root / "results" / "glm4.6" / "small"
    r = subprocess.run(
        [sys.executable, "-m", "harness.cli", "reproduce", "glm4.6", "--engine", "des", "--levels", "4,8",
         "--duration", "8m", "--window", "2m-8m", "--out", str(out), "--jobs", "2"],
        capture_output=True, text=True, timeout=600, cwd=root,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return out, r


def test_layout(sweep):
    out, _ = sweep
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json", "options.json", "summary.json", "summary.csv", "throughput.png"]
        + [f"{a}-{n}" for a in ARMS for n in (4, 8)])
    assert not list(out.parent.glob("*.incomplete")), "no working directory left behind"
    for a in ARMS:
        for n in (4, 8):
            d = out / f"{a}-{n}"
            for f in ("manifest.json", "steps.jsonl", "engine_metrics.jsonl", "predictions.jsonl"):
                assert (d / f).exists(), d / f
            m = json.loads((d / "manifest.json").read_text())
            assert (m["arm"], m["programs"], m["simulated"], m["profile"], m["engine"], m["recipe"]) == (
                a, n, True, "glm4.6-8xh100", "des", "glm4.6")
            assert sum(1 for _ in open(d / "steps.jsonl")) > 0
    assert (out / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_manifest(sweep):
    out, _ = sweep
    m = json.loads((out / "manifest.json").read_text())
    assert m["kind"] == "sweep" and m["engine"] == "des" and m["simulated"] is True
    assert m["profile"] == "glm4.6-8xh100" and m["levels"] == [4, 8] and m["window"] == "2m-8m"
    assert set(m["arms"]) == ARMS and m["skipped_arms"] == []
    assert [p["status"] for p in m["points"]] == ["ok"] * 8
    assert m["wall_s"] > 0 and m["command"][:3] == ["thunderbench", "reproduce", "glm4.6"]


def test_summary_rows(sweep):
    out, _ = sweep
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert {(r["arm"], r["programs"]) for r in rows} == {(a, n) for a in ARMS for n in (4, 8)}
    for r in rows:
        for k in ("arm", "programs", "steps_per_min", "ci_low", "ci_high", "prefix_hit_rate", "preemptions",
                  "p50_step_latency_s", "p95_step_latency_s", "simulated", "profile"):
            assert k in r, k
        assert r["status"] == "ok" and r["simulated"] is True and r["profile"] == "glm4.6-8xh100"
        assert r["steps_per_min"] > 0 and r["ci_low"] <= r["steps_per_min"] <= r["ci_high"]
        assert 0.0 < r["prefix_hit_rate"] <= 1.0
        assert 0 < r["p50_step_latency_s"] <= r["p95_step_latency_s"]
    # more programs in flight, more steps per minute (no KV pressure at 4 and 8 programs)
    by = {(r["arm"], r["programs"]): r["steps_per_min"] for r in rows}
    for a in ARMS:
        assert by[(a, 8)] > by[(a, 4)]
    with open(out / "summary.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == 8
    assert {(c["arm"], int(c["programs"])) for c in csv_rows} == set(by)
    for c in csv_rows:
        assert float(c["steps_per_min"]) == pytest.approx(by[(c["arm"], int(c["programs"]))])
        if c["arm"] == "thunderagent":  # its headroom: ÷ the bound at the same level
            assert float(c["headroom"]) == pytest.approx(by[("thunderagent", int(c["programs"]))]
                                                         / by[("bound", int(c["programs"]))], rel=1e-3)
        else:
            assert c["headroom"] == ""


def test_output_labels_simulated(sweep):
    _, r = sweep
    assert "SIMULATED (profile glm4.6-8xh100)" in r.stderr
    assert "results:" in r.stdout


def test_throughput_recomputes_the_same_numbers(sweep):
    out, _ = sweep
    r = subprocess.run([sys.executable, "-m", "harness.cli", "throughput", str(out), "--window", "2m-8m", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    again = {(x["arm"], x["programs"]): x["steps_per_min"] for x in json.loads(r.stdout)}
    saved = {(x["arm"], x["programs"]): x["steps_per_min"]
             for x in json.loads((out / "summary.json").read_text())["rows"]}
    assert again == pytest.approx(saved)


def test_plot_from_results(sweep, tmp_path):
    out, _ = sweep
    fig = tmp_path / "again.svg"
    r = subprocess.run([sys.executable, "-m", "harness.cli", "plot", str(out), "-o", str(fig)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    svg = fig.read_text()
    assert "SIMULATED (profile glm4.6-8xh100)" in svg  # once, in the main title, with what ran
    assert "synthetic agent on lite-synthetic, engine des" in svg and svg.count("SIMULATED") == 1
