"""`thunderbench workload import|fit|show` and `--workload trace:PATH` on run/reproduce."""

from __future__ import annotations

import json
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.agents.synthetic import SyntheticAgent
from harness.cli import app
from harness.sim.des import run_des
from harness.traces import load_traces, write_traces
from harness.workload import Trajectory, Turn, load_workload_params, parse_workload_params, sample_trajectories
from ThunderAgent.records import read_step_records

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "traces"


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("THUNDERBENCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error_line(result, *needles: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, lines
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _sampled(tmp_path, n=120, cap=50) -> Path:
    params = load_workload_params("openhands")
    trajs = [replace(t, censored=len(t.turns) >= cap)
             for t in sample_trajectories(params, [f"i{k}" for k in range(n)], seed=5, programs=24)]
    return write_traces(tmp_path / "sampled.jsonl", trajs)


def test_import_converts_every_fixture_into_one_trace_file(tmp_path):
    r = invoke("workload", "import", FIX / "openhands_v0_output.jsonl", FIX / "miniswe", FIX / "messages.jsonl",
               FIX / "openhands_sdk", FIX / "steps.jsonl", "-o", tmp_path / "all.jsonl")
    assert r.exit_code == 0, r.output
    trajs = load_traces(tmp_path / "all.jsonl")
    assert len(trajs) == 3 + 1 + 2 + 1 + 2
    first = json.loads((tmp_path / "all.jsonl").read_text().splitlines()[0])
    assert "openhands-v0" in first["source"] and first["turns"][0]["prompt_tokens"] == 7321


def test_fit_writes_a_loadable_parameter_file_naming_its_traces(tmp_path):
    src = _sampled(tmp_path)
    r = invoke("workload", "fit", src, "--cap", "50", "--template-tokens", "700", "--programs", "24",
               "-o", tmp_path / "fit.toml")
    assert r.exit_code == 0, r.output
    assert "fitted 120 trajectories" in r.stdout
    data = tomllib.loads((tmp_path / "fit.toml").read_text())
    p = parse_workload_params(data, "fit.toml")
    assert p.name == "fit" and p.turns.max == 50 and p.first_user_template_tokens == 700
    assert str(src) in data["turns"]["source"]
    # the fitted file drives a run like a bundled workload does
    r = invoke("workload", "show", tmp_path / "fit.toml", "--json", "--samples", "50")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["trajectories"] == 50


def test_fit_of_a_bad_trace_writes_nothing(tmp_path):
    bad = tmp_path / "bad.jsonl"
    good = _sampled(tmp_path).read_text().splitlines()
    bad.write_text("\n".join(good[:10]) + "\n" + good[10][: len(good[10]) // 2])
    one_error_line(invoke("workload", "fit", bad, "-o", tmp_path / "out.toml"), "bad.jsonl:11", "truncated")
    assert not (tmp_path / "out.toml").exists() and list(tmp_path.glob(".out.toml*")) == []
    one_error_line(invoke("workload", "import", bad, "-o", tmp_path / "o.jsonl"), "bad.jsonl:11")
    assert not (tmp_path / "o.jsonl").exists()
    one_error_line(invoke("workload", "fit", FIX / "messages.jsonl", "-o", tmp_path / "m.toml"), "need at least 5")


def test_show_params_and_traces_with_a_figure(tmp_path):
    r = invoke("workload", "show", "openhands", "--json", "--samples", "200")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    from harness.workload import load_workload_params

    assert s["trajectories"] == 200 and s["shared_prefix_tokens"] == load_workload_params("openhands").system_tokens
    assert s["deepest_context_p95"] >= s["deepest_context_p50"] > s["mean_context_per_call"] > 0
    assert 0 < s["censored_share"] < 1 and s["growth_per_turn_mean"] > 0
    r = invoke("workload", "show", FIX / "openhands_v0_output.jsonl", "-o", tmp_path / "ctx.png")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "ctx.png").read_bytes()[:4] == b"\x89PNG"
    assert "deepest_context_max" in r.stdout and "8,090" in r.stdout  # 8050 prompt + 40 output
    one_error_line(invoke("workload", "show", "openhands", "-o", tmp_path / "x.txt"), "x.txt")
    one_error_line(invoke("workload", "show", tmp_path / "missing.jsonl"), "does not exist")


def _small_traces(tmp_path) -> Path:
    trajs = [Trajectory(f"t{i}", 300, 100 + 20 * i, 0.0,
                        tuple(Turn(40 + i, 60, 2.0, "bash") for _ in range(3 + i)), censored=False) for i in range(4)]
    return write_traces(tmp_path / "small.jsonl", trajs)


def test_run_replays_traces_through_des(tmp_path):
    src = _small_traces(tmp_path)
    r = invoke("run", "-r", "tiny-cpu", "--arm", "vllm", "-n", "2", "-e", "des", "--duration", "3m", "-w", "0m-3m",
               "-o", tmp_path / "run", "--workload", f"trace:{src}")
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["workload"] == f"trace:{src}"
    steps = [s for s in read_step_records(tmp_path / "run" / "steps.jsonl") if s.status == "ok"]
    firsts = {s.prompt_tokens for s in steps if s.step == 1}
    assert firsts and firsts <= {400, 420, 440, 460}  # system 300 + first user of some trace
    assert {s.completion_tokens for s in steps} <= {40, 41, 42, 43}


def test_workload_errors_before_anything_runs(tmp_path):
    one_error_line(invoke("reproduce", "tiny-cpu", "-e", "des", "--workload", f"trace:{tmp_path / 'nope.jsonl'}",
                          "-o", tmp_path / "r"), "does not exist")
    one_error_line(invoke("run", "-r", "tiny-cpu", "--arm", "vllm", "-n", "2", "-e", "des", "-o", tmp_path / "r2",
                          "--workload", f"trace:{FIX / 'openhands_v0_output.jsonl'}"), "max_model_len 2048")
    one_error_line(invoke("run", "-r", "tiny-cpu", "--arm", "vllm", "-n", "2", "-e", "des", "-o", tmp_path / "r3",
                          "--workload", "nosuch"), "unknown workload 'nosuch'")
    assert not (tmp_path / "r").exists() and not (tmp_path / "r2").exists()


def test_des_and_the_synthetic_agent_draw_programs_from_the_pool_by_seed(tmp_path):
    pool = load_traces(_small_traces(tmp_path))

    def ids(seed):
        res = run_des("tiny-cpu", programs=2, duration_s=120.0, seed=seed, workload=None, trajectories=pool,
                      resample=True)
        return [s.instance_id for s in res.steps if s.step == 1]

    a, b, c = ids(1), ids(1), ids(2)
    assert a == b and a != c and set(a) <= {"t0", "t1", "t2", "t3"}
    agent = SyntheticAgent(traces=pool, seed=1, resample=True)
    picks = [agent.trajectory_for({"instance_id": f"x{i}"}).turns for i in range(40)]
    assert picks == [SyntheticAgent(traces=pool, seed=1, resample=True).trajectory_for({"instance_id": f"x{i}"}).turns
                     for i in range(40)]
    assert len({len(p) for p in picks}) == 4  # every trace of the pool is drawn
    other = [SyntheticAgent(traces=pool, seed=2, resample=True).trajectory_for({"instance_id": f"x{i}"}).turns
             for i in range(40)]
    assert other != picks
