"""What a SWE-bench agent trajectory asks of the engine: the data types shared by the workload model,
the synthetic agent, trace replay and the discrete-event simulator.

A program's call k (0-based) sends the prompt
    system_tokens + first_user_tokens + sum_{j<k} (turns[j].output_tokens + turns[j].observation_tokens)
and generates turns[k].output_tokens; then the agent runs tools for turns[k].tool_time_s and appends
turns[k].observation_tokens before call k+1. The last turn's tool time/observation are not used.
All programs of a workload share the same system prompt (+ tool schemas) prefix of `system_tokens`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Turn:
    output_tokens: int
    observation_tokens: int
    tool_time_s: float


@dataclass(frozen=True, slots=True)
class Trajectory:
    instance_id: str
    system_tokens: int  # shared prefix: system prompt + tool schemas (identical across programs)
    first_user_tokens: int  # the instance's first user message (issue text), unique per instance
    prep_time_s: float  # environment preparation before the first call
    turns: tuple[Turn, ...]

    def prompt_tokens(self, k: int) -> int:
        """Prompt length of call k (0-based)."""
        n = self.system_tokens + self.first_user_tokens
        for t in self.turns[:k]:
            n += t.output_tokens + t.observation_tokens
        return n
