"""The workload model: parameters load with sources, sampled statistics match the parameters (and the
published figures they were chosen from), determinism, trace replay."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.workload import (LogNormal, Trajectory, Turn, WorkloadError, describe, load_traces,
                              load_workload_params, sample_trajectories, sample_trajectory, trajectory_rng)
from ThunderAgent.records import JsonlWriter, StepRecord

AGENTS = ["openhands", "miniswe"]


@pytest.mark.parametrize("agent", AGENTS)
def test_every_section_names_its_source(agent):
    p = load_workload_params(agent)
    for section in ("system", "first_user", "turns", "output_tokens", "observation_tokens", "tool_time", "prep_time"):
        assert any(k.startswith(section) for k in p.sources), f"{agent}: [{section}] has no source"
    assert p.prep_time.mean_s == (29.9, 32.8, 38.4, 47.2)  # ThunderAgent Fig. 2c


@pytest.mark.parametrize("agent", AGENTS)
def test_sampled_means_match_parameters(agent):
    p = load_workload_params(agent)
    ts = sample_trajectories(p, [f"i{i}" for i in range(3000)], seed=1, programs=72)
    turns = np.array([len(t.turns) for t in ts])
    outs = np.concatenate([[x.output_tokens for x in t.turns] for t in ts])
    obs = np.concatenate([[x.observation_tokens for x in t.turns] for t in ts])
    tools = np.concatenate([[x.tool_time_s for x in t.turns] for t in ts])
    assert turns.mean() == pytest.approx(p.turns.mean(), rel=0.03)
    assert outs.mean() == pytest.approx(p.output_tokens.mean(), rel=0.03)
    assert obs.mean() == pytest.approx(p.observation_tokens.mean(), rel=0.05)
    assert tools.mean() == pytest.approx(p.tool_time.mean(), rel=0.08)
    assert np.mean([t.prep_time_s for t in ts]) == pytest.approx(38.4, rel=0.03)  # Fig. 2c at 72
    assert turns.min() >= p.turns.min and turns.max() <= p.step_cap
    assert np.median(tools) < 1.0 < np.percentile(tools, 99) / 10  # mostly short, heavy tail
    assert all(t.system_tokens == p.system_tokens for t in ts)  # shared prefix


def test_statistics_land_near_the_published_figures():
    oh = describe(sample_trajectories(load_workload_params("openhands"), [f"i{i}" for i in range(2000)], 3))
    assert oh["deepest_prompt_p50"] == pytest.approx(23_840, rel=0.15)  # D4 thoughtworks p50
    assert 300 <= oh["output_tokens_mean"] <= 520  # D3/D4: 300-500 per call, TraceLab ~520
    mini = describe(sample_trajectories(load_workload_params("miniswe"), [f"i{i}" for i in range(2000)], 3))
    assert mini["turns_mean"] == pytest.approx(34.3, rel=0.05)  # D4 mini-swe-agent-plus mean
    assert mini["deepest_prompt_p50"] < 20_000  # "typically remain under 20K tokens"


def test_lognormal_clipped_mean_closed_form():
    d = LogNormal(100.0, 1.0, 20.0, 300.0)
    x = d.sample(np.random.default_rng(0), 400_000)
    assert x.mean() == pytest.approx(d.mean(), rel=0.005)
    assert LogNormal(5.0, 0.0).mean() == 5.0


def test_deterministic_and_order_independent():
    p = load_workload_params("miniswe")
    a = sample_trajectories(p, ["x", "y", "z"], seed=7)
    b = sample_trajectories(p, ["z", "y", "x"], seed=7)
    assert a == b[::-1]
    assert sample_trajectories(p, ["x"], seed=8) != a[:1]
    assert sample_trajectory(p, "x", trajectory_rng(7, "x", 1)) != a[0]  # another attempt, another draw


def test_prep_time_interpolates_and_clamps():
    pt = load_workload_params("openhands").prep_time
    assert pt.mean_at(24) == 29.9 and pt.mean_at(96) == 47.2
    assert pt.mean_at(60) == pytest.approx((32.8 + 38.4) / 2)
    assert pt.mean_at(8) == 29.9 and pt.mean_at(200) == 47.2


def test_unknown_workload_and_bad_file(tmp_path):
    with pytest.raises(WorkloadError, match="unknown workload"):
        load_workload_params("nope")
    bad = tmp_path / "w.toml"
    bad.write_text('name = "w"\n[system]\ntokens = 1\n')
    with pytest.raises(WorkloadError, match="missing key"):
        load_workload_params(str(bad))
    assert load_workload_params("mini-swe-agent").name == "miniswe"


def test_trace_replay_trajectory_lines(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps({"instance_id": "a", "system_tokens": 100, "first_user_tokens": 50, "prep_time_s": 2,
                             "turns": [{"output_tokens": 10, "observation_tokens": 5, "tool_time_s": 0.5},
                                       {"output_tokens": 20}]}) + "\n")
    (t,) = load_traces(f)
    assert t == Trajectory("a", 100, 50, 2.0, (Turn(10, 5, 0.5), Turn(20, 0, 0.0)))
    assert t.prompt_tokens(1) == 165


def test_trace_replay_from_step_records(tmp_path):
    path = tmp_path / "steps.jsonl"
    with JsonlWriter(path) as w:
        # program p: prompts 1000 -> 1300 (out 200, obs 100) -> 1700 (out 250, obs 150); tool gaps 2 s, 3 s
        w.write(StepRecord("p", 2, arrival=12.0, start=12.0, end=15.0, prompt_tokens=1300, completion_tokens=250,
                           cached_tokens=1000, instance_id="inst"))
        w.write(StepRecord("p", 1, arrival=0.0, start=0.0, end=10.0, prompt_tokens=1000, completion_tokens=200,
                           cached_tokens=600))
        w.write(StepRecord("p", 3, arrival=18.0, start=18.0, end=20.0, prompt_tokens=1700, completion_tokens=80))
        w.write(StepRecord("q", 1, arrival=0.0, start=0.0, end=1.0, status="error"))
    (t,) = load_traces(path)
    assert t.system_tokens == 600 and t.first_user_tokens == 400
    assert [x.output_tokens for x in t.turns] == [200, 250, 80]
    assert [x.observation_tokens for x in t.turns] == [100, 150, 0]
    assert [x.tool_time_s for x in t.turns] == [2.0, 3.0, 0.0]
    assert [t.prompt_tokens(k) for k in range(3)] == [1000, 1300, 1700]


def test_trace_errors(tmp_path):
    with pytest.raises(WorkloadError, match="does not exist"):
        load_traces(tmp_path / "none.jsonl")
    f = tmp_path / "x.jsonl"
    f.write_text('{"foo": 1}\n')
    with pytest.raises(WorkloadError, match="unrecognised trace record"):
        load_traces(f)
    f.write_text('{"first_user_tokens": 5, "turns": [{"output_tokens": -1}]}\n')
    with pytest.raises(WorkloadError, match="non-negative integer"):
        load_traces(f)
