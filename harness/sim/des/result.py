"""What a simulated run produced, its manifest, and its run directory.

`des_manifest` describes a run before it starts (arm, programs, duration, seed, workload, profile and the
engine knobs that shape the numbers); the simulation adds its results to that manifest, and `write_run_dir`
writes it once, beside the step records and the engine-metrics series, in the harness's run-directory format.
Steps/min is counted by harness.throughput from the in-memory run (the same count a run directory gets).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.records import EngineSample, JsonlWriter, RunManifest, RunPaths, git_revision, package_versions
from harness.sim.timing import Profile
from harness.throughput import RunData, Window, record_steps_per_min
from ThunderAgent.records import StepRecord


def default_window(duration: float) -> tuple[float, float]:
    """10m-70m when the run is long enough (80 min or more), else the whole run."""
    if duration >= 80 * 60:
        return 600.0, 4200.0
    return 0.0, duration


def des_manifest(prof: Profile, *, arm: str, programs: int, duration_s: float, seed: int, workload: str,
                 run_id: str, num_gpu_blocks: int | None = None, pin_ttl_s: float | None = None,
                 kv_offload_gib: float | None = None) -> RunManifest:
    """The manifest of a simulated run before it runs. `prof` is the profile the engine runs (with any
    num_gpu_blocks override applied); `num_gpu_blocks` the override itself (None: the profile's own),
    `pin_ttl_s` the continuum arm's pin time, `kv_offload_gib` the host KV tier of an -offload arm."""
    extra: dict[str, Any] = {
        "label": f"simulated ({prof.name})",
        "block_size": prof.engine.block_size,
        "num_gpu_blocks": prof.engine.num_gpu_blocks,
        "num_gpu_blocks_override": num_gpu_blocks,
        "timing": {"beta0": prof.timing.beta0, "beta1": prof.timing.beta1, "beta2": prof.timing.beta2,
                   "beta3": prof.timing.beta3},
        "pin_ttl_s": pin_ttl_s,
    }
    if kv_offload_gib is not None:
        extra["kv_offload_gib"] = kv_offload_gib
    return RunManifest(
        run_id=run_id, arm=arm, programs=programs, agent="synthetic", engine="des", simulated=True,
        profile=prof.name, start_time=0.0, time_scale=1.0, workload=workload, seed=seed, duration_s=duration_s,
        end_time=duration_s, extra=extra,
    )


@dataclass
class DesResult:
    """Everything one simulated run produced (virtual seconds throughout); `manifest` is the run's
    description with its results added (extra: summary, des_cpu_s, des_wall_s, the host tier's figures)."""

    arm: str
    profile: str
    programs: int
    duration_s: float
    seed: int
    steps: list[StepRecord]
    metrics: list[dict[str, float]]
    engine_steps: int
    engine_calls: int
    wall_s: float
    cpu_s: float
    manifest: RunManifest
    policy_stats: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None

    @property
    def label(self) -> str:
        return f"simulated ({self.profile})"

    def run_data(self, samples: bool = True) -> RunData:
        """The run as harness.throughput reads a run directory, without the round trip through files."""
        return RunData(self.manifest, self.steps, engine_samples(self.metrics) if samples else [], self.run_dir)

    def steps_per_min(self, window: tuple[float, float] | None = None) -> float:
        """Served LLM calls per simulated minute whose end lies in the window (default: 10m-70m when the run
        is long enough, else the whole run)."""
        lo, hi = window if window is not None else default_window(self.duration_s)
        return record_steps_per_min(self.run_data(samples=False), Window(lo, hi))

    def summary(self) -> dict[str, Any]:
        last = self.metrics[-1] if self.metrics else {}
        q = last.get("vllm:prefix_cache_queries_total", 0.0)
        h = last.get("vllm:prefix_cache_hits_total", 0.0)
        lo, hi = default_window(self.duration_s)
        return {
            "label": self.label,
            "arm": self.arm,
            "programs": self.programs,
            "window_s": [lo, hi],
            "steps_per_min": round(self.steps_per_min(), 2),
            "steps_total": sum(1 for s in self.steps if s.status == "ok"),
            "prefix_hit_rate": round(h / q, 4) if q else None,
            **self.host_summary(),
            "preemptions": int(last.get("vllm:num_preemptions_total", 0)),
            "engine_steps": self.engine_steps,
            "engine_calls": self.engine_calls,
            "cpu_s": round(self.cpu_s, 3),
            "holds": self.holds(),
            **({"policy": self.policy_stats} if self.policy_stats else {}),
        }

    def host_summary(self) -> dict[str, Any]:
        """With a host KV tier: the share of queried prompt tokens it served, and what crossed PCIe."""
        last = self.metrics[-1] if self.metrics else {}
        if "vllm:external_prefix_cache_hits_total" not in last:
            return {}
        q = last.get("vllm:prefix_cache_queries_total", 0.0)
        eh = last["vllm:external_prefix_cache_hits_total"]
        return {
            "host_hit_rate": round(eh / q, 4) if q else None,
            "combined_hit_rate": round((last.get("vllm:prefix_cache_hits_total", 0.0) + eh) / q, 4) if q else None,
            "host_load_gb": round(last["vllm:kv_offload_load_bytes_total"] / 1e9, 2),
            "host_load_s": round(last["vllm:kv_offload_load_time_total"], 2),
            "host_store_gb": round(last["vllm:kv_offload_store_bytes_total"] / 1e9, 2),
        }

    def holds(self) -> dict[str, Any]:
        """Where the prefill work went, by why a call waited: first calls of a program ("first"), calls held
        in mid-trajectory by a scheduler ("held": the cost of a pause -> resume rotation), calls that did
        not wait ("free"). Per class: calls, mean wait (s), uncached prompt tokens (re-prefilled; the
        engine's own evictions land in "free")."""
        out: dict[str, dict[str, float]] = {}
        total = 0
        for s in self.steps:
            if s.status != "ok":
                continue
            cls = "first" if s.step == 1 else ("held" if (s.pause_s or 0) > 0 else "free")
            d = out.setdefault(cls, {"calls": 0, "wait_s": 0.0, "uncached_tokens": 0})
            unc = s.prompt_tokens - (s.cached_tokens or 0)
            d["calls"] += 1
            d["wait_s"] += s.pause_s or 0.0
            d["uncached_tokens"] += unc
            total += unc
        for d in out.values():
            d["wait_s"] = round(d["wait_s"] / d["calls"], 2)
            d["uncached_share"] = round(d["uncached_tokens"] / total, 4) if total else 0.0
        return out


def engine_samples(metrics: list[dict[str, float]]) -> list[EngineSample]:
    """The engine-metrics series (one row per scrape, "t" = virtual seconds) as run-directory samples: floats,
    as a run directory's reader returns them, so the in-memory run and the written one count the same."""
    return [EngineSample(t=float(row["t"]), engine="sim", values={k: float(v) for k, v in row.items() if k != "t"})
            for row in metrics]


def write_run_dir(result: DesResult, out_dir: str | Path) -> Path:
    """manifest.json + steps.jsonl + engine_metrics.jsonl in `out_dir` (the harness's run-directory format);
    the manifest is the result's, stamped with this checkout's revision and package versions."""
    paths = RunPaths.create(out_dir)
    for f in (paths.steps, paths.engine_metrics):
        if f.exists():
            f.unlink()  # a DES run is regenerated whole, never appended to
    with JsonlWriter(paths.steps) as w:
        for s in result.steps:
            w.write(s)
    with JsonlWriter(paths.engine_metrics) as w:
        for sample in engine_samples(result.metrics):
            w.write_line(sample.to_json())
    m = result.manifest
    if m.git_revision is None:
        m.git_revision = git_revision()
    if not m.versions:
        m.versions = package_versions()
    m.write(paths.manifest)
    result.run_dir = paths.root
    return paths.root
