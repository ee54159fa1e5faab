"""Token estimator, the "default" pass-through policy, the registry, the CLI and the profile writer."""

from __future__ import annotations

import csv
import dataclasses
import subprocess
import sys

import pytest

from ThunderAgent.cli import build_parser, parse_config
from ThunderAgent.config import Config
from ThunderAgent.policy import make_policy
from ThunderAgent.policy.base import Phase, Proceed, State
from ThunderAgent.policy.passthrough import PassthroughPolicy
from ThunderAgent.programs import ProgramRegistry
from ThunderAgent.records import StepRecord, read_step_records
from ThunderAgent.records import CSV_COLUMNS, ProfileWriter, csv_row
from ThunderAgent.tokens import ProgramTokenState, TokenEstimator, message_chars

# --- tokens ---------------------------------------------------------------------------------------------


def test_first_request_estimates_content_not_json():
    est = TokenEstimator()
    st = ProgramTokenState()
    msgs = [{"role": "user", "content": "x" * 400}]
    assert est.estimate(st, msgs) == 100 + 4
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    assert est.estimate(ProgramTokenState(), msgs, tools) > 104


def test_incremental_estimate_and_learning():
    est = TokenEstimator()
    st = ProgramTokenState()
    msgs = [{"role": "user", "content": "x" * 400}]
    est.estimate(st, msgs)
    est.learn(st, prompt_tokens=200, total_tokens=250)  # this tokenizer: 2 chars/token
    assert st.ratio == 2.0 and est.global_ratio == 2.0
    msgs += [{"role": "assistant", "content": "y" * 100}, {"role": "tool", "content": "z" * 60}]
    assert est.estimate(st, msgs) == 250 + 30 + 4
    # no usage on the last response: start from scratch (whole content / ratio)
    est.learn(st, None, None)
    assert est.estimate(st, msgs) == (400 + 100 + 60) // 2 + 3 * 4
    # a shrunk history (condensation) is not treated as incremental
    est.learn(st, 100, 120)
    assert est.estimate(st, msgs[:1]) == int(400 / est.ratio_for(st)) + 4


def test_message_chars_counts_parts_and_tool_calls():
    m = {
        "role": "assistant",
        "content": [{"type": "text", "text": "abc"}, {"type": "image_url"}],
        "tool_calls": [{"function": {"name": "ls", "arguments": '{"p":1}'}}],
    }
    assert message_chars(m) == 3 + 2 + 7


def test_outlier_ratio_samples_ignored():
    est = TokenEstimator()
    st = ProgramTokenState()
    est.estimate(st, [{"role": "user", "content": "x"}])
    est.learn(st, prompt_tokens=1000, total_tokens=1001)
    assert st.ratio is None and est.global_ratio == 4.0


# --- passthrough policy ------------------------------------------------------------------------------


def test_passthrough_phases_and_accounting():
    p = PassthroughPolicy(Config(backends=("a", "b"), router="default").policy_settings())
    assert p.on_arrival("x", 100, 0.0) == Proceed("a")
    assert p.on_arrival("x", 120, 0.0) == Proceed("a")  # concurrent request, same program
    v = p.program("x")
    assert v.phase == Phase.REASONING and v.inflight == 2 and v.state == State.ACTIVE
    assert p.on_request_end("x", 1.0, 150) == []
    assert p.program("x").phase == Phase.REASONING  # still one in flight
    p.on_request_end("x", 1.0, None)
    v = p.program("x")
    assert v.phase == Phase.ACTING and v.tokens == 150
    b = {bv.url: bv for bv in p.backends()}
    assert (b["a"].acting_tokens, b["a"].reasoning_tokens, b["a"].program_count, b["a"].acting_count) == (
        150,
        0,
        1,
        1,
    )
    p.on_progress("x", 20)
    assert p.program("x").tokens == 170
    assert p.release("x", 2.0) == (True, [])
    assert p.release("x", 2.0) == (False, [])
    assert p.on_request_end("x", 3.0, 5) == []  # an end after release is ignored
    b = {bv.url: bv for bv in p.backends()}
    assert (b["a"].acting_tokens, b["a"].program_count) == (0, 0)


