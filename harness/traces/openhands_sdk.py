"""openhands-sdk conversations: the events an `openhands.sdk.Conversation` persists (what our runner,
harness/agents/openhands.py, drives), as JSON with a "kind" discriminator per event
(openhands/sdk/event/*.py; `EventStore` writes `<persistence_dir>/<conversation id>/events/
event-00000-<id>.json`, one event per file, `model_dump_json(exclude_none=True)`).

Accepted inputs: such an events directory (or a conversation directory holding one), or a JSONL file whose
lines are {"instance_id": ..., "history": [events]} (the layout of OpenHands' V1 benchmarks output.jsonl).
Mapping: SystemPromptEvent (system_prompt + tool definitions) -> shared prefix; MessageEvent -> user or
assistant message (llm_message.content parts); ActionEvents -> LLM calls, grouped by llm_response_id
(thought + tool call arguments are the output); ObservationEvent / AgentErrorEvent /
UserRejectObservation -> the tool result; other kinds (state updates, pauses, condensations, token and log
events) are bookkeeping and skipped. Events carry no usage: tokens are counted. Timestamps are ISO strings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.traces.conversation import Msg, build_trajectory, text_of
from harness.traces.format import TraceError, read_json_lines
from harness.traces.openhands_v0 import _ts
from harness.traces.tokens import TokenCounter
from harness.workload import Trajectory

OBSERVATION_KINDS = {"ObservationEvent", "AgentErrorEvent", "UserRejectObservation"}
SKIP_KINDS = {"ConversationStateUpdateEvent", "PauseEvent", "Condensation", "CondensationRequest",
              "CondensationSummaryEvent", "TokenEvent", "LLMCompletionLogEvent", "ConversationErrorEvent",
              "HookExecutionEvent", "StreamingDeltaEvent", "UserActionEvent"}


def events_to_msgs(events: list[Any], where: str) -> list[Msg]:
    msgs: list[Msg] = []
    by_response: dict[str, Msg] = {}
    for k, ev in enumerate(events):
        w = f"{where} event {k + 1}"
        if not isinstance(ev, dict) or not isinstance(ev.get("kind"), str):
            raise TraceError(f"{w}: not an openhands-sdk event (no 'kind')")
        kind, ts = ev["kind"], _ts(ev.get("timestamp"))
        if kind == "SystemPromptEvent":
            tools = ev.get("tools")
            msgs.append(Msg("system", text_of(ev.get("system_prompt")) + ("\n" + json.dumps(tools) if tools else ""),
                            ts=ts))
        elif kind == "MessageEvent":
            m = ev.get("llm_message") or {}
            role = m.get("role")
            if role not in ("user", "assistant", "system"):
                raise TraceError(f"{w}: unknown message role {role!r}")
            msgs.append(Msg(role, text_of(m.get("content")), ts=ts))
        elif kind == "ActionEvent":
            call = ev.get("tool_call") or {}
            text = "\n".join([text_of(ev.get("thought")), str(ev.get("reasoning_content") or ""),
                              str(call.get("arguments", ""))]).strip()
            tool = str(ev.get("tool_name", ""))
            rid = ev.get("llm_response_id")
            if rid and rid in by_response:
                prev = by_response[rid]
                prev.text += "\n" + text
                prev.tool = ",".join(x for x in (prev.tool, tool) if x)
                continue
            m2 = Msg("assistant", text, tool, ts)
            if rid:
                by_response[rid] = m2
            msgs.append(m2)
        elif kind in OBSERVATION_KINDS:
            obs = ev.get("observation") if isinstance(ev.get("observation"), dict) else {}
            text = text_of(obs.get("content")) or str(ev.get("error") or ev.get("rejection_reason") or "")
            msgs.append(Msg("tool", text, str(ev.get("tool_name", "")), ts))
        elif kind not in SKIP_KINDS:
            raise TraceError(f"{w}: unknown event kind {kind!r}")
    return msgs


def _events_dir(path: Path) -> Path:
    if (path / "events").is_dir():
        return path / "events"
    subs = sorted(p for p in path.glob("*/events") if p.is_dir())
    if len(subs) == 1:
        return subs[0]
    return path


def read_events_dir(path: Path, counter: TokenCounter, cap: int | None = None) -> tuple[Trajectory, str]:
    d = _events_dir(path)
    files = sorted(d.glob("event-*.json"), key=lambda p: int(p.name.split("-")[1]))
    if not files:
        raise TraceError(f"{path}: no event-*.json files (not an openhands-sdk conversation)")
    events = []
    for f in files:
        try:
            events.append(json.loads(f.read_text(encoding="utf-8")))
        except json.JSONDecodeError as e:
            raise TraceError(f"{f}: truncated or malformed event JSON ({e.msg})") from None
    msgs = events_to_msgs(events, str(d))
    calls = sum(1 for m in msgs if m.role == "assistant")
    return build_trajectory(path.name, msgs, counter, str(d), censored=bool(cap) and calls >= int(cap or 0))


def read_openhands_sdk(path: Path, counter: TokenCounter, cap: int | None = None) -> tuple[list[Trajectory], str]:
    if path.is_dir():
        t, how = read_events_dir(path, counter, cap)
        return [t], f"openhands-sdk events; {how}"
    out, how = [], ""
    for i, rec in read_json_lines(path):
        where = f"{path}:{i}"
        if not isinstance(rec, dict) or not isinstance(rec.get("history"), list) or not rec["history"]:
            raise TraceError(f"{where}: expected {{'instance_id', 'history': [events]}} with a non-empty history")
        msgs = events_to_msgs(rec["history"], where)
        calls = sum(1 for m in msgs if m.role == "assistant")
        t, how = build_trajectory(str(rec.get("instance_id", where)), msgs, counter, where,
                                  censored=bool(cap) and calls >= int(cap or 0))
        out.append(t)
    return out, f"openhands-sdk events; {how}"
