"""The HTTP side's per-program records and their registry.

The policy (ThunderAgent/policy/) owns scheduling state — phase, placement, token accounting. This module
keeps what only the HTTP layer needs: requests in flight and held, step counts, timestamps for profiling
and idle expiry, the token estimator's memory, tool resources to reclaim at release. (Held requests
themselves are tickets of the policy driver: scheduling.py.) Released ids are remembered (bounded) so that
a late request for one is logged as starting a new program instead of silently resurrecting the old one.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field

from ThunderAgent.records import StepRecord
from ThunderAgent.tokens import ProgramTokenState

log = logging.getLogger("thunderagent.programs")

RESOURCE_KEYS = ("docker_ids", "tool_ids")
MAX_RESOURCE_IDS = 1_000  # per program and key: ids come from clients, memory must stay bounded
MAX_RESOURCE_ID_LEN = 256
RELEASED_MEMORY = 10_000


@dataclass(slots=True)
class ProfileTotals:
    """Running sums for upstream ThunderAgent's per-program profile averages (/profiles)."""

    steps: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    pause_s: float = 0.0
    tool_call_s: float = 0.0
    kv_hit_sum: float = 0.0
    kv_hit_n: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def add(self, rec: StepRecord, tool_call_s: float) -> None:
        """Count one completed step: prefill until its first token, decode after it (both 0 for a
        non-streaming call), its pause and the tool time before it, its usage."""
        self.steps += 1
        first = rec.first_token
        self.prefill_s += max(0.0, first - rec.start) if first is not None else 0.0
        self.decode_s += max(0.0, rec.end - first) if first is not None else 0.0
        self.pause_s += rec.pause_s
        self.tool_call_s += tool_call_s
        self.prompt_tokens += rec.prompt_tokens or 0
        self.completion_tokens += rec.completion_tokens or 0
        self.cached_tokens += rec.cached_tokens or 0
        if rec.cached_tokens is not None and rec.prompt_tokens:
            self.kv_hit_sum += rec.cached_tokens / rec.prompt_tokens
            self.kv_hit_n += 1

    def averages(self) -> dict[str, float | int | None]:
        n = self.steps
        d = max(1, n)
        return {
            "step_count": n,
            "avg_prefill_s": round(self.prefill_s / d, 4),
            "avg_decode_s": round(self.decode_s / d, 4),
            "avg_pause_s": round(self.pause_s / d, 4),
            "avg_tool_call_s": round(self.tool_call_s / max(1, n - 1), 4),
            "avg_kv_hit_rate": round(self.kv_hit_sum / self.kv_hit_n, 4) if self.kv_hit_n else None,
            "avg_prompt_tokens": round(self.prompt_tokens / d, 2),
            "avg_completion_tokens": round(self.completion_tokens / d, 2),
            "avg_cached_tokens": round(self.cached_tokens / d, 2),
        }


@dataclass(slots=True)
class ProgramRecord:
    program_id: str
    created_at: float
    step_count: int = 0  # requests received (upstream's step_count)
    completed_steps: int = 0  # requests that finished with a 2xx response (upstream's step_id)
    inflight: int = 0  # requests forwarded and not yet ended
    held: int = 0  # requests waiting for the scheduler
    last_arrival: float | None = None
    last_end: float | None = None  # end of the last forwarded request (for tool_call_s)
    last_activity: float = 0.0
    context_len: int = 0  # characters of the last request's JSON (upstream field)
    total_tokens: int = 0  # last exact usage.total_tokens, else the last estimate
    tokens: ProgramTokenState = field(default_factory=ProgramTokenState)
    resources: dict[str, dict[str, None]] = field(default_factory=dict)  # key -> ids (an ordered set)
    profile: ProfileTotals = field(default_factory=ProfileTotals)

    @property
    def busy(self) -> bool:
        return self.inflight > 0 or self.held > 0

    def add_resources(self, found: dict[str, list[str]]) -> None:
        """Remember tool resource ids (O(1) per id, first-seen order kept); at most MAX_RESOURCE_IDS per
        key, further new ids are dropped with a warning."""
        for key, ids in found.items():
            known = self.resources.setdefault(key, {})
            for i in ids:
                if i in known:
                    continue
                if len(known) >= MAX_RESOURCE_IDS:
                    log.warning(
                        "program %s: more than %d %s, further ids are not reclaimed",
                        self.program_id,
                        MAX_RESOURCE_IDS,
                        key,
                    )
                    break
                known[i] = None


class ProgramRegistry:
    def __init__(self) -> None:
        self._records: dict[str, ProgramRecord] = {}
        self._released: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, program_id: object) -> bool:
        return program_id in self._records

    def get(self, program_id: str) -> ProgramRecord | None:
        return self._records.get(program_id)

    def records(self) -> list[ProgramRecord]:
        return list(self._records.values())

    def get_or_create(self, program_id: str, now: float) -> tuple[ProgramRecord, bool]:
        """The record for `program_id`, created if unknown (second value: created now)."""
        rec = self._records.get(program_id)
        if rec is not None:
            return rec, False
        if program_id in self._released:
            del self._released[program_id]
            log.warning("request for released program %r: starting it again as a new program", program_id)
        rec = ProgramRecord(program_id=program_id, created_at=now, last_activity=now)
        self._records[program_id] = rec
        return rec, True

    def remove(self, program_id: str) -> ProgramRecord | None:
        """Forget a program (release or expiry); its id is remembered as released."""
        rec = self._records.pop(program_id, None)
        if rec is not None:
            self._released[program_id] = None
            while len(self._released) > RELEASED_MEMORY:
                self._released.popitem(last=False)
        return rec

    def was_released(self, program_id: str) -> bool:
        return program_id in self._released

    def idle_candidates(self, now: float, ttl: float) -> list[ProgramRecord]:
        """Programs to expire: idle (nothing in flight or held) for longer than `ttl` (0 = never). A full
        registry never evicts a live program to make room: new programs are refused instead (the proxy
        answers 429), so nobody can expire, and reclaim, someone else's program by posting new ids."""
        if ttl <= 0:
            return []
        return [r for r in self._records.values() if not r.busy and now - r.last_activity >= ttl]