def test_passthrough_least_loaded_healthy():
    p = PassthroughPolicy(Config(backends=("a", "b", "c"), router="default").policy_settings())
    p.set_healthy("a", False, 0)
    assert [p.on_arrival(x, 1, 0).backend for x in "pqr"] == ["b", "c", "b"]
    p.set_healthy("b", False, 0)
    p.set_healthy("c", False, 0)
    assert p.on_arrival("s", 1, 0).backend == "a"  # none healthy: the first backend
    assert p.tick(5.0) == [] and p.stats().queue_length == 0


def test_make_policy():
    assert make_policy(Config(router="default").policy_settings()).name == "default"
    assert make_policy(Config(router="tr").policy_settings()).name == "tr"
    with pytest.raises(ValueError):
        make_policy(Config(router="nope").policy_settings())


# --- registry -------------------------------------------------------------------------------------------


def test_registry_released_ids_and_idle_candidates(caplog):
    r = ProgramRegistry()
    rec, created = r.get_or_create("a", 0.0)
    assert created and r.get_or_create("a", 1.0) == (rec, False)
    r.remove("a")
    assert r.was_released("a")
    with caplog.at_level("WARNING"):
        _, created = r.get_or_create("a", 2.0)
    assert created and "released program 'a'" in caplog.text
    r.get_or_create("b", 5.0)
    r.get("b").inflight = 1
    assert [x.program_id for x in r.idle_candidates(100.0, 50.0)] == ["a"]
    assert r.idle_candidates(100.0, 0.0) == []


# --- CLI ------------------------------------------------------------------------------------------------


def test_every_config_field_is_a_flag_with_help():
    opts = {a.dest: a for a in build_parser()._actions}
    for f in dataclasses.fields(Config):
        if f.metadata.get("flag", True):
            assert f.name in opts, f.name
            assert opts[f.name].help and opts[f.name].option_strings == ["--" + f.name.replace("_", "-")]


def test_defaults_match_upstream_except_host():
    c = parse_config([])
    assert c == Config()
    assert (
        c.port,
        c.router,
        c.backend_type,
        c.scheduler_interval,
        c.metrics_interval,
        c.acting_token_weight,
    ) == (8300, "tr", "vllm", 5.0, 5.0, 1.0)
    assert (c.profile, c.metrics, c.use_acting_token_decay, c.host) == (False, False, False, "127.0.0.1")


def test_flag_parsing():
    c = parse_config(
        [
            "--backends",
            " http://a:1 , http://b:2",
            "--profile",
            "--metrics",
            "--use-acting-token-decay",
            "--router",
            "default",
            "--port",
            "9000",
            "--admin-token",
            "t",
            "--idle-ttl",
            "0",
        ]
    )
    assert c.backends == ("http://a:1", "http://b:2") and c.profile and c.metrics and c.use_acting_token_decay
    assert (c.router, c.port, c.admin_token, c.idle_ttl) == ("default", 9000, "t", 0.0)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--port", "x"], "--port"),
        (["--port", "70000"], "--port"),
        (["--router", "fast"], "--router"),
        (["--backends", "localhost:8000"], "--backends"),
        (["--backends", ","], "--backends"),
        (["--scheduler-interval", "0"], "--scheduler-interval"),
        (["--max-body-bytes", "-1"], "--max-body-bytes"),
        (["--bogus"], "--bogus"),
    ],
)
def test_bad_flags_one_line_exit_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and err.startswith("thunderagent: error:")


