"""Live mode (the HTTP server on an accelerated clock, driven over HTTP) and DES mode (in-process virtual time)
run the same engine model on the same small workload: their steps/min must agree within 10%."""

from __future__ import annotations

import asyncio
import random
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from harness.sim.des import run_des
from harness.sim.loadgen import run_live
from harness.sim.server import wait_healthy
from harness.sim.timing import load_profile
from harness.workload import Trajectory, Turn

PROGRAMS = 8
DURATION_S = 90.0  # virtual seconds
TIME_SCALE = 1.0  # real time: HTTP round trips (tens of ms of wall time on a loaded machine) stay small in virtual time
PROFILE = "glm4.6-8xh100"  # ~20-30 ms steps: the server process needs little CPU per simulated second
BLOCKS = 600  # 9,600 tokens of KV for ~8 x 1,500-token contexts: some pressure


def small_trajectories(n: int = 40, seed: int = 7) -> list[Trajectory]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        turns = tuple(Turn(rng.randint(40, 120), rng.randint(20, 80), rng.uniform(0.5, 3.0))
                      for _ in range(rng.randint(3, 5)))
        out.append(Trajectory(f"inst-{i:03d}", 400, rng.randint(100, 200), rng.uniform(1.0, 3.0), turns))
    return out


@contextmanager
def server_process(profile: str, time_scale: float, blocks: int) -> Iterator[str]:
    """The simulator in its own process, as in live runs (no GIL shared with the client)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "harness.entry", "sim", "serve", "--profile", profile, "--port", str(port),
                             "--time-scale", str(time_scale), "--num-gpu-blocks", str(blocks)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        healthy = wait_healthy(url, 30.0, alive=lambda: proc.poll() is None)
        assert healthy is not None, proc.stderr.read().decode() if proc.stderr else "server exited"
        assert healthy, "simulator server not healthy within 30 s"
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def engine_time_lost_s(url: str) -> float:
    """Simulated engine time the live server gave up because it fell behind its clock (its own counter)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    m = re.search(r"^thunderbench_sim_engine_time_lost_seconds_total (\S+)$", text, re.M)
    assert m, "the live server exports the engine time it lost"
    return float(m.group(1))


@pytest.mark.slow
def test_live_and_des_agree_on_steps_per_min() -> None:
    trajs = small_trajectories()
    prof = load_profile(PROFILE, num_gpu_blocks=BLOCKS)
    des = run_des(prof, arm="vllm", programs=PROGRAMS, duration_s=DURATION_S, trajectories=trajs, seed=0)
    with server_process(PROFILE, TIME_SCALE, BLOCKS) as url:
        live = asyncio.run(run_live(url, trajs, programs=PROGRAMS, duration_s=DURATION_S, time_scale=TIME_SCALE))
        lost = engine_time_lost_s(url)
    assert all(s.status == "ok" for s in live.steps), [s.error for s in live.steps if s.status != "ok"][:3]
    # engine time the server gave up (a machine too loaded to keep its clock) is time the engine model did not
    # run: the comparison is over the engine time that was simulated
    assert lost < 0.25 * DURATION_S, f"the live server lost {lost:.1f} s of {DURATION_S:.0f} s: machine overloaded"
    d = des.steps_per_min()
    lv = live.steps_per_min() * DURATION_S / (DURATION_S - lost)
    print(f"steps/min simulated ({PROFILE}, {BLOCKS} blocks): DES {d:.1f}, live {lv:.1f} (engine time lost {lost:.2f} s)")
    assert d > 50
    assert abs(lv - d) / d < 0.10, (d, lv, lost)
