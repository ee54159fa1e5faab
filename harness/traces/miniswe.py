"""mini-swe-agent trajectories: the `<instance>.traj.json` files its `DefaultAgent.save` writes
(trajectory_format "mini-swe-agent-1.1"; minisweagent/agents/default.py `serialize`).

The file is one JSON object: {"info": {"exit_status", "config": {"agent": {"step_limit", ...}},
"model_stats": {"api_calls"}, ...}, "messages": [...], "trajectory_format": ...}. Messages are the
conversation as sent to the model: system, user (the instance template), then per step one assistant
message whose "extra" holds "actions", the litellm "response" (with "usage") and a "timestamp" taken when
the response came back, followed by the observation(s) (role "tool" for tool-calling models, "user" for the
text-based one) whose "extra.timestamp" is taken after the command ran. A final {"role": "exit"} message
records why the run stopped; "LimitsExceeded" (the step or cost limit) marks the trajectory censored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.traces.conversation import Msg, build_trajectory, text_of
from harness.traces.format import TraceError
from harness.traces.tokens import TokenCounter
from harness.workload import Trajectory


def _usage(extra: dict[str, Any]) -> tuple[int | None, int | None]:
    resp = extra.get("response")
    u = resp.get("usage") if isinstance(resp, dict) else None
    if not isinstance(u, dict):
        return None, None
    return u.get("prompt_tokens"), u.get("completion_tokens")


def read_traj(path: Path, counter: TokenCounter) -> tuple[Trajectory, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TraceError(f"{path}: truncated or malformed JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise TraceError(f"{path}: not a mini-swe-agent trajectory (no 'messages' list)")
    if not data["messages"]:
        raise TraceError(f"{path}: empty trajectory (no messages)")
    info = data.get("info") if isinstance(data.get("info"), dict) else {}
    msgs: list[Msg] = []
    exit_status = str(info.get("exit_status") or "")
    for k, m in enumerate(data["messages"]):
        where = f"{path} message {k + 1}"
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise TraceError(f"{where}: a message must be an object with a 'role'")
        extra = m.get("extra") if isinstance(m.get("extra"), dict) else {}
        if m["role"] == "exit":
            exit_status = str(extra.get("exit_status") or m.get("content") or exit_status)
            continue
        text = text_of(m.get("content"))
        tool = ""
        if m["role"] == "assistant":
            names = [str((c.get("function") or {}).get("name", "")) for c in m.get("tool_calls") or []
                     if isinstance(c, dict)]
            for c in m.get("tool_calls") or []:
                if isinstance(c, dict):
                    text += "\n" + str((c.get("function") or {}).get("arguments", ""))
            tool = ",".join(n for n in names if n) or ("bash" if extra.get("actions") else "")
            p, c = _usage(extra)
            msgs.append(Msg("assistant", text, tool, extra.get("timestamp"), p, c))
        else:
            msgs.append(Msg(m["role"], text, "bash" if m["role"] == "tool" else "", extra.get("timestamp")))
    iid = path.name.removesuffix(".traj.json") if path.name.endswith(".traj.json") else path.stem
    iid = str(info.get("instance_id") or iid)
    return build_trajectory(iid, msgs, counter, str(path), censored=exit_status == "LimitsExceeded")


def read_miniswe(paths: list[Path], counter: TokenCounter) -> tuple[list[Trajectory], str]:
    out, how = [], ""
    for p in paths:
        t, how = read_traj(p, counter)
        out.append(t)
    return out, f"mini-swe-agent traj.json; {how}"
