"""Complete results: every computed field in summary.json/csv, TTFT and queue-wait percentiles from the step
records, the per-level ratio column, the short-window warning, repeats over seeds with a CI across them,
gzip-compressed run files read transparently, and manifests that record the workload that shaped the numbers."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.errors import ReproduceError
from harness.records import EngineSample, JsonlWriter, RunManifest, RunPaths, StepRecord, read_step_records
from harness.sweep import summary as sm
from harness.sweep.options import make_options
from harness.throughput import summarize_run

REPO = Path(__file__).resolve().parents[2]


def _run_dir(root: Path, *, minutes: int = 20, per_min: int = 30, arm: str = "vllm", programs: int = 8) -> Path:
    """`per_min` ok steps per minute; step i waits i % 5 s in the scheduler and gets its first token 0.5 s after
    forwarding; one failed call at minute 3; an engine counter that tracks the ok steps."""
    paths = RunPaths.create(root)
    RunManifest(run_id="r", arm=arm, programs=programs, agent="synthetic", engine="des", simulated=True,
                profile="glm4.6-8xh100", start_time=0.0).write(paths.manifest)
    ends = [(i + 0.5) * 60.0 / per_min for i in range(minutes * per_min)]
    with JsonlWriter(paths.steps) as w:
        for i, e in enumerate(ends):
            wait = float(i % 5)
            arrival = e - 4.0 - wait
            w.write(StepRecord(f"p{i % programs}", i // programs + 1, arrival=arrival, start=arrival + wait, end=e,
                               first_token=arrival + wait + 0.5, pause_s=wait, prompt_tokens=1000,
                               cached_tokens=900, completion_tokens=50))
        w.write(StepRecord("p0", 999, arrival=179.0, start=179.0, end=180.0, status="error"))
    with JsonlWriter(paths.engine_metrics) as w:
        for t in range(0, minutes * 60 + 1, 5):
            done = sum(1 for e in ends if e <= t)
            w.write_line(EngineSample(float(t), "sim", {"vllm:request_success_total": float(done)}).to_json())
    return paths.root


def test_ttft_and_queue_wait_percentiles_come_from_the_step_records(tmp_path):
    s = summarize_run(_run_dir(tmp_path / "r"), "2m-18m")
    # waits cycle 0..4 s evenly: p50 = 2, p95 and p99 = 4; TTFT = wait + 0.5
    assert (s.p50_queue_wait_s, s.p95_queue_wait_s, s.p99_queue_wait_s) == pytest.approx((2.0, 4.0, 4.0))
    assert (s.p50_ttft_s, s.p95_ttft_s, s.p99_ttft_s) == pytest.approx((2.5, 4.5, 4.5))
    assert s.p99_step_latency_s == pytest.approx(8.0)
    assert s.errors_in_window == 1 and s.window_bins == 16 and s.notes == []


def test_ttft_is_none_without_first_token_times(tmp_path):
    d = _run_dir(tmp_path / "r")
    recs = read_step_records(d / "steps.jsonl")
    (d / "steps.jsonl").write_text("".join(r.to_json().replace('"first_token":', '"x":') + "\n" for r in recs))
    s = summarize_run(d, "2m-18m")
    assert s.p50_ttft_s is None and s.p50_queue_wait_s == pytest.approx(2.0)


def test_a_window_of_fewer_than_ten_bins_is_warned_about(tmp_path):
    d = _run_dir(tmp_path / "r")
    s = summarize_run(d, "2m-5m")
    assert s.window_bins == 3
    assert any("holds 3 one-minute bins (fewer than 10)" in n for n in s.notes)
    assert summarize_run(d, "2m-12m").notes == []  # exactly 10 bins: no warning


def test_gzip_compressed_run_files_read_the_same(tmp_path):
    plain = _run_dir(tmp_path / "plain")
    gz = tmp_path / "gz"
    shutil.copytree(plain, gz)
    for name in ("steps.jsonl", "engine_metrics.jsonl"):
        with open(gz / name, "rb") as f, gzip.open(gz / (name + ".gz"), "wb") as g:
            g.write(f.read())
        (gz / name).unlink()
    a, b = summarize_run(plain, "2m-18m").as_dict(), summarize_run(gz, "2m-18m").as_dict()
    a.pop("run_dir"), b.pop("run_dir")
    assert a == b and b["steps_source"] == "engine"
    assert len(read_step_records(gz / "steps.jsonl")) == 601  # the plain name finds the .gz sibling
    rows = sm.load_results([gz], "2m-18m")  # a run directory holding only the compressed files
    assert rows[0]["steps_per_min"] == pytest.approx(a["steps_per_min"])


def _summary_rows(tmp_path: Path) -> list[dict]:
    for arm, n in (("vllm", 8), ("thunderagent", 8), ("bound", 8)):
        _run_dir(tmp_path / f"{arm}-{n}", arm=arm, programs=n, per_min={"vllm": 30, "thunderagent": 45,
                                                                          "bound": 60}[arm])
    pts = [sm.PointResult(a, 8, f"{a}-8", seed=0) for a in ("vllm", "thunderagent", "bound")]
    return sm.summarize(tmp_path, "2m-5m", pts, recipe="glm4.6")


def test_summary_json_and_csv_hold_every_computed_field(tmp_path):
    rows = _summary_rows(tmp_path)
    sm.write_summary(tmp_path, rows)
    summary = json.loads((tmp_path / "summary.json").read_text())
    with open(tmp_path / "summary.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    for field in ("p99_step_latency_s", "p50_ttft_s", "p95_ttft_s", "p99_ttft_s", "p50_queue_wait_s",
                  "p95_queue_wait_s", "p99_queue_wait_s", "errors_in_window", "window", "window_bins", "notes",
                  "ratio_vs_vllm", "engine_steps_per_min", "steps_source", "hit_rate_source", "seed", "repeats"):
        assert field in summary["rows"][0] and field in csv_rows[0], field
    ta = next(r for r in csv_rows if r["arm"] == "thunderagent")
    assert float(ta["ratio_vs_vllm"]) == pytest.approx(1.5) and ta["window"] == "2m-5m"
    assert float(ta["headroom"]) == pytest.approx(0.75)  # thunderagent ÷ bound
    assert ta["errors_in_window"] == "1" and "fewer than 10" in ta["notes"]
    assert next(r for r in csv_rows if r["arm"] == "vllm")["ratio_vs_vllm"] == ""
    # the short-window warning: once in the summary, not once per point
    assert len(summary["warnings"]) == 1 and "holds 3 one-minute bins" in summary["warnings"][0]


def test_the_table_has_a_ratio_per_level_and_prints_the_short_window_warning(tmp_path):
    from rich.console import Console

    rows = _summary_rows(tmp_path)
    con = Console(record=True, width=100)
    sm.print_table(rows, con)
    text = con.export_text()
    assert "×vLLM" in text and "1.50" in text and "2.00" in text
    assert "warning the window 2m-5m holds 3 one-minute bins" in " ".join(text.split())


def test_repeats_combine_into_a_mean_and_a_t_interval():
    reps = [{"arm": "vllm", "programs": 8, "status": "ok", "seed": s, "run_dir": f"vllm-8-seed{s}",
             "steps_per_min": v, "steps_in_window": 100, "notes": []} for s, v in enumerate((100.0, 110.0, 120.0))]
    reps += [{"arm": "thunderagent", "programs": 8, "status": "ok", "seed": s, "run_dir": f"ta-8-seed{s}",
              "steps_per_min": v, "steps_in_window": 100, "notes": []} for s, v in enumerate((200.0, 220.0, 240.0))]
    rows = {r["arm"]: r for r in sm.combine_repeats(reps)}
    v = rows["vllm"]
    half = 4.303 * np.std([100, 110, 120], ddof=1) / np.sqrt(3)
    assert v["steps_per_min"] == pytest.approx(110.0) and v["repeats"] == 3
    assert (v["ci_low"], v["ci_high"]) == pytest.approx((110 - half, 110 + half))
    assert v["steps_per_min_repeats"] == [100.0, 110.0, 120.0] and v["steps_in_window"] == 300
    assert rows["thunderagent"]["ratio_vs_vllm"] == pytest.approx(2.0)


def test_a_failed_repeat_fails_its_point():
    reps = [{"arm": "vllm", "programs": 8, "status": "ok", "seed": 0, "run_dir": "a", "steps_per_min": 1.0},
            {"arm": "vllm", "programs": 8, "status": "failed", "seed": 1, "run_dir": "b", "reason": "engine died"}]
    (row,) = sm.combine_repeats(reps)
    assert row["status"] == "failed" and "seed 1: engine died" in row["reason"]


def test_repeats_must_be_positive_and_exclude_bands():
    from harness.recipes import load_recipe

    with pytest.raises(ReproduceError, match="--repeats must be >= 1"):
        make_options(load_recipe("glm4.6"), engine="des", repeats=0)
    with pytest.raises(ReproduceError, match="--bands with --repeats"):
        make_options(load_recipe("glm4.6"), engine="des", repeats=2, bands=True)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def test_reproduce_repeats_and_json_in_a_subprocess(tmp_path):
    """Two seeds per point: one directory per seed, the combined rows on stdout as JSON (the table on stderr),
    the per-seed rows kept in summary.json, and the sweep manifest records the workload file and its hash."""
    params = tmp_path / "my-workload.toml"
    params.write_text((REPO / "harness" / "workloads" / "openhands.toml").read_text().replace(
        "\nmedian = 40\n", "\nmedian = 12\n", 1))  # [turns] median
    out = tmp_path / "res"
    r = _cli("reproduce", "glm4.6", "-e", "des", "-l", "2", "--duration", "4m", "-w", "1m-4m", "--arms", "vllm",
             "-j", "1", "--repeats", "2", "--seed", "5", "--workload", str(params), "--json", "--out", str(out),
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)  # stdout is exactly one JSON document
    assert doc["results"] == str(out)
    (row,) = doc["rows"]
    assert row["repeats"] == 2 and len(row["steps_per_min_repeats"]) == 2
    assert row["ci_low"] <= row["steps_per_min"] <= row["ci_high"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["vllm-2-seed5", "vllm-2-seed6"]
    assert [x["seed"] for x in json.loads((out / "summary.json").read_text())["repeats"]] == [5, 6]
    assert "steps/min" in r.stderr and "repeats" in r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["seeds"] == [5, 6]
    import hashlib

    wp = m["workload_params"]
    assert wp["sha256"] == hashlib.sha256(params.read_bytes()).hexdigest()
    assert wp["files"] == ["my-workload.toml"] and wp["params"]["turns"]["median"] == 12.0
    point = json.loads((out / "vllm-2-seed6" / "manifest.json").read_text())
    assert point["seed"] == 6 and point["extra"]["workload_params"]["sha256"] == wp["sha256"]


def test_run_json_in_a_subprocess(tmp_path):
    d = tmp_path / "ta-2"
    r = _cli("run", "-r", "glm4.6", "--arm", "thunderagent", "-n", "2", "-e", "des", "--duration", "4m",
             "-w", "1m-4m", "-o", str(d), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)
    assert row["arm"] == "thunderagent" and row["programs"] == 2 and row["steps_per_min"] > 0
    assert row["window"] == "1m-4m" and row["simulated"] is True and row["profile"] == "glm4.6-8xh100"
    assert "SIMULATED" in r.stderr  # the human table went to stderr
