"""What the points of a sweep sample from: the workload parameters (or recorded traces) its options resolve
to, and the record of them that every manifest carries (source, files, SHA-256, resolved parameters)."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from harness.sweep.options import TRACE_PREFIX, SweepOptions
from harness.traces import load_traces
from harness.workload import Trajectory, WorkloadParams, load_workload_params


def workload_traces(opts: SweepOptions) -> list[Trajectory] | None:
    """`--workload trace:PATH`: the recorded trajectories (any format harness.traces reads), each cut at the
    recipe's max_iterations; None when the run samples from a parameter file."""
    if not opts.workload.startswith(TRACE_PREFIX):
        return None

    cap = opts.recipe.workload.max_iterations
    return [replace(t, turns=t.turns[:cap], censored=t.censored or len(t.turns) >= cap)
            for t in load_traces(opts.workload[len(TRACE_PREFIX):])]


def workload_params(opts: SweepOptions) -> WorkloadParams:
    """The recipe's synthetic trajectory model (or --workload's), its step cap clipped to the recipe's
    max_iterations (and, for a prediction-band point, its inputs moved inside their ranges)."""
    r = opts.recipe
    params = load_workload_params(opts.workload or r.workload.params_source(r.path.parent))
    if opts.design is not None:
        params = params.at({k: v for k, v in opts.design.items() if k != "kv_capacity"})
    cap = r.workload.max_iterations
    if params.turns.max > cap:
        params = params.scaled(turns=replace(params.turns, max=float(cap), min=min(params.turns.min, float(cap))))
    return params


def workload_record(opts: SweepOptions) -> dict[str, Any]:
    """What the manifests record of the workload that shaped the numbers: its source as given (a name, a
    parameter file, trace:PATH), the file(s) read (repository-relative where inside it) with a SHA-256 of their
    content, and for a parameter model the resolved parameters the points sampled from (step cap clipped)."""
    r = opts.recipe
    source = opts.workload or r.workload.params_source(r.path.parent)
    if source.startswith(TRACE_PREFIX):
        root = Path(source[len(TRACE_PREFIX):])
        files = sorted(f for f in root.rglob("*") if f.is_file()) if root.is_dir() else [root]
    else:
        params = workload_params(opts)
        files = [Path(params.origin)]
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    rec: dict[str, Any] = {"source": source if source.startswith(TRACE_PREFIX) else _repo_relative(Path(source))
                           if Path(source).suffix == ".toml" else source,
                           "files": [_repo_relative(f) for f in files], "sha256": h.hexdigest()}
    if not source.startswith(TRACE_PREFIX):
        d = asdict(params)
        rec["params"] = _finite({k: v for k, v in d.items()
                                 if k not in ("raw", "sources", "ranges", "origin", "description")})
    return rec


def _finite(v: Any) -> Any:
    """JSON-safe copy: an unbounded parameter (inf) is written as the string "inf"."""
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return str(v)
    return v


def _repo_relative(path: Path) -> str:
    """`path` relative to the repository (or the working directory) when inside it: no machine paths in results."""
    p = path.resolve()
    for base in (Path(__file__).resolve().parents[2], Path.cwd().resolve()):
        if base in p.parents:
            return p.relative_to(base).as_posix()
    return str(path)
