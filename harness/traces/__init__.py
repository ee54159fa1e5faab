"""Recorded agent trajectories as data: one trace format (harness/traces/format.py), importers from the
formats agents write, a fit of the statistical workload model to traces (fit.py) and summaries (show.py).

Importers, one module per source (each documents the format it reads, from the source's own code):
  openhands_v0.py   OpenHands V0 evaluation output.jsonl (history events, usage, metrics)
  openhands_sdk.py  openhands-sdk conversation events (our runner's agent library)
  miniswe.py        mini-swe-agent <instance>.traj.json
  messages.py       generic chat-messages JSONL (SWE-Gym, SWE-rebench, nebius trajectory sets)
  steps.py          our own steps.jsonl from real or simulated runs
`load_traces(paths)` detects the format of each path (or takes `fmt`) and returns Trajectories.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from harness.traces.format import TraceError, read_canonical, read_json_lines, write_traces
from harness.traces.tokens import TokenCounter, token_counter
from harness.workload import Trajectory

FORMATS = ("auto", "trace", "steps", "openhands-v0", "openhands-sdk", "miniswe", "messages")

__all__ = ["FORMATS", "TraceError", "detect_format", "import_many", "import_traces", "load_traces", "write_traces"]


def _first_record(path: Path) -> object:
    for _, rec in read_json_lines(path):
        return rec
    return None  # pragma: no cover - read_json_lines raises on an empty file


def detect_format(path: Path) -> str:
    """The format of a trace path, from its layout and its first record."""
    if path.is_dir():
        if (path / "events").is_dir() or any(path.glob("event-*.json")) or any(path.glob("*/events/event-*.json")):
            return "openhands-sdk"
        if any(path.rglob("*.traj.json")):
            return "miniswe"
        raise TraceError(f"{path}: a directory with neither openhands-sdk events nor *.traj.json files")
    if path.name.endswith(".traj.json"):
        return "miniswe"
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise TraceError(f"{path}: truncated or malformed JSON ({e.msg} at line {e.lineno})") from None
        if isinstance(data, dict) and "messages" in data and str(data.get("trajectory_format", "")).startswith("mini"):
            return "miniswe"
        raise TraceError(f"{path}: unrecognised JSON trace (expected a mini-swe-agent .traj.json)")
    rec = _first_record(path)
    if isinstance(rec, list):
        return "messages"
    if isinstance(rec, dict):
        if "turns" in rec:
            return "trace"
        if "program_id" in rec and "step" in rec:
            return "steps"
        hist = rec.get("history")
        if isinstance(hist, list):
            first = next((e for e in hist if isinstance(e, dict)), {})
            return "openhands-sdk" if "kind" in first else "openhands-v0"
        if isinstance(rec.get("messages"), list) or isinstance(rec.get("trajectory"), list):
            return "messages"
    raise TraceError(f"{path}:1: unrecognised trace record (expected one of: trajectory lines with 'turns', "
                     "step records, OpenHands output.jsonl, chat messages); see harness/traces/format.py")


def import_traces(path: str | os.PathLike[str], fmt: str = "auto", counter: TokenCounter | None = None, *,
                  system_tokens: int | None = None, cap: int | None = None) -> tuple[list[Trajectory], str]:
    """(trajectories, a one-line description of the source and of how tokens were counted)."""
    p = Path(path)
    if not p.exists():
        raise TraceError(f"trace {p} does not exist")
    if fmt not in FORMATS:
        raise TraceError(f"unknown trace format {fmt!r}: choose one of {', '.join(FORMATS)}")
    try:
        return _import(p, fmt, counter or token_counter(), system_tokens, cap)
    except UnicodeDecodeError as e:
        raise TraceError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _import(p: Path, fmt: str, counter: TokenCounter, system_tokens: int | None,
            cap: int | None) -> tuple[list[Trajectory], str]:
    kind = detect_format(p) if fmt == "auto" else fmt
    if kind == "trace":
        return read_canonical(p, list(read_json_lines(p))), f"traces {p.name}"
    if kind == "steps":
        from harness.traces.steps import read_steps

        return read_steps(p, list(read_json_lines(p)), system_tokens), f"step records {p.name}; tokens: engine usage"
    if kind == "openhands-v0":
        from harness.traces.openhands_v0 import read_openhands_v0

        return read_openhands_v0(p, counter)
    if kind == "openhands-sdk":
        from harness.traces.openhands_sdk import read_openhands_sdk

        return read_openhands_sdk(p, counter, cap)
    if kind == "miniswe":
        from harness.traces.miniswe import read_miniswe

        files = sorted(p.rglob("*.traj.json")) if p.is_dir() else [p]
        return read_miniswe(files, counter)
    from harness.traces.messages import read_messages

    return read_messages(p, counter)


def import_many(paths: Sequence[str | os.PathLike[str]], fmt: str = "auto", *, tokenizer: str | None = None,
                cap: int | None = None) -> tuple[list[Trajectory], list[str]]:
    """(every trajectory of every path, one "path (how)" description per path); with `cap`, runs that
    reached it are marked censored whatever their source says."""
    from dataclasses import replace

    counter = token_counter(tokenizer)
    trajs: list[Trajectory] = []
    hows: list[str] = []
    for p in paths:
        got, how = import_traces(p, fmt, counter, cap=cap)
        trajs += got
        hows.append(f"{p} ({how})")
    if cap is not None:
        trajs = [replace(t, censored=t.censored or len(t.turns) >= cap) for t in trajs]
    return trajs, hows


def load_traces(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], fmt: str = "auto", *,
                tokenizer: str | None = None, system_tokens: int | None = None,
                cap: int | None = None) -> list[Trajectory]:
    """Every trajectory of every path, in order (see import_traces)."""
    items: Iterable[str | os.PathLike[str]] = [paths] if isinstance(paths, (str, os.PathLike)) else paths
    counter = token_counter(tokenizer)
    out: list[Trajectory] = []
    for p in items:
        out.extend(import_traces(p, fmt, counter, system_tokens=system_tokens, cap=cap)[0])
    if not out:
        raise TraceError("no trajectories in the given traces")
    return out
