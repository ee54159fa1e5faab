"""OpenHands V0 evaluation output: `output.jsonl` of evaluation/benchmarks/swe_bench/run_infer.py, one
EvalOutput per line (evaluation/utils/shared.py): {"instance_id", "instruction", "metadata":
{"max_iterations", ...}, "history": [...], "metrics": {...}, "error", ...}.

`history` holds the serialized events (openhands/events/serialization/event.py `event_to_dict`):
actions {"id", "timestamp", "source", "action": "system"|"message"|"run"|"str_replace_editor"|..., "args":
{...}, "tool_call_metadata": {"function_name", "tool_call_id", "model_response": {"id", "usage": {...}},
"total_calls_in_response"}} and observations {"id", "timestamp", "source", "observation": ..., "content",
"extras": {...}, "cause": <action id>}. Mapping:
  * the "system" action (system prompt; its args.tools are the tool schemas) -> the shared prefix;
  * user "message" actions -> user messages (the first is the instruction);
  * agent actions -> LLM calls, grouped by the model response that produced them (one response may emit
    several tool calls); usage from that response, else from metrics.token_usages in call order, else from
    `llm_completions` (older run_infer versions save the LLM's completion log there: one {"messages",
    "response"} per call, the response with its usage);
  * observations -> the tool result appended to the next prompt; bookkeeping events
    (agent_state_changed, null, change_agent_state, recall and condensation actions) are skipped.
A run whose error says the iteration limit was reached, or with max_iterations calls, is censored.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from harness.traces.conversation import Msg, build_trajectory
from harness.traces.format import TraceError, read_json_lines
from harness.traces.tokens import TokenCounter
from harness.workload import Trajectory

SKIP_ACTIONS = {"change_agent_state", "recall", "null", "condensation", "condensation_request"}
SKIP_OBSERVATIONS = {"agent_state_changed", "null"}


def _ts(v: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(v)).timestamp() if v is not None else None
    except ValueError:
        return None


def _history(rec: dict[str, Any], where: str) -> list[Msg]:
    msgs: list[Msg] = []
    by_response: dict[str, Msg] = {}
    for k, ev in enumerate(rec["history"]):
        w = f"{where} history[{k}]"
        if not isinstance(ev, dict) or ("action" not in ev and "observation" not in ev):
            raise TraceError(f"{w}: not an OpenHands event (no 'action' or 'observation')")
        ts = _ts(ev.get("timestamp"))
        if "observation" in ev:
            if ev["observation"] in SKIP_OBSERVATIONS:
                continue
            msgs.append(Msg("tool", str(ev.get("content") or ""), str(ev["observation"]), ts))
            continue
        action, args, source = ev["action"], ev.get("args") or {}, ev.get("source")
        if action in SKIP_ACTIONS:
            continue
        if action == "system":
            tools = args.get("tools")
            msgs.append(Msg("system", str(args.get("content", "")) + ("\n" + json.dumps(tools) if tools else ""),
                            ts=ts))
            continue
        if source == "user":
            if action == "message":
                msgs.append(Msg("user", str(args.get("content", "")), ts=ts))
            continue
        if source not in ("agent", None):
            raise TraceError(f"{w}: unknown event source {source!r}")
        meta = ev.get("tool_call_metadata") or {}
        resp = meta.get("model_response") or {}
        tool = str(meta.get("function_name") or ("" if action == "message" else action))
        text = "\n".join(str(v) for v in (args.get("thought"), args.get("content"), args.get("command"),
                                         args.get("code"), args.get("file_text"), args.get("new_str"),
                                         args.get("old_str"), args.get("path")) if v)
        rid = resp.get("id")
        if rid and rid in by_response:  # a further tool call of the same response
            m = by_response[rid]
            m.text += "\n" + text
            m.tool = ",".join(x for x in (m.tool, tool) if x)
            continue
        usage = resp.get("usage") or {}
        m = Msg("assistant", text, tool, ts, usage.get("prompt_tokens"), usage.get("completion_tokens"))
        if rid:
            by_response[rid] = m
        msgs.append(m)
    return msgs


def _fill_usage(msgs: list[Msg], rec: dict[str, Any]) -> None:
    """Per-call usage where events lack it: metrics.token_usages, else the responses in llm_completions
    (one entry per completion, in call order; used only when the counts match the calls)."""
    calls = [m for m in msgs if m.role == "assistant"]
    if all(m.prompt_tokens is not None for m in calls):
        return
    metrics = rec.get("metrics") if isinstance(rec.get("metrics"), dict) else {}
    completions = rec.get("llm_completions") if isinstance(rec.get("llm_completions"), list) else []
    for usages in (metrics.get("token_usages") or [],
                   [(c.get("response") or {}).get("usage") or {} for c in completions if isinstance(c, dict)]):
        if usages and len(usages) == len(calls) and all(isinstance(u, dict) and u.get("prompt_tokens") for u in usages):
            for m, u in zip(calls, usages):
                m.prompt_tokens, m.completion_tokens = u.get("prompt_tokens"), u.get("completion_tokens")
            return


def read_openhands_v0(path: Path, counter: TokenCounter) -> tuple[list[Trajectory], str]:
    out, how = [], ""
    for i, rec in read_json_lines(path):
        where = f"{path}:{i}"
        if not isinstance(rec, dict) or not isinstance(rec.get("history"), list):
            raise TraceError(f"{where}: not an OpenHands EvalOutput line (no 'history' list)")
        if not rec["history"]:
            raise TraceError(f"{where}: empty history (the instance failed before its first LLM call?)")
        msgs = _history(rec, where)
        _fill_usage(msgs, rec)
        cap = ((rec.get("metadata") or {}).get("max_iterations")) if isinstance(rec.get("metadata"), dict) else None
        calls = sum(1 for m in msgs if m.role == "assistant")
        err = str(rec.get("error") or "").lower()
        censored = "maximum iteration" in err or "max_iterations" in err or (bool(cap) and calls >= int(cap))
        traj, how = build_trajectory(str(rec.get("instance_id", where)), msgs, counter, where, censored=censored)
        out.append(traj)
    return out, f"openhands-v0 output.jsonl; {how}"
