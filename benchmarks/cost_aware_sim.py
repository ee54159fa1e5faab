"""Cost-aware tr vs upstream's fixed rule vs raw vLLM in the discrete-event simulator, SIMULATED.

Profiles glm4.6-8xh100 and qwen3-235b-8xh100 (first-principles 8xH100 profiles, harness/sim/profiles), the
OpenHands-like synthetic workload, closed loop at several concurrencies. Where KV thrashing dominates, the
fixed rule (pause programs whose contexts do not fit the KV cache) beats raw vLLM; the cost-aware mode must
keep that gain (within 5% of the fixed rule or better). Two cost-aware arms: "learned" (the default, as in
the proxy) learns the prefill cost online from the simulated engine's histograms, "told" is given the
profile's figure (harness.sim.des.prefill_seconds_per_token: one 8K chunk, the cheap end — long contexts cost
more per token, so "told" errs towards admitting).

Prints, per profile and concurrency: steps/min of each arm, cost-aware / fixed, fixed / vllm, prefix hit
rate and preemptions. Every number is simulated (labelled with its profile).

    .venv/bin/python benchmarks/cost_aware_sim.py             # 64..256 programs, 30 simulated minutes each
    .venv/bin/python benchmarks/cost_aware_sim.py --quick     # CI-sized
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.sim.des import BACKEND, prefill_seconds_per_token, run_des  # noqa: E402
from harness.sim.timing import load_profile  # noqa: E402
from ThunderAgent.config import Config  # noqa: E402

# arm -> tr mode (None = raw vLLM), and whether a cost-aware tr learns the prefill cost from the simulated
# engine's histograms (as the proxy does from real vLLM) instead of being told the profile's figure
ARMS: dict[str, tuple[str | None, bool]] = {
    "vllm": (None, False), "tr-fixed": ("fixed", False), "tr-cost-told": ("cost-aware", False),
    "tr-cost-aware": ("cost-aware", True),
}


def compare(profile: str, programs: int, duration: float, seed: int = 0) -> dict[str, dict]:
    out = {}
    for arm, (mode, learn) in ARMS.items():
        cfg = Config(router="tr", backends=(BACKEND,), tr_mode=mode or "fixed", metrics_interval=5.0)
        r = run_des(profile, arm="vllm" if mode is None else "thunderagent", programs=programs,
                    duration_s=duration, seed=seed, policy_config=cfg, metrics_interval=5.0,
                    learn_prefill_cost=learn)
        out[arm] = r.summary()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", action="append", help="repeatable (default: glm4.6-8xh100, qwen3-235b-8xh100)")
    ap.add_argument("--programs", type=int, action="append", help="repeatable (default 64, 128, 192, 256)")
    ap.add_argument("--duration", type=float, default=1800.0, help="simulated seconds per run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="160 programs, 600 simulated seconds")
    args = ap.parse_args(argv)
    profiles = args.profile or ["glm4.6-8xh100", "qwen3-235b-8xh100"]
    levels = args.programs or ([160] if args.quick else [64, 128, 192, 256])
    duration = 600.0 if args.quick else args.duration
    worst = worst_learned = float("inf")
    for prof in profiles:
        p = prefill_seconds_per_token(load_profile(prof))
        print(f"SIMULATED ({prof}), {duration:.0f} s per run, prefill cost from the profile {p * 1e6:.1f} us/token")
        print(f"  {'programs':>8s} {'vllm':>8s} {'fixed':>8s} {'told':>8s} {'learned':>8s}  told/fixed  "
              f"learned/fixed  fixed/vllm  learned/vllm  hit% v/f/t/l      preempt v/f/t/l")
        for n in levels:
            t0 = time.perf_counter()
            s = compare(prof, n, duration, args.seed)
            v, f, c, lr = (s[a]["steps_per_min"] for a in ARMS)
            hits = "/".join(f"{100 * (s[a]['prefix_hit_rate'] or 0):.0f}" for a in ARMS)
            pre = "/".join(str(s[a]["preemptions"]) for a in ARMS)
            worst = min(worst, c / f if f else float("inf"))
            worst_learned = min(worst_learned, lr / f if f else float("inf"))
            print(f"  {n:8d} {v:8.1f} {f:8.1f} {c:8.1f} {lr:8.1f}  {c / f:9.3f}x {lr / f:12.3f}x {f / v:10.2f}x "
                  f"{lr / v:12.2f}x  {hits:16s} {pre:16s} ({time.perf_counter() - t0:.0f} s wall)", flush=True)
    print(f"worst cost-aware / fixed over all runs: learned online (the default) {worst_learned:.3f}x, told the "
          f"profile's cost {worst:.3f}x (SIMULATED)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
