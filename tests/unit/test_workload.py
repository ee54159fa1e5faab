"""The workload model: parameters load with sources, sampled statistics match the parameters (and the
published figures they were chosen from), determinism, trace replay."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.traces import load_traces
from harness.workload import (LogNormal, Trajectory, Turn, WorkloadError, describe, load_workload_params,
                              sample_trajectories, sample_trajectory, trajectory_rng)
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
    ids = [f"i{i}" for i in range(2000)]
    p = load_workload_params("openhands")
    oh = describe(sample_trajectories(p, ids, 3))
    assert 23_840 < oh["deepest_prompt_p50"] < 69_274  # D4 thoughtworks p50 .. p95 of deepest prompts
    assert 300 <= oh["output_tokens_mean"] <= 520  # D3/D4: 300-500 per call, TraceLab ~520
    assert oh["observation_tokens_mean"] == pytest.approx(450, rel=0.05)  # D6: low end of 450-760
    assert 7_400 <= p.system_tokens <= 7_600  # D6: ~7,500 rendered shared prefix
    # the low end of the ranges reproduces the older, smaller-context evidence (thoughtworks p50)
    low = describe(sample_trajectories(p.at({r.path: 0.0 for r in p.ranges}), ids, 3))
    assert low["deepest_prompt_p50"] == pytest.approx(23_840, rel=0.15)
    high = describe(sample_trajectories(p.at({r.path: 1.0 for r in p.ranges}), ids, 3))
    assert high["observation_tokens_mean"] == pytest.approx(760, rel=0.05)  # AgentDiet's Trae
    mini = describe(sample_trajectories(load_workload_params("miniswe"), ids, 3))
    assert mini["turns_mean"] == pytest.approx(34.3, rel=0.05)  # D4 mini-swe-agent-plus mean
    assert mini["deepest_prompt_p50"] < 20_000  # "typically remain under 20K tokens"


@pytest.mark.parametrize("agent", AGENTS)
def test_every_input_but_measured_prep_time_has_a_reasoned_range(agent):
    p = load_workload_params(agent)
    paths = {r.path for r in p.ranges}
    assert {"system", "first_user", "turns", "output_tokens", "observation_tokens", "tool_time"} <= paths
    for r in p.ranges:
        assert r.reason_low and r.reason_high, r.path
        lo, hi = p.at({r.path: 0.0}), p.at({r.path: 1.0})
        assert lo != p != hi, r.path  # each end changes the model
    assert p.at({}) == p  # no position: the central values


def _minimal() -> dict:
    return {"name": "w", "system": {"tokens": 1000}, "first_user": {"template_tokens": 100,
            "issue": {"median": 300, "sigma": 0.5}}, "turns": {"median": 10, "sigma": 0.5, "min": 2, "max": 20},
            "output_tokens": {"median": 100, "sigma": 0.5}, "observation_tokens": {"median": 100, "sigma": 0.5},
            "tool_time": {"short": {"median": 0.5, "sigma": 0.5}, "long": {"median": 5, "sigma": 1},
                          "long_probability": 0.1, "max": 60}, "prep_time": {"programs": [1], "mean_s": [10.0]}}


def test_ranges_interpolate_piecewise_and_keep_integers():
    from harness.workload import parse_workload_params

    d = _minimal()
    d["system"].update(low=800, high=1600, range_source="tokenizer spread")
    d["turns"].update(low={"median": 6}, high={"median": 14, "sigma": 0.7}, reason_low="a", reason_high="b")
    d["tool_time"].update(high={"long": {"median": 9.0}, "long_probability": 0.3}, reason_high="slow tests")
    p = parse_workload_params(d, "w.toml")
    assert p.system_tokens == 1000 and p.turns.median == 10  # central by default
    assert p.at({"system": 0.0}).system_tokens == 800
    assert p.at({"system": 0.25}).system_tokens == 900 and isinstance(p.at({"system": 0.25}).system_tokens, int)
    assert p.at({"system": 0.75}).system_tokens == 1300
    hi = p.at({"turns": 1.0, "tool_time": 1.0})
    assert (hi.turns.median, hi.turns.sigma, hi.turns.max) == (14, 0.7, 20)
    assert hi.tool_time.long.median == 9.0 and hi.tool_time.long_probability == 0.3
    assert hi.tool_time.short.median == 0.5
    assert p.at({"tool_time": 0.0}) == p  # no low end given: the low end is central
    assert p.at({"turns": 0.0}).turns.sigma == 0.5  # sigma only changes towards the high end
    with pytest.raises(WorkloadError, match="no range for 'prep_time'"):
        p.at({"prep_time": 1.0})


@pytest.mark.parametrize("change, message", [
    (lambda d: d["turns"].update(low={"mediam": 5}, range_source="x"), r"w.toml \[turns\].low: unknown field 'mediam'"),
    (lambda d: d["turns"].update(low={"median": 5}), r"w.toml \[turns\]: a range needs its reason"),
    (lambda d: d["turns"].update(high={"median": "many"}, range_source="x"), r"\[turns\].high.median: must be a number"),
    (lambda d: d["turns"].update(low={"min": 30}, range_source="x"), r"w.toml \[turns\].low: \[turns\] needs 1 <= min <= max"),
    (lambda d: d["tool_time"].update(low=0.5, range_source="x"), None),
    (lambda d: d["prep_time"].update(low=3, range_source="x"), r"\[prep_time\].low: give a table"),
    (lambda d: d["turns"].update(reason_low="x"), r"\[turns\]: range reasons without a low or high value"),
])
def test_bad_ranges_are_one_line_errors_naming_file_and_field(change, message):
    from harness.workload import parse_workload_params

    d = _minimal()
    change(d)
    if message is None:  # a bare number applies to the table's main field
        assert parse_workload_params(d, "w.toml").at({"tool_time": 0.0}).tool_time.long_probability == 0.5
        return
    with pytest.raises(WorkloadError, match=message) as e:
        parse_workload_params(d, "w.toml")
    assert "\n" not in str(e.value)


def test_old_files_without_ranges_still_parse():
    from harness.workload import parse_workload_params

    p = parse_workload_params(_minimal(), "old.toml")
    assert p.ranges == () and p.system_tokens == 1000


def test_kv_limited_programs_is_kv_over_the_mean_nonshared_context():
    from harness.workload import context_stats, kv_limited_programs

    p = load_workload_params("openhands")
    st = context_stats(p, samples=500)
    assert st["shared_prefix"] == p.system_tokens
    assert st["mean_nonshared_context"] == pytest.approx(st["mean_context"] - p.system_tokens)
    n = kv_limited_programs(p, 1_000_000, samples=500)
    assert n == pytest.approx((1_000_000 - p.system_tokens) / st["mean_nonshared_context"])
    # longer contexts (the high ends) fit fewer programs
    assert kv_limited_programs(p.at({"observation_tokens": 1.0, "turns": 1.0}), 1_000_000, samples=500) < n


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


@pytest.mark.parametrize("change, message", [
    (lambda d: d["turns"].update(sigmaa=0.3), r"w.toml: unknown key 'sigmaa' in \[turns\] \(known: median, sigma"),
    (lambda d: d["first_user"]["issue"].update(mx=9), r"unknown key 'mx' in \[first_user\].issue"),
    (lambda d: d.update(turnz={}), r"unknown key 'turnz' in the top level"),
    (lambda d: d["turns"].update(median="40"), r"w.toml: bad value: \[turns\].median: expected a number, got '40'"),
    (lambda d: d["system"].update(tokens=True), r"\[system\].tokens: expected an integer, got True"),
    (lambda d: d["output_tokens"].update(sigma=-1), r"\[output_tokens\].sigma must be >= 0"),
    (lambda d: d["tool_time"].pop("long"), r"w.toml: missing key \[tool_time\].long"),
])
def test_schema_refuses_misspelt_keys_and_non_numbers(change, message):
    """The file's schema: a misspelt key or a quoted number is an error naming file, table and key (it used to
    be ignored or read as a number)."""
    from harness.workload import parse_workload_params

    d = _minimal()
    d["turns"]["source_note"] = "notes under any source* key stay allowed"
    change(d)
    with pytest.raises(WorkloadError, match=message) as e:
        parse_workload_params(d, "w.toml")
    assert "\n" not in str(e.value)
