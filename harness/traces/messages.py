"""Generic chat-messages JSONL: one trajectory per line, as the SWE-Gym, SWE-rebench and nebius
trajectory sets publish them.

A line is either a list of messages, or an object holding one under "messages" (SWE-Gym, SWE-rebench)
or "trajectory" (nebius SWE-agent-trajectories), with an optional "instance_id" (or "id"). A message is
{"role": ..., "content": ...} (content a string or OpenAI content parts; nebius writes "text"); assistant
messages may carry OpenAI "tool_calls" ([{"function": {"name", "arguments"}}]), tool messages a "name".
Roles: system, user, assistant, tool; the aliases "ai" (nebius), "human"/"gpt" (ShareGPT) and
"function" (OpenAI's legacy role) are accepted. These sets keep no timestamps or usage: tool times are 0,
tokens are counted (harness/traces/tokens.py), and no run is marked censored (the cap is not recorded).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.traces.conversation import Msg, build_trajectory, text_of
from harness.traces.format import TraceError, read_json_lines
from harness.traces.tokens import TokenCounter
from harness.workload import Trajectory

ALIASES = {"ai": "assistant", "gpt": "assistant", "human": "user", "function": "tool"}


def message(m: Any, where: str) -> Msg:
    if not isinstance(m, dict) or not isinstance(m.get("role", m.get("from")), str):
        raise TraceError(f"{where}: a message must be an object with a 'role'")
    role = str(m.get("role", m.get("from")))
    role = ALIASES.get(role, role)
    text = text_of(m.get("content", m.get("text", m.get("value"))))
    tools = []
    for call in m.get("tool_calls") or []:
        fn = call.get("function", call) if isinstance(call, dict) else {}
        tools.append(str(fn.get("name", "")))
        args = fn.get("arguments", "")
        text += "\n" + (args if isinstance(args, str) else json.dumps(args))
    tool = ",".join(t for t in tools if t) if role == "assistant" else str(m.get("name") or "")
    return Msg(role, text, tool)


def read_messages(path: Path, counter: TokenCounter) -> tuple[list[Trajectory], str]:
    out, how = [], ""
    for i, rec in read_json_lines(path):
        where = f"{path}:{i}"
        iid = where
        msgs = rec
        if isinstance(rec, dict):
            iid = str(rec.get("instance_id", rec.get("id", where)))
            msgs = rec.get("messages", rec.get("trajectory"))
        if not isinstance(msgs, list) or not msgs:
            raise TraceError(f"{where}: expected a list of messages (or an object with 'messages')")
        traj, how = build_trajectory(iid, [message(m, f"{where} message {k + 1}") for k, m in enumerate(msgs)],
                                     counter, where)
        out.append(traj)
    return out, f"messages jsonl; {how}"
