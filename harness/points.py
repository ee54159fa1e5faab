"""One measurement point (one arm at one concurrency) on each engine, and its summary row.

  * run_point_des  — E's discrete-event simulator (harness/sim/des.py), in-process, virtual time, with
                     the same ThunderAgent policy core as the proxy (S's CapacityPolicy, via make_policy);
  * run_point_live — a fresh engine process per point (the simulator's HTTP server on an accelerated
                     clock, or the recipe's real vLLM), ThunderAgent in front of it for the thunderagent
                     arm, and W's runner driving N agent programs over HTTP; every process is stopped
                     (process group, SIGTERM then SIGKILL) before the function returns.
Each writes a run directory in W's format (harness/records.py): manifest.json, steps.jsonl,
engine_metrics.jsonl (+ instances.jsonl, predictions.jsonl from the runner).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

if TYPE_CHECKING:
    from harness.recipes import Recipe
    from harness.reproduce import SweepOptions


def summarize_run(run_dir: Path, window: str) -> dict[str, Any]:
    """The summary-row fields of one run directory (W's harness.throughput does the counting)."""
    from harness.throughput import RunData

    return summary_row(RunData.load(run_dir), window)


def summary_row(run, window: str) -> dict[str, Any]:  # run: harness.throughput.RunData, on disk or in memory
    """The summary-row fields of one run (harness.throughput does the counting)."""
    from harness.throughput import summarize

    s = summarize(run, window)
    m = run.manifest
    engine, agent, dataset = m.engine, m.agent, m.dataset
    return {
        "steps_per_min": s.steps_per_min,
        "ci_low": s.ci_low,
        "ci_high": s.ci_high,
        "steps_per_min_records": s.record_steps_per_min,
        "prefix_hit_rate": s.prefix_hit_rate,
        "preemptions": s.preemptions,
        "p50_step_latency_s": s.p50_step_latency_s,
        "p95_step_latency_s": s.p95_step_latency_s,
        "steps_in_window": s.steps_in_window,
        "simulated": s.simulated,
        "profile": s.profile,
        "engine": engine,
        "agree": s.agree,
        "p99_step_latency_s": s.p99_step_latency_s,
        "p50_ttft_s": s.p50_ttft_s,
        "p95_ttft_s": s.p95_ttft_s,
        "p99_ttft_s": s.p99_ttft_s,
        "p50_queue_wait_s": s.p50_queue_wait_s,
        "p95_queue_wait_s": s.p95_queue_wait_s,
        "p99_queue_wait_s": s.p99_queue_wait_s,
        "errors_in_window": s.errors_in_window,
        "window": s.window,
        "window_bins": s.window_bins,
        "engine_steps_per_min": s.engine_steps_per_min,
        "steps_source": s.steps_source,
        "hit_rate_source": s.hit_rate_source,
        "notes": list(s.notes),
        "agent": agent,
        "dataset": dataset,
    }


def proxy_config(recipe: "Recipe"):  # -> ThunderAgent.config.Config
    """The ThunderAgent Config the recipe's proxy would run with (router + [proxy].args), parsed by the
    proxy's own CLI parser so the DES policy and the real proxy read the same flags the same way."""
    import contextlib
    import io

    from harness.reproduce import ReproduceError
    from ThunderAgent.cli import parse_config

    argv = ["--router", recipe.proxy.router, *recipe.proxy.args]
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            return parse_config(argv)
    except SystemExit:
        msg = " ".join(buf.getvalue().split()) or "invalid flags"
        raise ReproduceError(f"recipe {recipe.path.name}: [proxy].args {argv!r}: {msg}") from None


def run_point_des(opts: "SweepOptions", arm: str, programs: int, run_dir: Path, console: Console) -> dict[str, Any]:
    """E's discrete-event simulator for one point: a fresh engine model, the recipe's workload model and
    (arm thunderagent) the same policy core the proxy runs, on virtual time. Writes the run directory."""
    from harness.reproduce import PointFailed
    from harness.sim.des import DesError, run_des

    r = opts.recipe
    traces = workload_traces(opts)
    # the manifest is written once, by the simulation: the sweep's part of it goes in before the run (the DES
    # adds des_cpu_s, des_wall_s and, on an -offload arm, kv_offload_gib and what the host tier served)
    record: dict[str, Any] = {"recipe": r.name, "dataset": "lite-synthetic",
                              "extra": {"window": opts.window, "workload_params": workload_record(opts)}}
    if opts.workload:
        record["workload"] = opts.workload
    if opts.design is not None:  # a prediction-band point: where its inputs sit inside their ranges
        record["extra"]["design"] = opts.design
    try:
        res = run_des(
            r.sim.profile, arm=arm, programs=programs, duration_s=opts.duration_s, seed=opts.seed,
            workload=None if traces else workload_params(opts), trajectories=traces, resample=bool(traces),
            policy_config=proxy_config(r) if arm.startswith("thunderagent") else None,
            num_gpu_blocks=opts.kv_blocks or r.sim.num_gpu_blocks or None, out_dir=run_dir,
            run_id=f"{r.name}-{arm}-{programs}",
            kv_offload_gib=opts.offload_gib if arm.endswith("-offload") else None, record=record,
        )
    except DesError as e:
        raise PointFailed(str(e)) from None
    (run_dir / "predictions.jsonl").touch()  # synthetic agents make no patches: present, empty
    out = {"des_cpu_s": round(res.cpu_s, 3), "engine_steps": res.engine_steps, **res.policy_stats}
    try:  # the summary row from the run in memory; a window that does not fit is reported by the sweep
        out["summary"] = summary_row(res.run_data(), opts.window)
    except ValueError:
        pass
    return out


TRACE_PREFIX = "trace:"


def check_workload(workload: str, max_model_len: int | None = None) -> None:
    """Raise the workload's one-line error now if `--workload` names a bad parameter or trace file, or traces
    whose calls cannot fit the engine's context (`max_model_len`: every such call would fail at once)."""
    if workload.startswith(TRACE_PREFIX):
        from harness.traces import TraceError, load_traces

        trajs = load_traces(workload[len(TRACE_PREFIX):])
        if max_model_len:
            deep = [t for t in trajs if t.prompt_tokens(len(t.turns) - 1) + t.turns[-1].output_tokens > max_model_len]
            if deep:
                worst = max(t.prompt_tokens(len(t.turns) - 1) + t.turns[-1].output_tokens for t in deep)
                raise TraceError(f"{workload}: {len(deep)} of {len(trajs)} trajectories outgrow the engine's "
                                 f"max_model_len {max_model_len} (deepest {worst} tokens): use a recipe whose "
                                 "model has a longer context")
    else:
        from harness.workload import load_workload_params

        load_workload_params(workload)


def workload_traces(opts: "SweepOptions"):  # -> list[harness.workload.Trajectory] | None
    """`--workload trace:PATH`: the recorded trajectories (any format harness.traces reads), each cut at the
    recipe's max_iterations; None when the run samples from a parameter file."""
    from dataclasses import replace

    if not opts.workload.startswith(TRACE_PREFIX):
        return None
    from harness.traces import load_traces

    cap = opts.recipe.workload.max_iterations
    return [replace(t, turns=t.turns[:cap], censored=t.censored or len(t.turns) >= cap)
            for t in load_traces(opts.workload[len(TRACE_PREFIX):])]


def workload_record(opts: "SweepOptions") -> dict[str, Any]:
    """What the manifests record of the workload that shaped the numbers: its source as given (a name, a
    parameter file, trace:PATH), the file(s) read (repository-relative where inside it) with a SHA-256 of their
    content, and for a parameter model the resolved parameters the points sampled from (step cap clipped)."""
    import hashlib
    from dataclasses import asdict

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
    for base in (Path(__file__).resolve().parents[1], Path.cwd().resolve()):
        if base in p.parents:
            return p.relative_to(base).as_posix()
    return str(path)


def workload_params(opts: "SweepOptions"):  # -> harness.workload.WorkloadParams
    """The recipe's synthetic trajectory model (or --workload's), its step cap clipped to the recipe's
    max_iterations (and, for a prediction-band point, its inputs moved inside their ranges)."""
    from dataclasses import replace

    from harness.workload import load_workload_params

    r = opts.recipe
    params = load_workload_params(opts.workload or r.workload.params_source(r.path.parent))
    if opts.design is not None:
        params = params.at({k: v for k, v in opts.design.items() if k != "kv_capacity"})
    cap = r.workload.max_iterations
    if params.turns.max > cap:
        params = params.scaled(turns=replace(params.turns, max=float(cap), min=min(params.turns.min, float(cap))))
    return params


def make_agent(opts: "SweepOptions", programs: int, run_dir: Path):  # -> harness.agents.base.Agent
    """The agent for a live point: synthetic (sampled trajectories) or a real agent library (A's)."""
    if opts.agent == "synthetic":
        from harness.agents.synthetic import SyntheticAgent

        ts = opts.time_scale if opts.engine == "live-sim" else 1.0
        traces = workload_traces(opts)
        if traces:
            return SyntheticAgent(traces=traces, seed=opts.seed, programs=programs, time_scale=ts, resample=True)
        return SyntheticAgent(workload_params(opts), seed=opts.seed, programs=programs, time_scale=ts)
    where: dict[str, Any] = {}  # --workspace / --repos-dir (the agents fall back to their env vars)
    if opts.repos_dir is not None:
        where["repos_dir"] = Path(opts.repos_dir).expanduser()
    if opts.agent == "openhands":
        from harness.agents import openhands

        if opts.workspace is not None:
            where["workspace"] = opts.workspace
        return openhands.make_agent(max_iterations=opts.recipe.workload.max_iterations,
                                    predictions_path=run_dir / "predictions.jsonl",
                                    conversations_path=run_dir / "conversations.jsonl", **where)
    if opts.agent == "mini-swe-agent":
        from harness.agents import miniswe

        if opts.workspace is not None:
            where["environment"] = opts.workspace
        return miniswe.make_agent(max_iterations=opts.recipe.workload.max_iterations,
                                  predictions_path=run_dir / "predictions.jsonl",
                                  trajectories_dir=run_dir / "trajectories", **where)
    raise ValueError(f"unknown agent {opts.agent!r}")


def run_point_live(opts: "SweepOptions", arm: str, programs: int, run_dir: Path, console: Console) -> dict[str, Any]:
    """A fresh engine (+ proxy) for this point, the runner for the run's duration, everything stopped after.

    live-sim uses ephemeral ports (nothing outside talks to these processes); the real engine uses the
    recipe's ports, so a port already taken is a clear failure of the point."""
    import asyncio

    from harness.agents.base import Endpoint
    from harness.datasets import load_instances
    from harness.launch import vllm_spec
    from harness.launch.process import LaunchError, Supervisor, free_port
    from harness.launch.proxy import proxy_spec
    from harness.launch.sim import sim_spec
    from harness.reproduce import PointFailed
    from harness.runner import RunConfig
    from harness.runner import run as run_programs

    if arm in ("continuum", "bound"):
        raise PointFailed(f"the {arm} arm exists only in the des engine")
    r = opts.recipe
    sim = opts.engine == "live-sim"
    ts = opts.time_scale if sim else 1.0
    tg = opts.targets  # running servers (--endpoint/--proxy or `up`): nothing of theirs is started or stopped
    logs = run_dir / "logs"
    with Supervisor(logs, console) as sup:
        try:
            gib = opts.offload_gib if arm.endswith("-offload") else None  # vLLM's KV offloading to host memory
            if tg is not None:  # a running engine brings whatever tier it was started with
                backend, argv = tg.engine, None
            else:
                eng = (sim_spec(r, port=free_port(), time_scale=ts, kv_offload_gib=gib) if sim
                       else vllm_spec(r, kv_offload_gib=gib))
                sup.start(eng)
                backend, argv = f"http://{eng.host}:{eng.port}", list(eng.argv)
            base_url = backend + "/v1"
            if arm.startswith("thunderagent"):
                if tg is not None and tg.proxy is not None:
                    base_url = tg.proxy + "/v1"
                else:
                    own = sim or tg is not None  # in front of a running engine: a free port, not the recipe's
                    px = proxy_spec(r, backend, port=free_port() if own else None, profile_dir=str(run_dir / "proxy"),
                                    kv_offload_gib=gib)
                    sup.start(px)
                    base_url = f"http://{px.host}:{px.port}/v1"
            model = tg.model_for(r.engine.served_name) if tg is not None else r.engine.served_name
        except LaunchError as e:
            raise PointFailed(str(e)) from None
        endpoint = Endpoint(base_url=base_url, model=model, thunderagent=arm.startswith("thunderagent"))
        dataset = opts.dataset  # make_options resolved it (lite-synthetic for synthetic agents on the simulator)
        extra: dict[str, Any] = {"window": opts.window}
        if argv is not None:
            extra["engine_argv"] = argv
        if tg is not None:
            extra["targets"] = tg.as_dict()
        if opts.agent == "synthetic":
            extra["workload_params"] = workload_record(opts)
        cfg = RunConfig(
            run_dir=run_dir, arm=arm, programs=programs, endpoint=endpoint,
            instances=load_instances(dataset, slice=opts.slice, instances=opts.instances),
            duration_s=opts.duration_s / ts, metrics_urls=[backend],
            scrape_interval_s=max(0.25, 5.0 / ts), agent_name=opts.agent,
            engine="sim" if sim else ("vllm" if tg is not None else r.engine.kind), simulated=sim,
            profile=opts.profile if sim else None,
            time_scale=ts, recipe=r.name, workload=opts.workload or r.workload.params_source(r.path.parent), dataset=dataset,
            seed=opts.seed, progress=False, handle_signals=False, extra=extra,
        )
        agent = make_agent(opts, programs, run_dir)

        async def _drive():  # one event loop for the run and the agent's client shutdown
            try:
                return await run_programs(cfg, agent)
            finally:
                close = getattr(agent, "aclose", None)
                if close is not None:
                    await close()

        result = asyncio.run(_drive())
        dead = [p for p in sup.running if not p.alive()]
        procs = [{"name": p.name, "pid": p.pid, "pgid": p.pgid, "log": str(Path(p.log).relative_to(run_dir))}
                 for p in sup.running]
        if dead:
            raise PointFailed(f"{dead[0].name} died during the run (log {dead[0].log})")
        stopped = dict(sup.stop_all())
    for p in procs:
        p["stopped"] = stopped.get(p["name"])
    _annotate(run_dir, processes=procs)
    if not (run_dir / "predictions.jsonl").exists():
        (run_dir / "predictions.jsonl").touch()  # synthetic agents make no patches: present, empty
    return {"steps": result.steps, "ok_instances": result.ok, "errors": result.errors, "processes": procs}


def _annotate(run_dir: Path, **extra: Any) -> None:
    """Add keys to the run manifest's `extra` (atomic rewrite)."""
    from harness.records import RunManifest

    m = RunManifest.read(run_dir / "manifest.json")
    m.extra.update(extra)
    m.write(run_dir / "manifest.json")
