"""`thunderbench reproduce glm4.6 --engine des --bands` end to end on a reduced sweep (small levels, a short
window, 3 design points): the band columns and block in summary.json/csv, the design point runs on disk with
their inputs recorded, the console lines, and the figure."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # 4 central + 12 band DES points: ~1 min unloaded


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    root = tmp_path_factory.mktemp("bands")
    out = root / "results" / "glm4.6" / "bands"
    r = subprocess.run(
        [sys.executable, "-m", "harness.cli", "reproduce", "glm4.6", "--engine", "des", "--levels", "4,8",
         "--duration", "6m", "--window", "1m-6m", "--arms", "vllm,thunderagent", "--bands", "--band-points", "3",
         "--out", str(out), "--jobs", "2"],
        capture_output=True, text=True, timeout=900, cwd=root,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return out, r


def test_summary_carries_the_bands(sweep):
    out, _ = sweep
    s = json.loads((out / "summary.json").read_text())
    b = s["bands"]
    assert b["points"] == 3 and len(b["design"]) == 3
    assert {"kv_capacity", "turns", "observation_tokens", "tool_time", "system"} <= set(b["inputs"])
    for n in ("4", "8"):
        lvl = b["ratio_thunderagent_vs_vllm"][n]
        assert lvl["ratio_low"] <= lvl["ratio"] <= lvl["ratio_high"]
        assert len(lvl["ratios"]) == 3
    k = b["knee_kv"]
    assert 0 < k["low"] <= k["central"] <= k["high"]
    assert b["knee_sim"]["central"] in (4, 8)
    assert {r["arm"] for r in s["rows"]} == {"vllm", "thunderagent", "bound"}
    for r in s["rows"]:
        if r["arm"] == "bound":  # the KV-limit-lifted reference is not part of the design
            assert "band_points" not in r and r["headroom"] is None
            continue
        assert r["band_points"] == 3
        assert r["steps_per_min_band_low"] <= r["steps_per_min"] <= r["steps_per_min_band_high"]
        if r["arm"] == "thunderagent":
            assert r["ratio_band_low"] <= r["ratio_vs_vllm"] <= r["ratio_band_high"]
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {"ratio_band_low", "ratio_band_high", "knee_kv_low", "knee_kv_high"} <= set(rows[0])
    ta = next(r for r in rows if r["arm"] == "thunderagent" and r["programs"] == "8")
    assert float(ta["ratio_band_low"]) <= float(ta["ratio_band_high"])


def test_design_points_are_runs_with_their_inputs(sweep):
    out, _ = sweep
    b = json.loads((out / "summary.json").read_text())["bands"]
    kv = {d["kv_blocks"] for d in b["design"]}
    assert len(kv) == 3  # every design point has its own KV capacity
    for i, d in enumerate(b["design"], 1):
        for arm in ("vllm", "thunderagent"):
            for n in (4, 8):
                m = json.loads((out / "bands" / f"d{i:02d}" / f"{arm}-{n}" / "manifest.json").read_text())
                assert m["extra"]["design"] == d["design"] and m["simulated"] is True
    m = json.loads((out / "manifest.json").read_text())
    assert m["bands"]["points"] == 3 and m["bands"]["design"] == [
        {k: v for k, v in d.items()} for d in b["design"]]


def test_console_and_figure(sweep):
    out, r = sweep
    text = r.stdout + r.stderr
    assert "prediction bands" in text and "thunderagent / vllm" in text and "knee: KV fills at" in text
    assert (out / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
