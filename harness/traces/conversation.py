"""From a recorded conversation to a Trajectory: the step every message-based importer shares.

An importer turns its source into a list of `Msg` (role, text, tool name, timestamp, and for assistant
messages the engine's `usage` when the source kept it); `build_trajectory` then cuts it into calls:
  * the shared prefix = the system message(s) (system prompt + tool schemas), the first user message(s)
    before the first assistant message = the instance's instruction;
  * every assistant message is one LLM call; what follows it up to the next assistant message (tool
    results, user nudges) is that call's observation;
  * tool time = timestamp of the last observation message - timestamp of the assistant message (both are
    taken when the event is recorded: after the response, after the tool), 0 where either is missing.
Token counts: when every call carries usage, outputs are the completion tokens and observations the growth
of the prompt (exactly what the engine saw, chat template included); the first prompt is split between
system and instance in the ratio of their counted text. Otherwise every message's text is counted with the
TokenCounter (content only: no chat-template tokens) and the trace says so in its `source`.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.traces.format import TraceError
from harness.traces.tokens import TokenCounter
from harness.workload import Trajectory, Turn

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Msg:
    role: str  # system | user | assistant | tool
    text: str
    tool: str = ""  # assistant: the tool(s) it called; tool: the tool that answered
    ts: float | None = None  # seconds (any epoch), when the event was recorded
    prompt_tokens: int | None = None  # assistant: usage.prompt_tokens of the call that produced it
    completion_tokens: int | None = None  # assistant: usage.completion_tokens


def build_trajectory(instance_id: str, msgs: list[Msg], counter: TokenCounter, where: str, *,
                     prep_time_s: float = 0.0, censored: bool = False) -> tuple[Trajectory, str]:
    """(trajectory, how its tokens were counted). Raises TraceError naming `where` on a bad conversation."""
    for i, m in enumerate(msgs):
        if m.role not in ROLES:
            raise TraceError(f"{where}: message {i + 1} has unknown role {m.role!r} (known: {', '.join(ROLES)})")
    calls = [i for i, m in enumerate(msgs) if m.role == "assistant"]
    if not calls:
        raise TraceError(f"{where}: no assistant message (no LLM call to replay)")
    head = msgs[:calls[0]]
    if not any(m.role == "user" for m in head):
        raise TraceError(f"{where}: no user message before the first assistant message")
    sys_text = "\n".join(m.text for m in head if m.role == "system")
    user_text = "\n".join(m.text for m in head if m.role != "system")
    sys_n, user_n = counter.count(sys_text), counter.count(user_text)
    measured = all(msgs[i].prompt_tokens is not None and msgs[i].completion_tokens for i in calls)
    if measured:
        prompts = [int(msgs[i].prompt_tokens or 0) for i in calls]
        if any(b < a for a, b in zip(prompts, prompts[1:])):
            measured = False  # the context was condensed/truncated somewhere: fall back to counting
    turns: list[Turn] = []
    for j, i in enumerate(calls):
        a = msgs[i]
        end = calls[j + 1] if j + 1 < len(calls) else len(msgs)
        obs_msgs = msgs[i + 1:end]
        if measured:
            out = int(a.completion_tokens or 0)
            obs = max(0, prompts[j + 1] - prompts[j] - out) if j + 1 < len(calls) else 0
        else:
            out = max(1, counter.count(a.text))
            obs = sum(counter.count(m.text) for m in obs_msgs)
        stamps = [m.ts for m in obs_msgs if m.ts is not None]
        tool_time = max(0.0, stamps[-1] - a.ts) if stamps and a.ts is not None else 0.0
        turns.append(Turn(out, obs, round(float(tool_time), 6), a.tool))  # microseconds, as written
    if measured:
        first = prompts[0]
        sys_t = round(first * sys_n / (sys_n + user_n)) if sys_n + user_n else 0
        how = f"tokens: engine usage (system/instance split by {counter.name})"
    else:
        first, sys_t = sys_n + user_n, sys_n
        how = f"tokens: {counter.name}"
    traj = Trajectory(instance_id=instance_id, system_tokens=sys_t, first_user_tokens=first - sys_t,
                      prep_time_s=prep_time_s, turns=tuple(turns), censored=censored)
    return traj, how


def text_of(content: object) -> str:
    """Message content as text: a string, or OpenAI/litellm content parts ([{type: text, text}, ...])."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(text_of(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)
    if isinstance(content, dict):
        return str(content.get("text", ""))
    return str(content)