def test_help_explains_binding():
    r = subprocess.run(
        [sys.executable, "-m", "ThunderAgent", "--help"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0
    assert "127.0.0.1" in r.stdout and "--host 0.0.0.0" in r.stdout and "--admin-token" in r.stdout


# --- profile writer -------------------------------------------------------------------------------------


def test_profile_writer_csv_and_jsonl(tmp_path):
    w = ProfileWriter(tmp_path / "prof")
    rec = StepRecord(
        program_id="p",
        step=1,
        arrival=10.0,
        start=10.5,
        end=12.0,
        first_token=11.0,
        prompt_tokens=100,
        completion_tokens=5,
        cached_tokens=50,
        pause_s=0.5,
    )
    w.submit(rec, csv_row(rec, 1, 0.0))
    rec2 = StepRecord(
        program_id="p", step=2, arrival=13.0, start=13.0, end=13.2, status="error", http_status=502
    )
    w.submit(rec2, None)
    w.close()
    rows = list(csv.reader(open(tmp_path / "prof" / "step_profiles.csv")))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert rows[1] == ["p", "1", "0.5000", "1.0000", "0.5000", "0.0000", "0.5000", "12.0000"]
    assert len(rows) == 2
    recs = read_step_records(tmp_path / "prof" / "step_records.jsonl")
    assert [r.status for r in recs] == ["ok", "error"] and recs[0].cached_tokens == 50
    # a restart appends without a second header
    w = ProfileWriter(tmp_path / "prof")
    w.submit(rec, csv_row(rec, 2, 1.0))
    w.close()
    rows = list(csv.reader(open(tmp_path / "prof" / "step_profiles.csv")))
    assert len(rows) == 3 and rows[2][1] == "2"


def test_csv_row_unknown_cached_and_non_streaming():
    rec = StepRecord(program_id="p", step=1, arrival=0.0, start=0.0, end=2.0, prompt_tokens=10)
    row = csv_row(rec, 1, 0.0)
    assert row[2:5] == ["0.0000", "0.0000", "0.0000"] and row[6] == ""


def test_estimate_prompt_text_and_token_ids():
    from ThunderAgent.tokens import prompt_size

    est = TokenEstimator()
    st = ProgramTokenState()
    assert prompt_size("abcd") == (4, 0) and prompt_size([1, 2, 3]) == (0, 3)
    assert prompt_size([[1, 2], [3]]) == (0, 3) and prompt_size(["ab", "cd"]) == (4, 0)
    assert prompt_size(None) == (0, 0) and prompt_size({"x": 1}) == (0, 0)
    assert est.estimate_prompt(st, "x" * 400) == 100
    est.learn(st, 200, 210)  # 400 chars were 200 tokens: 2 chars per token
    assert est.estimate_prompt(st, "x" * 400) == 200
    assert est.estimate_prompt(st, list(range(77))) == 77  # token ids are exact
    est.learn(st, 77, 80)
    assert st.ratio == 2.0  # a token-id prompt does not teach the text ratio


def test_estimate_responses_items_incrementally():
    from ThunderAgent.tokens import response_item_chars

    call = {"type": "function_call", "call_id": "c", "name": "ls", "arguments": "x" * 38}
    out = {"type": "function_call_output", "call_id": "c", "output": "y" * 40}
    assert response_item_chars(call) == 40 and response_item_chars(out) == 40
    est = TokenEstimator()
    st = ProgramTokenState()
    items = [{"role": "user", "content": [{"type": "input_text", "text": "z" * 400}]}]
    est.estimate(st, items, chars=response_item_chars)
    est.learn(st, 100, 120)
    # the next turn appends a call and its output: last exact total + the new items only
    assert est.estimate(st, [*items, call, out], chars=response_item_chars) == 120 + 2 * (10 + 4)
    # with previous_response_id the engine holds the earlier turns: each call sends only new items
    est.learn(st, 140, 150)
    assert est.estimate(st, [out], chars=response_item_chars, all_new=True) == 150 + 10 + 4


def test_config_from_flags_returns_a_validated_config_or_raises_one_line():
    from ThunderAgent.cli import CliError, config_from_flags

    cfg = config_from_flags(["--router", "tr", "--tr-mode", "fixed", "--low-watermark", "0.8"])
    assert cfg.tr_mode == "fixed" and cfg.policy_settings().low_watermark == 0.8
    for argv, flag in ((["--no-such-flag"], "--no-such-flag"), (["--low-watermark", "1.5"], "--low-watermark"),
                       (["--tr-mode", "psychic"], "--tr-mode"), (["--acting-decay", "exp", "--acting-decay-half-life",
                                                                  "0"], "--acting-decay-half-life")):
        with pytest.raises(CliError, match=flag) as e:
            config_from_flags(argv)
        assert "\n" not in str(e.value)


def test_upstreams_decay_switch_selects_exp_decay_in_the_policy_settings():
    assert Config(use_acting_token_decay=True).policy_settings().acting_decay == "exp"
    assert Config().policy_settings().acting_decay == "off"
