"""What the scheduler hands the engine for one step (vLLM v1's vllm/v1/core/sched/output.py)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.sim.engine.request import Request


@dataclass(slots=True)
class SchedulerOutput:
    prefills: list[tuple[Request, int]]  # (request, tokens) of prefill chunks scheduled this step
    prefill_tokens: int
    decode_tokens: int  # = number of decoding requests (one token each)
    decode_context: int  # sum of their computed tokens (the KV they read)
    preempted: list[Request]
    admitted: int
    prefill_context: int = 0  # sum over prefill tokens of the context each attends to (attention FLOPs)
    new_requests: int = 0  # admitted for the first time (not re-admissions after preemption)
