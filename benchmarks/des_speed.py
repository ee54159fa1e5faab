"""Speed of the discrete-event simulator: simulated engine steps per CPU second, and the wall/CPU time of the
reference run (GLM-4.6 on 8xH100, 96 OpenHands programs, 80 simulated minutes, raw-vLLM arm: the heaviest,
since it thrashes). Prints figures only; never asserts absolute times (the machine is shared).

    .venv/bin/python benchmarks/des_speed.py            # the full 96-program, 80-minute run (+ other arms)
    .venv/bin/python benchmarks/des_speed.py --quick    # 48 programs, 10 simulated minutes
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.sim.des import ARMS, run_des  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="48 programs, 10 simulated minutes, vllm arm only")
    ap.add_argument("--profile", default="glm4.6-8xh100")
    ap.add_argument("--programs", type=int, default=None)
    ap.add_argument("--minutes", type=float, default=None)
    ap.add_argument("--arms", default=None, help=f"comma list of {','.join(ARMS)}")
    ap.add_argument("--profile-cpu", action="store_true", help="print a cProfile of the first arm")
    a = ap.parse_args()
    programs = a.programs or (48 if a.quick else 96)
    minutes = a.minutes or (10.0 if a.quick else 80.0)
    arms = (a.arms or ("vllm" if a.quick else "vllm,thunderagent,continuum")).split(",")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"DES speed: profile {a.profile}, {programs} programs, {minutes:g} simulated minutes "
          f"(load average {load:.1f} on {os.cpu_count()} CPUs: figures are this machine's, under its current load)")
    for i, arm in enumerate(arms):
        prof = None
        if a.profile_cpu and i == 0:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        w0 = time.perf_counter()
        r = run_des(a.profile, arm=arm, programs=programs, duration_s=minutes * 60, seed=0)
        wall = time.perf_counter() - w0
        if prof is not None:
            import pstats

            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)
        s = r.summary()
        print(f"  {arm:13s} cpu {r.cpu_s:6.2f} s  wall {wall:6.2f} s  engine steps {r.engine_steps:7d} "
              f"({r.engine_steps / max(r.cpu_s, 1e-9):,.0f} steps/cpu-s, {r.engine_calls} step calls)  "
              f"-> {s['steps_per_min']:.1f} steps/min, hit rate {s['prefix_hit_rate']}, "
              f"preemptions {s['preemptions']}  [{r.label}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
