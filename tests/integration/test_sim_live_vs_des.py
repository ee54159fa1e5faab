"""Live mode (the HTTP server on an accelerated clock, driven over HTTP) and DES mode (in-process virtual time)
run the same engine model on the same small workload: their steps/min must agree within 10%."""

from __future__ import annotations

import asyncio
import random

import pytest

from harness.sim.des import run_des
from harness.sim.loadgen import run_live
from harness.sim.timing import load_profile
from harness.workload import Trajectory, Turn
from tests.integration.test_sim_server import sim_server

PROGRAMS = 8
DURATION_S = 150.0  # virtual seconds
TIME_SCALE = 10.0
BLOCKS = 40


def small_trajectories(n: int = 40, seed: int = 7) -> list[Trajectory]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        turns = tuple(Turn(rng.randint(40, 120), rng.randint(20, 80), rng.uniform(0.5, 3.0))
                      for _ in range(rng.randint(3, 5)))
        out.append(Trajectory(f"inst-{i:03d}", 400, rng.randint(100, 200), rng.uniform(1.0, 3.0), turns))
    return out


@pytest.mark.slow
def test_live_and_des_agree_on_steps_per_min() -> None:
    trajs = small_trajectories()
    prof = load_profile("tiny-cpu", num_gpu_blocks=BLOCKS)
    des = run_des(prof, arm="vllm", programs=PROGRAMS, duration_s=DURATION_S, trajectories=trajs, seed=0)
    with sim_server("tiny-cpu", time_scale=TIME_SCALE, num_gpu_blocks=BLOCKS) as url:
        live = asyncio.run(run_live(url, trajs, programs=PROGRAMS, duration_s=DURATION_S, time_scale=TIME_SCALE))
    assert all(s.status == "ok" for s in live.steps), [s.error for s in live.steps if s.status != "ok"][:3]
    d, lv = des.steps_per_min(), live.steps_per_min()
    print(f"steps/min simulated (tiny-cpu, {BLOCKS} blocks): DES {d:.1f}, live {lv:.1f}")
    assert d > 50
    assert abs(lv - d) / d < 0.10, (d, lv)
