"""The sweep orchestration: a failed point is recorded and the sweep goes on (exit 1 unless
--allow-failures); an interrupted sweep is kept as <out>.incomplete; engine resolution; the dry-run command
lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import harness.sweep.reproduce as rp
from harness.cli import app
from harness.recipes import load_recipe
from harness.sweep import options, points, summary


@pytest.fixture(autouse=True)
def _cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("THUNDERBENCH_STATE_DIR", str(tmp_path / "state"))


def _des_then_fail(fail_arm: str, exc: BaseException | None = None):
    real = points.point_runner("des")

    def runner(opts, arm, programs, run_dir, console):
        if arm == fail_arm:
            if exc is not None:
                raise exc
            raise points.PointFailed("engine died: exit code -9 (log logs/engine.log)")
        return real(opts, arm, programs, run_dir, console)

    return lambda engine: runner


def test_failed_point_is_marked_and_sweep_continues(tmp_path, monkeypatch):
    monkeypatch.setattr(rp, "point_runner", _des_then_fail("thunderagent"))
    out = tmp_path / "res"
    r = CliRunner().invoke(app, ["reproduce", "glm4.6", "-e", "des", "-l", "2,4", "--duration", "4m", "-w", "1m-4m",
                                 "--arms", "vllm,thunderagent", "-j", "1", "--out", str(out)])
    assert r.exit_code == 1, r.output
    assert "2 of 6 points failed (thunderagent-2, thunderagent-4" in r.stderr
    assert f"thunderbench reproduce --resume {out}" in r.stderr
    rows = json.loads((out / "summary.json").read_text())["rows"]
    failed = [x for x in rows if x["status"] == "failed"]
    assert {(x["arm"], x["programs"]) for x in failed} == {("thunderagent", 2), ("thunderagent", 4)}
    assert all("engine died: exit code -9" in x["reason"] for x in failed)
    assert all(x["steps_per_min"] is None for x in failed)
    assert all(x["status"] == "ok" and x["steps_per_min"] > 0 for x in rows if x["arm"] == "vllm")
    assert (out / "thunderagent-2" / "failed.json").exists()
    assert (out / "throughput.png").exists()  # the successful arm is still plotted
    m = json.loads((out / "manifest.json").read_text())
    assert [p["status"] for p in m["points"]] == ["ok", "failed", "ok"] * 2  # vllm, thunderagent, bound
    assert "failed thunderagent × 2: engine died" in r.stderr


@pytest.mark.parametrize("exc,code", [(KeyboardInterrupt(), 130)])
def test_interrupted_sweep_is_kept_incomplete(tmp_path, monkeypatch, exc, code):
    monkeypatch.setattr(rp, "point_runner", _des_then_fail("thunderagent", exc))
    r = CliRunner().invoke(app, ["reproduce", "glm4.6", "-e", "des", "-l", "2", "--duration", "4m", "-w", "1m-4m",
                                 "--arms", "vllm,thunderagent", "-j", "1"])
    assert r.exit_code == code, r.output
    res = tmp_path / "results" / "glm4.6"
    kept = list(res.iterdir())
    assert len(kept) == 1 and kept[0].name.endswith(".incomplete"), kept
    assert (kept[0] / "vllm-2" / "steps.jsonl").exists() and (kept[0] / "options.json").exists()
    assert f"--resume {kept[0].relative_to(tmp_path)}" in " ".join(r.stderr.split())


def test_all_points_failed_gives_no_figure_but_a_summary(tmp_path, monkeypatch):
    monkeypatch.setattr(rp, "point_runner", lambda engine: (lambda *a: (_ for _ in ()).throw(points.PointFailed("x"))))
    out = tmp_path / "res"
    r = CliRunner().invoke(app, ["reproduce", "glm4.6", "-e", "des", "-l", "2", "--duration", "4m", "-w", "1m-4m",
                                 "--arms", "vllm", "-j", "1", "--out", str(out), "--allow-failures"])
    assert r.exit_code == 0, r.output
    assert not (out / "throughput.png").exists()
    assert json.loads((out / "summary.json").read_text())["rows"][0]["status"] == "failed"


def test_auto_engine_is_des_without_gpus(monkeypatch):
    from harness.launch import stack

    monkeypatch.setattr(stack, "gpu_available", lambda: False)
    assert options.resolve_engine("auto", load_recipe("glm4.6")) == "des"
    monkeypatch.setattr(stack, "gpu_available", lambda: True)
    monkeypatch.setattr(stack.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert options.resolve_engine("auto", load_recipe("qwen3-235b")) == "vllm"


def test_continuum_and_bound_only_on_des():
    r = load_recipe("glm4.6")
    assert options.arms_for("des", r.sweep.arms) == (("vllm", "thunderagent", "continuum", "bound"), ())
    assert options.arms_for("live-sim", r.sweep.arms) == (("vllm", "thunderagent"), ("continuum",))
    assert options.arms_for("live-sim", ("thunderagent", "bound")) == (("thunderagent",), ("bound",))
    assert options.arms_for("des", ("vllm",)) == (("vllm",), ())  # the bound comes with a thunderagent arm


def test_headroom_is_thunderagent_over_the_bound_per_level():
    rows = [dict(arm=a, programs=n, status="ok", steps_per_min=v) for a, n, v in [
        ("thunderagent", 96, 250.0), ("bound", 96, 320.0), ("vllm", 96, 130.0), ("thunderagent", 192, 240.0)]]
    summary.add_headroom(rows)
    assert [r.get("headroom") for r in rows] == [0.781, None, None, None]  # no bound at 192: no figure
    assert "headroom" in summary.SUMMARY_FIELDS


def test_default_out_is_results_recipe_timestamp():
    p = options.default_out(load_recipe("qwen3-235b"))
    assert p.parts[:2] == ("results", "qwen3-235b") and len(p.name) == len("20261125-120000")


GLM = ("vllm serve zai-org/GLM-4.6-FP8 --tensor-parallel-size 8 --kv-cache-dtype fp8 --max-model-len 202752 "
       "--enable-prefix-caching --enable-prompt-tokens-details --enable-auto-tool-choice --tool-call-parser glm45 "
       "--host 127.0.0.1 --port 8100")
QWEN = ("vllm serve Qwen/Qwen3-235B-A22B-Instruct-2507 --tensor-parallel-size 8 --quantization fp8 "
        "--kv-cache-dtype fp8 --max-model-len 262144 --enable-prefix-caching --enable-prompt-tokens-details "
        "--enable-auto-tool-choice --tool-call-parser hermes --host 127.0.0.1 --port 8100")


@pytest.mark.parametrize("recipe,line", [("glm4.6", GLM), ("qwen3-235b", QWEN)])
def test_dry_run_prints_the_exact_vllm_and_proxy_commands(recipe, line):
    r = CliRunner().invoke(app, ["up", "-r", recipe, "--dry-run"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert line in lines
    proxy = [ln for ln in lines if "-m ThunderAgent" in ln]
    assert len(proxy) == 1
    assert proxy[0].endswith("-m ThunderAgent --backends http://127.0.0.1:8100 --host 127.0.0.1 --port 8300 "
                             "--router tr --metrics")
    assert not Path("state").exists()  # a dry run starts and records nothing


def test_dry_run_vllm_arm_has_no_proxy():
    r = CliRunner().invoke(app, ["up", "-r", "glm4.6", "--arm", "vllm", "--dry-run", "--engine", "vllm"])
    assert r.exit_code == 0
    assert "-m ThunderAgent" not in r.stdout and GLM in r.stdout.splitlines()


def test_run_one_point_on_des(tmp_path):
    d = tmp_path / "runs" / "ta-4"
    args = ["run", "-r", "glm4.6", "--arm", "thunderagent", "-n", "4", "-e", "des", "--duration", "4m",
            "-w", "1m-4m", "-o", str(d)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert {p.name for p in d.iterdir()} >= {"manifest.json", "steps.jsonl", "engine_metrics.jsonl", "predictions.jsonl"}
    m = json.loads((d / "manifest.json").read_text())
    assert (m["arm"], m["programs"], m["simulated"], m["profile"]) == ("thunderagent", 4, True, "glm4.6-8xh100")
    assert "thunderagent" in r.stdout and "SIMULATED" in r.stdout
    assert not list(d.parent.glob("*.incomplete"))
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "exists and is not empty" in again.stderr
