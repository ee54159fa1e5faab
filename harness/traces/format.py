"""The trace format: recorded agent trajectories as data, one JSON object per line (JSONL).

One line is one program (one agent run on one instance):

    {"instance_id": "astropy__astropy-12907",   # any string; defaults to file:line
     "system_tokens": 7510,        # shared prefix: system prompt + tool schemas (+ in-context example)
     "first_user_tokens": 1312,    # the instance's first user message (instruction + issue)
     "prep_time_s": 31.2,          # environment preparation before the first call (0 if unknown)
     "censored": false,            # true: the agent's step cap ended the run (turn count is a lower bound)
     "source": "openhands-v0 output.jsonl; tokens: usage",   # optional: where the numbers came from
     "turns": [                    # one entry per LLM call, in order
        {"prompt_tokens": 8822,    # optional: this call's prompt length
         "output_tokens": 312,     # tokens the call generated
         "observation_tokens": 95, # tokens the tool result appended before the next call
         "tool": "execute_bash",   # optional: the tool the call asked for ("" = none / unknown)
         "tool_time_s": 0.42},     # how long that tool ran (wall seconds)
        ...]}

The model behind it (harness.workload.Trajectory): call k's prompt is
system_tokens + first_user_tokens + sum over earlier calls of (output_tokens + observation_tokens).
`prompt_tokens` may be given instead of `observation_tokens` (the observation is then the growth of the
prompt beyond the previous call's output); when both are given they must agree. The last call's
observation and tool time are not used. Unknown keys are an error (a typo would silently lose data).

`read_traces` also reads our own run output (`steps.jsonl`, one StepRecord per LLM call; see
harness/traces/steps.py). `write_traces` writes the canonical form, atomically (a temporary file renamed
into place: a failed import leaves nothing half-written).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from harness.workload import Trajectory, Turn, WorkloadError

TRAJECTORY_KEYS = {"instance_id", "system_tokens", "first_user_tokens", "prep_time_s", "censored", "source", "turns"}
TURN_KEYS = {"prompt_tokens", "output_tokens", "observation_tokens", "tool", "tool_time_s"}


class TraceError(WorkloadError):
    """A trace file that cannot be read: the message names the file and the record (one line)."""


def read_json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for every non-blank line; a line that is not JSON (a truncated file,
    a stray log line) is an error naming the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TraceError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    n = 0
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            what = "truncated or malformed" if i == len(text.splitlines()) else "malformed"
            raise TraceError(f"{path}:{i}: {what} JSON line ({e.msg} at column {e.colno})") from None
        n += 1
        yield i, value
    if n == 0:
        raise TraceError(f"{path}: empty trace file (no records)")


def _int(d: dict[str, Any], key: str, where: str, default: int | None = None) -> int:
    v = d.get(key, default)
    if v is None:
        raise TraceError(f"{where}: missing {key!r}")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v) or v < 0:
        raise TraceError(f"{where}: {key!r} must be a non-negative integer, got {v!r}")
    return int(v)


def _float(d: dict[str, Any], key: str, where: str) -> float:
    v = d.get(key, 0.0)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or v == float("inf"):
        raise TraceError(f"{where}: {key!r} must be a non-negative number of seconds, got {v!r}")
    return float(v)


def trajectory_from_record(r: Any, where: str) -> Trajectory:
    """Validate one trajectory line (see the module docstring)."""
    if not isinstance(r, dict):
        raise TraceError(f"{where}: a trajectory must be a JSON object, got {type(r).__name__}")
    unknown = set(r) - TRAJECTORY_KEYS
    if unknown:
        raise TraceError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(sorted(TRAJECTORY_KEYS))})")
    raw_turns = r.get("turns")
    if not isinstance(raw_turns, list) or not raw_turns:
        raise TraceError(f"{where}: 'turns' must be a non-empty list of calls")
    sys_t = _int(r, "system_tokens", where, 0)
    first = _int(r, "first_user_tokens", where)
    turns: list[Turn] = []
    prompt = sys_t + first
    for k, t in enumerate(raw_turns):
        w = f"{where} turn {k + 1}"
        if not isinstance(t, dict):
            raise TraceError(f"{w}: a turn must be a JSON object")
        bad = set(t) - TURN_KEYS
        if bad:
            raise TraceError(f"{w}: unknown key(s) {', '.join(sorted(bad))} (known: {', '.join(sorted(TURN_KEYS))})")
        out = _int(t, "output_tokens", w)
        if out < 1:
            raise TraceError(f"{w}: 'output_tokens' must be >= 1")
        if "prompt_tokens" in t and _int(t, "prompt_tokens", w) != prompt:
            raise TraceError(f"{w}: prompt_tokens {t['prompt_tokens']} disagrees with the earlier calls "
                             f"(system + first user + outputs + observations = {prompt})")
        nxt = raw_turns[k + 1] if k + 1 < len(raw_turns) else None
        if "observation_tokens" in t:
            obs = _int(t, "observation_tokens", w)
        elif isinstance(nxt, dict) and "prompt_tokens" in nxt:
            obs = _int(nxt, "prompt_tokens", f"{where} turn {k + 2}") - prompt - out
            if obs < 0:
                raise TraceError(f"{where} turn {k + 2}: prompt_tokens shrank (context condensed?): "
                                 "give observation_tokens explicitly")
        elif nxt is None:
            obs = 0
        else:
            raise TraceError(f"{w}: needs 'observation_tokens' (or the next turn's 'prompt_tokens')")
        tool = t.get("tool", "")
        if not isinstance(tool, str):
            raise TraceError(f"{w}: 'tool' must be a string")
        turns.append(Turn(out, obs, _float(t, "tool_time_s", w), tool))
        prompt += out + obs
    censored = r.get("censored", False)
    if not isinstance(censored, bool):
        raise TraceError(f"{where}: 'censored' must be true or false")
    iid = r.get("instance_id", where)
    return Trajectory(instance_id=str(iid), system_tokens=sys_t, first_user_tokens=first,
                      prep_time_s=_float(r, "prep_time_s", where), turns=tuple(turns), censored=censored)


def trajectory_to_record(t: Trajectory, source: str = "") -> dict[str, Any]:
    turns = []
    for k, x in enumerate(t.turns):
        turns.append({"prompt_tokens": t.prompt_tokens(k), "output_tokens": x.output_tokens,
                      "observation_tokens": x.observation_tokens, "tool": x.tool,
                      "tool_time_s": round(x.tool_time_s, 6)})
    rec: dict[str, Any] = {"instance_id": t.instance_id, "system_tokens": t.system_tokens,
                           "first_user_tokens": t.first_user_tokens, "prep_time_s": round(t.prep_time_s, 6),
                           "censored": t.censored}
    if source:
        rec["source"] = source
    rec["turns"] = turns
    return rec


def write_traces(path: str | os.PathLike[str], trajectories: Iterable[Trajectory], source: str = "") -> Path:
    """Write the canonical JSONL atomically (temporary file in the same directory, then rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".partial", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for t in trajectories:
                f.write(json.dumps(trajectory_to_record(t, source), separators=(",", ":")) + "\n")
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def read_canonical(path: Path, rows: list[tuple[int, Any]]) -> list[Trajectory]:
    return [trajectory_from_record(r, f"{path}:{i}") for i, r in rows]
