"""Trace importers: every source format read from fixture files written in that format, the numbers checked
against what the fixture records, and a round trip through the canonical trace format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.traces import detect_format, import_traces, load_traces, write_traces
from harness.traces.format import TraceError
from harness.traces.tokens import chars_estimator, token_counter
from harness.workload import WorkloadError

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "traces"
EST = chars_estimator()  # deterministic whatever is installed


def _roundtrip(trajs, tmp_path):
    out = write_traces(tmp_path / "rt.jsonl", trajs, source="test")
    assert detect_format(out) == "trace"
    back = load_traces(out)
    assert back == trajs
    return back


@pytest.mark.parametrize("name, fmt, n", [
    ("openhands_v0_output.jsonl", "openhands-v0", 3), ("openhands_sdk", "openhands-sdk", 1),
    ("miniswe", "miniswe", 1), ("messages.jsonl", "messages", 2), ("steps.jsonl", "steps", 2),
])
def test_every_importer_roundtrips_its_fixture(name, fmt, n, tmp_path):
    assert detect_format(FIX / name) == fmt
    trajs, how = import_traces(FIX / name, counter=EST)
    assert len(trajs) == n and how
    _roundtrip(trajs, tmp_path)


def test_openhands_v0_uses_engine_usage_groups_tool_calls_and_marks_the_cap(tmp_path):
    (a, b, c), how = import_traces(FIX / "openhands_v0_output.jsonl", counter=EST)
    assert "engine usage" in how
    assert a.instance_id == "django__django-11099" and not a.censored
    assert [a.prompt_tokens(k) for k in range(3)] == [7321, 7600, 8050]  # usage.prompt_tokens per response
    assert [t.output_tokens for t in a.turns] == [64, 210, 40]
    assert [t.observation_tokens for t in a.turns] == [215, 240, 0]
    assert [t.tool for t in a.turns] == ["execute_bash", "str_replace_editor", "finish"]
    assert [round(t.tool_time_s, 3) for t in a.turns] == [1.2, 0.35, 0.0]  # observation ts - action ts
    assert 0 < a.system_tokens < 7321 and a.system_tokens > a.first_user_tokens  # split by counted text
    # b: usage only in metrics.token_usages; two tool calls of one response are one LLM call; cap 2 reached
    assert b.censored and len(b.turns) == 2
    assert [b.prompt_tokens(k) for k in range(2)] == [6900, 7400]
    assert b.turns[0].tool == "execute_bash,execute_bash" and b.turns[0].tool_time_s == pytest.approx(6.5)
    # c: the same run with usage only in llm_completions (older run_infer output)
    assert [c.prompt_tokens(k) for k in range(2)] == [6910, 7420] and [x.output_tokens for x in c.turns] == [125, 33]


def test_openhands_sdk_events_written_by_the_sdk(tmp_path):
    (t,), how = import_traces(FIX / "openhands_sdk", counter=EST)
    assert "estimate" in how  # events carry no usage: counted
    assert [x.tool for x in t.turns] == ["terminal", "terminal", ""]  # the last call is a text answer
    assert [x.tool_time_s for x in t.turns] == pytest.approx([0.75, 5.5, 0.0])
    assert t.turns[1].observation_tokens == EST.count("12 passed in 3.2s")
    # the same conversation as a V1-benchmarks style JSONL line ({"instance_id", "history": [events]})
    events = [json.loads(p.read_text()) for p in sorted((FIX / "openhands_sdk" / "events").glob("event-*.json"))]
    f = tmp_path / "output.jsonl"
    f.write_text(json.dumps({"instance_id": "x", "history": events}) + "\n")
    assert detect_format(f) == "openhands-sdk"
    (u,), _ = import_traces(f, counter=EST)
    assert u.turns == t.turns and u.instance_id == "x"


def test_miniswe_traj_reads_usage_timestamps_and_limits_exceeded():
    (t,), how = import_traces(FIX / "miniswe" / "astropy__astropy-12907.traj.json", counter=EST)
    assert t.instance_id == "astropy__astropy-12907" and t.censored  # exit_status LimitsExceeded (step_limit 3)
    assert [t.prompt_tokens(k) for k in range(3)] == [1450, 1532, 1650]
    assert [x.output_tokens for x in t.turns] == [38, 45, 52]
    assert [x.tool_time_s for x in t.turns] == pytest.approx([0.25, 0.75, 2.5])
    assert all(x.tool == "bash" for x in t.turns)


def test_generic_messages_count_text_and_accept_role_aliases():
    (a, b), _ = import_traces(FIX / "messages.jsonl", counter=EST)
    assert a.instance_id == "pydicom__pydicom-1694" and [x.tool for x in a.turns] == ["str_replace_editor", "finish"]
    lines = [json.loads(x) for x in (FIX / "messages.jsonl").read_text().splitlines()]
    sys_text = lines[0]["messages"][0]["content"]
    assert a.system_tokens == EST.count(sys_text)
    assert a.turns[0].observation_tokens == EST.count(lines[0]["messages"][3]["content"][0]["text"])
    assert len(b.turns) == 2 and b.instance_id.endswith(":2")  # nebius: role "ai", field "text"


def test_steps_jsonl_from_a_run():
    trajs, _ = import_traces(FIX / "steps.jsonl")
    a = trajs[0]
    assert a.system_tokens == 7104  # median cached tokens of first calls
    assert [a.prompt_tokens(k) for k in range(3)] == [7300, 7800, 8400]
    assert [x.tool_time_s for x in a.turns] == pytest.approx([1.5, 10.0, 0.0])


def test_canonical_format_prompt_tokens_instead_of_observations(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps({"instance_id": "i", "system_tokens": 100, "first_user_tokens": 50, "turns": [
        {"prompt_tokens": 150, "output_tokens": 10, "tool": "bash", "tool_time_s": 1.5},
        {"prompt_tokens": 200, "output_tokens": 5}]}) + "\n")
    (t,) = load_traces(f)
    assert [x.observation_tokens for x in t.turns] == [40, 0] and t.turns[0].tool == "bash"
    f.write_text(json.dumps({"system_tokens": 100, "first_user_tokens": 50, "turns": [
        {"prompt_tokens": 150, "output_tokens": 10, "observation_tokens": 1}, {"prompt_tokens": 200, "output_tokens": 5}]}))
    with pytest.raises(TraceError, match=r"t.jsonl:1 turn 2: prompt_tokens 200 disagrees"):
        load_traces(f)


@pytest.mark.parametrize("content, match", [
    ("", r"bad.jsonl: empty trace file"),
    ('{"instance_id": "a", "first_user_tokens": 5, "turns": [{"output_tokens": 3}]}\n{"instance_id": "b", "fir',
     r"bad.jsonl:2: truncated or malformed JSON line"),
    ('{"first_user_tokens": 5, "turns": [{"output_tokens": 3, "tokens_out": 1}]}\n', r"bad.jsonl:1 turn 1: unknown key"),
    ('{"first_user_tokens": 5, "turns": []}\n', r"bad.jsonl:1: 'turns' must be a non-empty list"),
    ('[{"role": "system", "content": "s"}, {"role": "narrator", "content": "x"}, {"role": "assistant", "content": "y"}]\n',
     r"bad.jsonl:1: message 2 has unknown role 'narrator'"),
    ('{"messages": [{"role": "user", "content": "only a question"}]}\n', r"bad.jsonl:1: no assistant message"),
    ('{"instance_id": "i", "history": [{"id": 1, "foo": 2}]}\n', r"bad.jsonl:1 history\[0\]: not an OpenHands event"),
    ('{"program_id": "p", "step": 1, "arrival": 0, "start": 0, "end": 1, "status": "error"}\n',
     r"bad.jsonl: no ok step records"),
    ('{"hello": "world"}\n', r"bad.jsonl:1: unrecognised trace record"),
])
def test_bad_trace_files_get_one_line_naming_file_and_record(tmp_path, content, match):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(WorkloadError, match=match) as e:
        load_traces(f, tokenizer=None)
    assert "\n" not in str(e.value)


def test_binary_garbage_is_one_line_too(tmp_path):
    for name in ("junk.jsonl", "junk.traj.json"):
        f = tmp_path / name
        f.write_bytes(b"\xff\xfe\x00garbage\x9c")
        with pytest.raises(TraceError, match=f"{name}: not UTF-8 text"):
            load_traces(f)


def test_bad_miniswe_and_sdk_files(tmp_path):
    f = tmp_path / "x.traj.json"
    text = (FIX / "miniswe" / "astropy__astropy-12907.traj.json").read_text()
    f.write_text(text[: len(text) // 2])
    with pytest.raises(TraceError, match=r"x.traj.json: truncated or malformed JSON"):
        load_traces(f)
    d = tmp_path / "conv"
    shutil.copytree(FIX / "openhands_sdk", d)
    ev = sorted((d / "events").glob("event-*.json"))[2]
    data = json.loads(ev.read_text())
    data["kind"] = "MysteryEvent"
    ev.write_text(json.dumps(data))
    with pytest.raises(TraceError, match=r"event 3: unknown event kind 'MysteryEvent'"):
        load_traces(d)


@pytest.mark.real
@pytest.mark.agents  # `tokenizers` comes with the agent extras (litellm)
def test_token_counter_prefers_a_real_tokenizer_file(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    c = token_counter(str(tmp_path))
    assert c.count("hello world hello") == 3 and "tokenizer.json" in c.name
    assert token_counter().count("") == 0


@pytest.mark.real
@pytest.mark.agents
def test_sdk_fixture_events_are_what_the_sdk_itself_reads_back(monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network at import
    import openhands.tools.terminal  # noqa: F401  (registers TerminalAction/TerminalObservation)
    from openhands.sdk.event import ActionEvent, Event

    files = sorted((FIX / "openhands_sdk" / "events").glob("event-*.json"))
    events = [Event.model_validate_json(f.read_text()) for f in files]
    assert sum(isinstance(e, ActionEvent) for e in events) == 2
