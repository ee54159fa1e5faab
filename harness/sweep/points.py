"""One measurement point (one arm at one concurrency) on each engine, and running it inside a sweep.

  * run_point_des  — the discrete-event simulator (harness/sim/des/), in-process, virtual time, with the
                     same ThunderAgent policy core as the proxy (make_policy over the recipe's proxy flags);
  * run_point_live — a fresh engine process per point (the simulator's HTTP server on an accelerated
                     clock, or the recipe's real vLLM), ThunderAgent in front of it for the thunderagent
                     arm, and the runner driving N agent programs over HTTP; every process is stopped
                     (process group, SIGTERM then SIGKILL) before the function returns.
Each writes a run directory in the one record format (harness/records.py): manifest.json, steps.jsonl,
engine_metrics.jsonl (+ instances.jsonl, predictions.jsonl from the runner). `run_one` runs either inside a
sweep and turns a failure into a failed PointResult; `des_worker` is the same in a worker process.

The real agent libraries (openhands, mini-swe-agent) are imported only when a point uses them: they are
heavy optional dependencies.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.markup import escape

from harness.agents.base import Endpoint
from harness.agents.synthetic import SyntheticAgent
from harness.datasets import load_instances
from harness.launch import vllm_spec
from harness.launch.process import LaunchError, Supervisor, free_port
from harness.launch.proxy import proxy_spec
from harness.launch.sim import sim_spec
from harness.records import RunManifest
from harness.runner import RunConfig
from harness.runner import run as run_programs
from harness.sim.des import DesError, run_des
from harness.sweep.files import write_json
from harness.sweep.inputs import workload_params, workload_record, workload_traces
from harness.sweep.options import SweepOptions, proxy_config
from harness.sweep.progress import SweepProgress
from harness.sweep.summary import PointResult, summarize_run, summary_row


class PointFailed(RuntimeError):
    """One point could not be measured (engine died, never became healthy, ...); the sweep continues."""


PointRunner = Callable[[SweepOptions, str, int, Path, Console], dict[str, Any]]


def run_point_des(opts: SweepOptions, arm: str, programs: int, run_dir: Path, console: Console) -> dict[str, Any]:
    """The discrete-event simulator for one point: a fresh engine model, the recipe's workload model and
    (arm thunderagent) the same policy core the proxy runs, on virtual time. Writes the run directory."""
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


def make_agent(opts: SweepOptions, programs: int, run_dir: Path):  # -> harness.agents.base.Agent
    """The agent for a live point: synthetic (sampled trajectories) or a real agent library."""
    if opts.agent == "synthetic":
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


def run_point_live(opts: SweepOptions, arm: str, programs: int, run_dir: Path, console: Console) -> dict[str, Any]:
    """A fresh engine (+ proxy) for this point, the runner for the run's duration, everything stopped after.

    live-sim uses ephemeral ports (nothing outside talks to these processes); the real engine uses the
    recipe's ports, so a port already taken is a clear failure of the point."""
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
    m = RunManifest.read(run_dir / "manifest.json")
    m.extra.update(extra)
    m.write(run_dir / "manifest.json")


def point_runner(engine: str) -> PointRunner:
    if engine == "des":
        return run_point_des

    return run_point_live


def point_name(opts: SweepOptions, arm: str, programs: int, seed: int) -> str:
    """A point's directory: <arm>-<programs>, with -seed<S> when the sweep repeats over seeds."""
    return f"{arm}-{programs}" + (f"-seed{seed}" if opts.repeats > 1 else "")


def run_one(opts: SweepOptions, runner: PointRunner, arm: str, programs: int, root: Path,
            console: Console, mkdir: bool = True, name: str | None = None,
            progress: SweepProgress | None = None) -> PointResult:
    """Run one point into root/<name>; a PointFailed becomes a failed PointResult (with failed.json)."""
    name = name or f"{arm}-{programs}"
    pdir = root / name
    if mkdir:
        pdir.mkdir()
    t = time.time()
    label = f"{name} on {opts.engine}" + (f" (simulated, {opts.profile})" if opts.simulated else "")
    if progress is not None:
        progress.start(name, pdir)
    try:
        if progress is None:
            with console.status(f"running {label} ..."):
                extra = runner(opts, arm, programs, pdir, console) or {}
        else:
            extra = runner(opts, arm, programs, pdir, console) or {}
    except PointFailed as e:
        console.print(f"[red]✗[/] {escape(label)}: failed: {escape(str(e))}", soft_wrap=True, highlight=False)
        write_json(pdir / "failed.json", {"arm": arm, "programs": programs, "reason": str(e)})
        wall = round(time.time() - t, 3)
        if progress is not None:
            progress.finish(name, False, wall)
        return PointResult(arm, programs, name, "failed", str(e), wall, seed=opts.seed)
    wall = round(time.time() - t, 3)
    console.print(f"[green]✓[/] {escape(label)} in {wall:.1f} s", soft_wrap=True, highlight=False)
    if progress is not None:
        progress.finish(name, True, wall)
    return PointResult(arm, programs, name, "ok", None, wall, extra, seed=opts.seed)


def des_worker(opts: SweepOptions, arm: str, programs: int, pdir: Path) -> PointResult:
    """One DES point in a worker process (no console: the parent reports). Its summary row is computed
    here too, so reading the step records is parallel as well."""
    res = run_one(opts, point_runner("des"), arm, programs, pdir.parent, Console(quiet=True), mkdir=False,
                  name=pdir.name)
    if res.status == "ok" and "summary" not in res.extra:  # run_point_des counts it from memory
        try:
            res.extra["summary"] = summarize_run(pdir, opts.window)
        except (ValueError, OSError):
            pass  # the parent recomputes and reports the problem
    return res
