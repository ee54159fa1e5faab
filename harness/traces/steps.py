"""Our own run output: `steps.jsonl` (one ThunderAgent.records.StepRecord per LLM call, every arm writes it).

Calls are grouped by program_id and ordered by step; only status "ok" calls with token counts are used.
Per call k: output = completion_tokens, observation = prompt(k+1) - prompt(k) - completion(k) (>= 0),
tool time = arrival(k+1) - end(k) (>= 0). The first prompt is split into the shared prefix
(`system_tokens`, default: the median cached_tokens of first calls that hit the cache, else 0) and the
first user message. Preparation time is not in step records: 0. Tool names are not recorded: "".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.traces.format import TraceError
from harness.workload import Trajectory, Turn
from ThunderAgent.records import StepRecord


def read_steps(path: Path, rows: list[tuple[int, Any]], system_tokens: int | None = None) -> list[Trajectory]:
    records = []
    for i, r in rows:
        if not isinstance(r, dict) or "program_id" not in r or "step" not in r:
            raise TraceError(f"{path}:{i}: not a step record (needs 'program_id' and 'step')")
        try:
            records.append(StepRecord.from_dict(r))
        except TypeError as e:
            raise TraceError(f"{path}:{i}: bad step record ({e})") from None
    by_program: dict[str, list[StepRecord]] = {}
    for r in records:
        if r.status == "ok" and r.prompt_tokens is not None and r.completion_tokens:
            by_program.setdefault(r.program_id, []).append(r)
    if not by_program:
        raise TraceError(f"{path}: no ok step records with token counts")
    for rs in by_program.values():
        rs.sort(key=lambda x: x.step)
    if system_tokens is None:
        hits = sorted(rs[0].cached_tokens for rs in by_program.values()
                      if rs[0].step == 1 and rs[0].cached_tokens)
        system_tokens = int(hits[len(hits) // 2]) if hits else 0
    out = []
    for pid, rs in by_program.items():
        turns = []
        for k, r in enumerate(rs):
            nxt = rs[k + 1] if k + 1 < len(rs) else None
            obs = max(0, int(nxt.prompt_tokens or 0) - int(r.prompt_tokens or 0) - int(r.completion_tokens or 0)) if nxt else 0
            tool = max(0.0, nxt.arrival - r.end) if nxt else 0.0
            turns.append(Turn(int(r.completion_tokens or 0), int(obs), round(float(tool), 6)))
        first = int(rs[0].prompt_tokens or 0)
        sys_t = min(system_tokens, first)
        out.append(Trajectory(instance_id=rs[0].instance_id or pid, system_tokens=sys_t,
                              first_user_tokens=first - sys_t, prep_time_s=0.0, turns=tuple(turns)))
    return out
