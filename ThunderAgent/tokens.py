"""Token estimation for scheduling: how big is a program's context when its next request arrives?

The policy needs a size before the engine has seen the request. Upstream divides the length of the whole
request JSON (tool schemas, sampling parameters and all) by one global chars-per-token ratio. We instead
start from the program's last *exact* size (usage of its previous response) and estimate only what is new:

    estimate = last usage.total_tokens + tokens(messages appended since that request)

The new messages' size is their text length divided by a chars-per-token ratio learned from usage
(per program once it has a sample, else global; EMA). The first request of a program (or one whose
history shrank, e.g. after context condensation) is estimated from all of its messages + tools content.

The same holds for the Responses API, whose `input` items (messages, function calls and their outputs)
grow like chat messages. A text completion's `prompt` is the whole context every time, so it is estimated
whole: its text / the ratio, plus the exact count of any token-id prompt.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DEFAULT_CHARS_PER_TOKEN = 4.0
EMA_ALPHA = 0.2
PER_MESSAGE_OVERHEAD = 4  # chat-template tokens around each message (role markers, separators)
MIN_RATIO, MAX_RATIO = 0.5, 20.0


def content_chars(value: Any) -> int:
    """Characters of model-visible text in a message `content` (string or list of parts)."""
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        n = 0
        for part in value:
            if isinstance(part, dict):
                text = part.get("text")
                n += len(text) if isinstance(text, str) else 0
            elif isinstance(part, str):
                n += len(part)
        return n
    return len(str(value))


def message_chars(msg: Any) -> int:
    """Characters of one chat message: content, reasoning, tool calls (name + arguments)."""
    if not isinstance(msg, dict):
        return len(str(msg))
    n = content_chars(msg.get("content"))
    for key in ("reasoning_content", "reasoning", "name"):
        v = msg.get(key)
        if isinstance(v, str):
            n += len(v)
    calls = msg.get("tool_calls")
    if isinstance(calls, list):
        for c in calls:
            fn = c.get("function") if isinstance(c, dict) else None
            if isinstance(fn, dict):
                n += len(str(fn.get("name") or "")) + len(str(fn.get("arguments") or ""))
    return n


def response_item_chars(item: Any) -> int:
    """Characters of one Responses API input item: a message (content parts), a function call (name +
    arguments), a function call's output, or reasoning (summary/content text)."""
    if isinstance(item, str):
        return len(item)
    if not isinstance(item, dict):
        return len(str(item))
    n = message_chars(item)
    for key in ("arguments", "output"):
        v = item.get(key)
        if isinstance(v, str):
            n += len(v)
        elif v is not None:
            n += content_chars(v)
    summary = item.get("summary")
    if isinstance(summary, list):
        n += content_chars(summary)
    return n


def prompt_size(prompt: Any) -> tuple[int, int]:
    """(characters of text, exact tokens of token ids) in a text completion's `prompt`: a string, a list of
    strings, a list of token ids, or a list of such lists."""
    if isinstance(prompt, str):
        return len(prompt), 0
    if not isinstance(prompt, list):
        return 0, 0
    if all(isinstance(t, int) for t in prompt):
        return 0, len(prompt)
    chars = tokens = 0
    for p in prompt:
        c, t = prompt_size(p) if isinstance(p, (str, list)) else (0, 0)
        chars, tokens = chars + c, tokens + t
    return chars, tokens


def tools_chars(tools: Any) -> int:
    if not tools:
        return 0
    return len(json.dumps(tools, separators=(",", ":"), ensure_ascii=False))


@dataclass(slots=True)
class ProgramTokenState:
    """What the estimator remembers per program (kept on the program's record)."""

    last_message_count: int = 0
    last_total: int | None = None  # usage.total_tokens of the last response that had usage
    last_prompt_chars: int = 0  # chars of the whole prompt (messages + tools) of the last request
    ratio: float | None = None  # this program's learned chars-per-token ratio


class TokenEstimator:
    """Estimates context tokens per request; learns chars-per-token from usage."""

    def __init__(self, initial_ratio: float = DEFAULT_CHARS_PER_TOKEN) -> None:
        self.global_ratio = initial_ratio
        self._global_samples = 0

    def ratio_for(self, st: ProgramTokenState) -> float:
        return st.ratio if st.ratio is not None else self.global_ratio

    def estimate(
        self,
        st: ProgramTokenState,
        messages: list[Any],
        tools: Any = None,
        chars: Callable[[Any], int] = message_chars,
        all_new: bool = False,
    ) -> int:
        """The full-context estimate for a request carrying `messages` (`chars` sizes one of them); updates
        the per-request memory in `st` (message count, prompt chars) so that `learn` can pair it with the
        response's usage. `all_new`: the backend holds the earlier turns (a Responses call with
        `previous_response_id`), so every message extends the last exact total."""
        ratio = self.ratio_for(st)
        all_chars = sum(chars(m) for m in messages) + tools_chars(tools)
        if st.last_total is not None and (all_new or 0 < st.last_message_count <= len(messages)):
            new = messages if all_new else messages[st.last_message_count :]
            # The previous response's completion is already inside last_total: skip the assistant
            # message that echoes it.
            if new and isinstance(new[0], dict) and new[0].get("role") == "assistant":
                new = new[1:]
            est = st.last_total + sum(int(chars(m) / ratio) + PER_MESSAGE_OVERHEAD for m in new)
        else:
            est = int(all_chars / ratio) + PER_MESSAGE_OVERHEAD * len(messages)
        st.last_message_count = len(messages)
        st.last_prompt_chars = all_chars
        return max(1, est)

    def estimate_prompt(self, st: ProgramTokenState, prompt: Any) -> int:
        """The estimate for a text completion: the whole prompt every time (text / ratio + token ids).
        The ratio is learned only from all-text prompts (token ids would skew it)."""
        text, ids = prompt_size(prompt)
        st.last_message_count = 0  # no message history to extend incrementally
        st.last_prompt_chars = text if ids == 0 else 0
        return max(1, int(text / self.ratio_for(st)) + ids)

    def learn(self, st: ProgramTokenState, prompt_tokens: int | None, total_tokens: int | None) -> None:
        """Record the exact usage of the response to the last estimated request."""
        if total_tokens is not None and total_tokens >= 0:
            st.last_total = int(total_tokens)
        else:
            st.last_total = None  # no exact anchor: the next request is estimated from scratch
        if not prompt_tokens or prompt_tokens <= 0 or st.last_prompt_chars <= 0:
            return
        sample = st.last_prompt_chars / prompt_tokens
        if not (MIN_RATIO <= sample <= MAX_RATIO):
            return
        st.ratio = sample if st.ratio is None else EMA_ALPHA * sample + (1 - EMA_ALPHA) * st.ratio
        if self._global_samples == 0:
            self.global_ratio = sample
        else:
            self.global_ratio = EMA_ALPHA * sample + (1 - EMA_ALPHA) * self.global_ratio
        self._global_samples += 1
