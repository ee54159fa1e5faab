"""KV offloading alone and under ThunderAgent: one table and one figure from `thunderbench reproduce` sweeps.

Each sweep is a results directory of `thunderbench reproduce <recipe> --engine des --kv-offload-gib G` with some
of the arms vllm, vllm-offload, thunderagent, thunderagent-offload (and the bound arm des adds). Rows are read
from the sweep's summary.csv; the host tier's figures (share of queried prompt tokens it served, GB loaded over
PCIe) from each offload point's manifest. A 0 GiB tier is the plain arm exactly (the DES test
tests/unit/test_sim_offload.py checks it), so the plain arms stand for the 0 GiB rows. Everything here is
SIMULATED, labelled with the profile.

    python benchmarks/offload_compare.py SWEEP[@VARIANT][#ARM,ARM] ... --out results/offload
    python benchmarks/offload_compare.py --quick     (CI size: runs one small sweep itself, prints the table)

VARIANT names a policy setting the sweep ran with (a column of its own, e.g. "tier-blind"); #ARM,ARM keeps only
those arms of the sweep.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ARMS = ("vllm", "vllm-offload", "thunderagent", "thunderagent-offload", "bound")
FIELDS = ("recipe", "profile", "arm", "variant", "kv_offload_gib", "programs", "steps_per_min", "ci_low", "ci_high",
          "prefix_hit_rate", "host_hit_rate", "combined_hit_rate", "preemptions", "host_load_gb", "label")
# hit rates and host_load_gb are over the steps/min window; preemptions as the sweep's summary counts them


def read_sweep(spec: str) -> list[dict[str, object]]:
    spec, _, keep = spec.partition("#")
    path, _, variant = spec.partition("@")
    d = Path(path)
    arms = set(keep.split(",")) if keep else set(ARMS)
    sweep = json.loads((d / "manifest.json").read_text())
    gib = sweep.get("kv_offload_gib")
    rows = []
    with open(d / "summary.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["status"] != "ok" or r["arm"] not in arms:
                continue
            off = r["arm"].endswith("-offload")
            win = window_rates(d / r["run_dir"] / "engine_metrics.jsonl", sweep["window"])
            hit = win["gpu"]
            host = win["host"] if off else 0.0
            rows.append({
                "recipe": r["recipe"], "profile": r["profile"], "arm": r["arm"], "variant": variant,
                "kv_offload_gib": gib if off else 0.0, "programs": int(r["programs"]),
                "steps_per_min": round(float(r["steps_per_min"]), 1),
                "ci_low": round(float(r["ci_low"]), 1), "ci_high": round(float(r["ci_high"]), 1),
                "prefix_hit_rate": round(hit, 4) if hit is not None else None,
                "host_hit_rate": round(host, 4),
                "combined_hit_rate": round(hit + host, 4),
                "preemptions": int(float(r["preemptions"] or 0)),
                "host_load_gb": round(win["load_gb"], 1),
                "label": f"simulated ({r['profile']})",
            })
    return rows


def window_rates(path: Path, window: str) -> dict[str, float]:
    """Over the steps/min window: GPU prefix hits and host-tier hits as shares of the queried prompt tokens
    (vLLM's counters: vllm:prefix_cache_* and vllm:external_prefix_cache_*), and GB loaded over PCIe."""
    from harness.durations import parse_window

    w0, w1 = parse_window(window)
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    inside = [x for x in rows if w0 <= x["t"] <= w1]
    a, b = inside[0], inside[-1]

    def d(k: str) -> float:
        return float(b.get(k, 0.0)) - float(a.get(k, 0.0))

    q = d("vllm:prefix_cache_queries_total")
    return {"gpu": d("vllm:prefix_cache_hits_total") / q if q else 0.0,
            "host": d("vllm:external_prefix_cache_hits_total") / q if q else 0.0,
            "load_gb": d("vllm:kv_offload_load_bytes_total") / 1e9}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweeps", nargs="*", help="SWEEP_DIR[@VARIANT][#ARM,ARM]")
    ap.add_argument("--out", type=Path, default=Path("results/offload"))
    ap.add_argument("--quick", action="store_true",
                    help="CI size: simulate glm4.6 at 64 programs, the four arms with a 256 GiB tier, 12 minutes, "
                         "and print the table (nothing written outside a temporary directory)")
    a = ap.parse_args(argv)
    if a.quick:
        return quick()
    if not a.sweeps:
        ap.error("give one or more SWEEP directories (or --quick)")
    rows: list[dict[str, object]] = []
    seen: set[tuple] = set()
    for d in a.sweeps:
        for r in read_sweep(d):
            key = (r["recipe"], r["arm"], r["variant"], r["kv_offload_gib"], r["programs"])
            if key not in seen:  # a plain arm measured in several sweeps is one row
                seen.add(key)
                rows.append(r)
    rows.sort(key=lambda r: (r["recipe"], r["programs"], ARMS.index(str(r["arm"])), r["kv_offload_gib"]))
    a.out.mkdir(parents=True, exist_ok=True)
    with open(a.out / "offload.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    plot(rows, a.out / "offload.png")
    print_table(rows)
    return 0


def quick() -> int:
    """One small sweep, simulated here and now; the table it prints is the figure."""
    with tempfile.TemporaryDirectory(prefix="offload-quick-") as tmp:
        sweep = Path(tmp) / "sweep"
        subprocess.run([sys.executable, "-m", "harness.cli", "reproduce", "glm4.6", "--engine", "des",
                        "--levels", "64", "--duration", "12m", "--window", "2m-12m", "--jobs", "2",
                        "--arms", "vllm,vllm-offload,thunderagent,thunderagent-offload", "--kv-offload-gib", "256",
                        "--out", str(sweep)], check=True, stdout=subprocess.DEVNULL)
        rows = read_sweep(str(sweep))
    rows.sort(key=lambda r: (r["recipe"], r["programs"], ARMS.index(str(r["arm"])), r["kv_offload_gib"]))
    print("SIMULATED (glm4.6-8xh100), 64 programs, 12-minute DES runs, window 2-12 min, host tier 256 GiB")
    print_table(rows)
    return 0


def series_name(r: dict[str, object]) -> str:
    name = str(r["arm"]) if not str(r["arm"]).endswith("-offload") else f"{r['arm']} {r['kv_offload_gib']:g} GiB"
    return f"{name} ({r['variant']})" if r["variant"] else name


def plot(rows: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recipes = sorted({str(r["recipe"]) for r in rows})
    fig, axes = plt.subplots(1, len(recipes), figsize=(max(7.0, 5.6 * len(recipes)), 5.6), squeeze=False)
    style = {"vllm": ("tab:gray", "-"), "vllm-offload": ("tab:blue", "--"), "thunderagent": ("tab:red", "-"),
             "thunderagent-offload": ("tab:orange", "--"), "bound": ("black", ":")}
    for ax, rec in zip(axes[0], recipes):
        mine = [r for r in rows if r["recipe"] == rec]
        names = sorted({series_name(r) for r in mine}, key=lambda n: (ARMS.index(n.split()[0]), n))
        for name in names:
            pts = sorted((int(r["programs"]), float(r["steps_per_min"])) for r in mine if series_name(r) == name)
            color, ls = style[name.split()[0]]
            if "credit" in name:
                ls = "-."
            big = "1024" in name
            ax.plot([p for p, _ in pts], [s for _, s in pts], ls, color=color, marker="o" if not big else "s",
                    ms=3.5, lw=1.2 if not big else 2.0, label=name, alpha=0.9)
        prof = mine[0]["profile"]
        ax.set_title(f"{rec}: SIMULATED ({prof})", fontsize=9)
        ax.set_xlabel("parallel programs")
        ax.set_ylabel("agent steps / min")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    fig.suptitle("KV offloading to host memory, alone and under ThunderAgent (DES, SIMULATED)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def print_table(rows: list[dict[str, object]]) -> None:
    print("| recipe | programs | arm | host tier | steps/min (95% CI) | GPU hit | host hit | preemptions |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        tier = f"{r['kv_offload_gib']:g} GiB" if str(r["arm"]).endswith("-offload") else "-"
        hh = r["host_hit_rate"]
        arm = f"{r['arm']} ({r['variant']})" if r["variant"] else r["arm"]
        print(f"| {r['recipe']} | {r['programs']} | {arm} | {tier} | {r['steps_per_min']} "
              f"({r['ci_low']}-{r['ci_high']}) | {r['prefix_hit_rate']:.1%} | "
              f"{'-' if hh is None else format(float(hh), '.1%')} | {r['preemptions']} |")


if __name__ == "__main__":
    raise SystemExit(main())
