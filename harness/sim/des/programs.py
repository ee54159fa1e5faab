"""Where simulated programs come from, and the state of one while it runs.

A program is one SWE-bench trajectory: sampled from a workload parameter model (seeded per instance id), or
replayed from recorded traces (in order, or drawn at random from them as a pool). Its token stream is an
append-only `SegmentSeq` (shared system prompt, its instance text, then output/observation per turn), so turn
k's prompt is exactly turn k-1's prompt + output + observation and the engine's prefix cache sees real reuse.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from harness.errors import UserError
from harness.sim.engine import Request, SegmentSeq
from harness.workload import Trajectory, WorkloadParams, sample_trajectory, trajectory_rng

# segment kinds of a program's token stream (the key's low 2 bits)
SYS, USER, OUT, OBS = 0, 1, 2, 3


class DesError(UserError, ValueError):
    """Bad DES arguments (one readable line)."""


@dataclass(slots=True)
class Program:
    """One running program: its trajectory, its token stream, and where it is in it."""

    slot: int
    program_id: str
    traj: Trajectory
    uid: int
    seq: SegmentSeq
    k: int = 0  # index of the next (or current) call
    arrival: float = 0.0
    start: float = 0.0
    request: Request | None = None
    done: bool = False

    @classmethod
    def start_new(cls, slot: int, instance_id: str, traj: Trajectory, uid: int, block_size: int) -> "Program":
        seq = SegmentSeq(block_size, [(SYS, traj.system_tokens), ((uid << 20) * 4 + USER, traj.first_user_tokens)])
        return cls(slot, f"{instance_id}@{uid}", traj, uid, seq)

    def append_turn(self) -> None:
        """Call k's tokens join the stream: the previous observation (k > 0), then this call's output."""
        k = self.k
        if k > 0:
            self.seq.append((((self.uid << 20) + k - 1) << 2) + OBS, self.traj.turns[k - 1].observation_tokens)
        self.seq.append((((self.uid << 20) + k) << 2) + OUT, self.traj.turns[k].output_tokens)


def trajectory_source(
    workload: WorkloadParams | None, trajectories: Sequence[Trajectory] | None, seed: int, programs: int,
    resample: bool = False,
) -> Iterator[tuple[str, Trajectory]]:
    """(instance id, trajectory) for every program the run starts, without end."""
    if trajectories is not None:
        if not trajectories:
            raise DesError("the trajectory list is empty")
        return _replayed(trajectories, seed) if not resample else _drawn(trajectories, seed)
    if workload is None:
        raise DesError("give a workload (name or WorkloadParams) or a trajectory list")
    return _sampled(workload, seed, programs)


def _drawn(trajectories: Sequence[Trajectory], seed: int) -> Iterator[tuple[str, Trajectory]]:
    """Recorded traces as a pool: each new program draws one, uniformly, from the seed's stream."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, len(trajectories)]))
    i = 0
    while True:
        t = trajectories[int(rng.integers(len(trajectories)))]
        yield f"{t.instance_id}#{i}", t
        i += 1


def _replayed(trajectories: Sequence[Trajectory], seed: int) -> Iterator[tuple[str, Trajectory]]:
    """Recorded traces in order, round after round (ids of later rounds carry the round number)."""
    r = 0
    while True:
        for t in trajectories:
            yield (t.instance_id if r == 0 else f"{t.instance_id}#{r}"), t
        r += 1


def _sampled(workload: WorkloadParams, seed: int, programs: int) -> Iterator[tuple[str, Trajectory]]:
    i = 0
    while True:
        iid = f"sim-{i:05d}"
        yield iid, sample_trajectory(workload, iid, trajectory_rng(seed, iid), programs=programs)
        i += 1
