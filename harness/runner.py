"""Keep exactly N agent programs in flight, one program_id per SWE-bench instance attempt.

Closed loop: when a program finishes, the next instance starts. Two modes:
  * count mode (duration_s None): every instance of the list once (skipping those already finished);
  * duration mode: cycle the instance list (round 0, 1, ...) until the deadline, then cancel what runs.
Works with any harness.agents.base.Agent (synthetic, openhands, miniswe).

Output (harness/records.py): manifest.json, steps.jsonl (one StepRecord per LLM call, stamped with
run_id/arm), instances.jsonl (start/end events per attempt), engine_metrics.jsonl (a scrape of each
engine's /metrics every `scrape_interval_s`).

Resume: rerunning into the same run directory skips instances with an "ok" end event (errored, timed-out
and interrupted ones run again). Every start gets a fresh attempt number and therefore a fresh
program_id (`swe-` + sha1(run_id:instance:attempt)), so a restarted instance starts cleanly from step 1
under a new program and can never duplicate an existing (program_id, step) record. The partial steps of
an interrupted attempt stay in steps.jsonl: the engine really served them, they are in its
request_success_total, so throughput counts them (the instance simply produced no result). A duplicate
(program_id, step) from a misbehaving agent is dropped and counted, never written.

Shutdown: SIGINT/SIGTERM (or the deadline) cancels every program; agents release their programs in
`finally`, the runner releases any program still live as a backstop, writes "cancelled" end events, takes
a last metrics scrape and rewrites the manifest with end_time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import httpx

from harness.agents.base import Agent, Endpoint, Instance, InstanceResult, release_program
from harness.datasets import program_id_for
from harness.errors import UserError
from harness.records import (EngineSample, InstanceEvent, JsonlWriter, RunManifest, RunPaths, StepRecord,
                             git_revision, package_versions, read_instance_events, read_jsonl)
from ThunderAgent.backends import parse_vllm_metrics


class RunnerError(UserError, RuntimeError):
    """A run cannot start (bad arguments, a run dir from a different experiment)."""


@dataclass
class RunConfig:
    run_dir: Path
    arm: str
    programs: int
    endpoint: Endpoint
    instances: Sequence[Instance]
    # Times are on the record clock (wall seconds). With time_scale s (an accelerated simulator), a run of
    # duration_s covers duration_s * s simulated seconds; the agent divides its tool/prep waits by s.
    duration_s: float | None = None  # None: each instance once
    metrics_urls: Sequence[str] = ()  # engine roots (…:8000) whose /metrics to scrape
    scrape_interval_s: float = 5.0
    instance_timeout_s: float | None = None
    run_id: str | None = None  # default: reuse the run dir's, else a fresh one
    agent_name: str = "synthetic"
    engine: str = "vllm"
    simulated: bool = False
    profile: str | None = None
    time_scale: float = 1.0
    recipe: str | None = None
    workload: str | None = None
    dataset: str | None = None
    seed: int | None = None
    run_scoped_ids: bool = True  # program ids include the run id (False: sha1(instance:attempt) as upstream)
    progress: bool = True
    handle_signals: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    started: int = 0
    ok: int = 0
    errors: int = 0
    cancelled: int = 0
    skipped: int = 0  # already finished in an earlier run of this dir
    steps: int = 0
    duplicate_steps: int = 0
    scrapes: int = 0
    scrape_errors: int = 0
    interrupted: bool = False
    elapsed_s: float = 0.0


class _StepSink:
    """Stamps run_id/arm on each record and appends it; drops duplicates. Thread-safe (real agents may
    report from worker threads)."""

    def __init__(self, writer: JsonlWriter, run_id: str, arm: str, seen: set[tuple[str, int]],
                 on_step: Callable[[StepRecord], None]) -> None:
        self.writer, self.run_id, self.arm, self.seen = writer, run_id, arm, seen
        self.on_step = on_step
        self.duplicates = 0
        self.lock = threading.Lock()

    def __call__(self, rec: StepRecord) -> None:
        rec.run_id, rec.arm = self.run_id, self.arm
        with self.lock:
            key = (rec.program_id, rec.step)
            if key in self.seen:
                self.duplicates += 1
                return
            self.seen.add(key)
            self.writer.write(rec)
        self.on_step(rec)


class Runner:
    def __init__(self, config: RunConfig, agent: Agent, *, clock: Callable[[], float] = time.time) -> None:
        if config.programs < 1:
            raise RunnerError("programs must be >= 1")
        if not config.instances:
            raise RunnerError("no instances to run")
        if config.duration_s is not None and config.duration_s <= 0:
            raise RunnerError("duration must be > 0")
        if config.simulated and not config.profile:
            raise RunnerError("a simulated run must name its profile")
        ids = [str(i.get("instance_id", "")) for i in config.instances]
        if not all(ids):
            raise RunnerError("every instance needs an instance_id")
        if len(set(ids)) != len(ids):
            raise RunnerError("duplicate instance ids in the instance list")
        self.cfg, self.agent, self.clock = config, agent, clock
        self.paths = RunPaths.create(config.run_dir)
        self.live: dict[str, str] = {}  # program_id -> instance_id
        self._stop = asyncio.Event()
        self._recent: collections.deque[float] = collections.deque()

    # ---------------------------------------------------------------- state from an earlier run
    def _prepare(self) -> tuple[RunManifest, dict[str, int], dict[str, int], set[tuple[str, int]], bool]:
        cfg = self.cfg
        old = RunManifest.read(self.paths.manifest) if self.paths.manifest.exists() else None
        if old is not None:
            if (old.arm, old.programs, old.agent) != (cfg.arm, cfg.programs, cfg.agent_name):
                raise RunnerError(f"{self.paths.root} holds a run of arm={old.arm} programs={old.programs} "
                                  f"agent={old.agent}; use another output directory for this experiment")
            if cfg.run_id and cfg.run_id != old.run_id:
                raise RunnerError(f"{self.paths.root} belongs to run {old.run_id}, not {cfg.run_id}")
        events = read_instance_events(self.paths.instances)
        done: dict[str, int] = collections.Counter(
            e.instance_id for e in events if e.event == "end" and e.status == "ok")
        attempts: dict[str, int] = {}
        for e in events:
            attempts[e.instance_id] = max(attempts.get(e.instance_id, 0), e.attempt + 1)
        seen = {(d["program_id"], int(d["step"])) for d in read_jsonl(self.paths.steps)} \
            if self.paths.steps.exists() else set()
        revision, versions = git_revision(), package_versions()  # slow-ish: before the clock starts
        now = self.clock()
        if old is not None:
            manifest = old
            manifest.end_time = None
            manifest.extra.setdefault("resumed_at", []).append(now)
        else:
            manifest = RunManifest(
                run_id=cfg.run_id or uuid.uuid4().hex[:12], arm=cfg.arm, programs=cfg.programs,
                agent=cfg.agent_name, engine=cfg.engine, simulated=cfg.simulated, profile=cfg.profile,
                start_time=now, time_scale=cfg.time_scale, recipe=cfg.recipe, workload=cfg.workload,
                dataset=cfg.dataset, instances=len(cfg.instances), seed=cfg.seed,
                endpoint=cfg.endpoint.base_url, metrics_urls=list(cfg.metrics_urls), duration_s=cfg.duration_s,
                git_revision=revision, versions=versions,
                extra={"thunderagent": cfg.endpoint.thunderagent, **cfg.extra})
        manifest.write(self.paths.manifest)
        return manifest, done, attempts, seen, old is not None

    def _work(self, done: dict[str, int]) -> Iterator[tuple[Instance, int]]:
        rounds = itertools.count() if self.cfg.duration_s is not None else range(1)
        for rnd in rounds:
            any_left = False
            for inst in self.cfg.instances:
                if done.get(str(inst["instance_id"]), 0) > rnd:
                    continue
                any_left = True
                yield inst, rnd
            if not any_left and self.cfg.duration_s is None:
                return

    # ---------------------------------------------------------------- main loop
    async def run(self) -> RunResult:
        cfg = self.cfg
        scrape_client = httpx.AsyncClient(timeout=5.0) if cfg.metrics_urls else None
        first = RunResult("", self.paths.root)
        if scrape_client is not None:  # a sample just before the run's clock starts covers early windows
            await self._scrape_once(first, scrape_client)
        try:
            manifest, done, attempts, seen, resumed = self._prepare()
        except BaseException:
            if scrape_client is not None:
                await scrape_client.aclose()
            raise
        result = RunResult(manifest.run_id, self.paths.root, scrapes=first.scrapes, scrape_errors=first.scrape_errors)
        result.skipped = sum(1 for i in cfg.instances if done.get(str(i["instance_id"]), 0) > 0)
        t0 = self.clock()
        deadline = (manifest.start_time + cfg.duration_s) if cfg.duration_s is not None else None
        steps_w = JsonlWriter(self.paths.steps)
        inst_w = JsonlWriter(self.paths.instances)
        progress = _Progress(cfg, len(cfg.instances) - result.skipped) if cfg.progress else None

        def on_step(rec: StepRecord) -> None:
            if rec.status == "ok":
                result.steps += 1
                self._recent.append(rec.end)
            if progress:
                progress.update(result, len(self.live), self._rate())

        sink = _StepSink(steps_w, manifest.run_id, cfg.arm, seen, on_step)
        tasks: dict[asyncio.Task[InstanceResult], tuple[str, str, int, int]] = {}
        work = self._work(done)
        scraper = asyncio.create_task(self._scrape_loop(result, scrape_client)) if scrape_client else None
        restore = self._install_signals() if cfg.handle_signals else None
        try:
            exhausted = False
            while not self._stop.is_set():
                while not exhausted and len(tasks) < cfg.programs and not self._past(deadline):
                    nxt = next(work, None)
                    if nxt is None:
                        exhausted = True
                        break
                    inst, rnd = nxt
                    iid = str(inst["instance_id"])
                    attempt = attempts.get(iid, 0)
                    attempts[iid] = attempt + 1
                    pid = program_id_for(iid, attempt, manifest.run_id if cfg.run_scoped_ids else None)
                    inst_w.write_line(InstanceEvent("start", iid, attempt, pid, self.clock(), rnd).to_json())
                    self.live[pid] = iid
                    run_inst = {**inst, "thunderbench_round": rnd, "thunderbench_attempt": attempt}
                    coro = self.agent.run_instance(run_inst, pid, cfg.endpoint, sink)
                    if cfg.instance_timeout_s:
                        coro = asyncio.wait_for(coro, cfg.instance_timeout_s)
                    tasks[asyncio.create_task(coro)] = (pid, iid, attempt, rnd)
                    result.started += 1
                if not tasks:
                    break
                timeout = None if deadline is None else max(0.0, deadline - self.clock())
                stop_wait = asyncio.create_task(self._stop.wait())
                finished, _ = await asyncio.wait([*tasks, stop_wait], timeout=timeout,
                                                 return_when=asyncio.FIRST_COMPLETED)
                stop_wait.cancel()
                for t in finished:
                    if t is stop_wait:
                        continue
                    pid, iid, attempt, rnd = tasks.pop(t)
                    self._finish(t, pid, iid, attempt, rnd, result, inst_w)
                if self._past(deadline):
                    break
                if progress:
                    progress.update(result, len(self.live), self._rate())
        finally:
            result.interrupted = self._stop.is_set()
            await self._cancel_all(tasks, result, inst_w)
            if scraper is not None:
                scraper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await scraper
                await self._scrape_once(result, scrape_client)  # a last sample: the window's end is covered
                await scrape_client.aclose()
            if restore:
                restore()
            result.duplicate_steps = sink.duplicates
            result.elapsed_s = self.clock() - t0
            manifest.end_time = self.clock()
            manifest.extra["last_result"] = {k: v for k, v in vars(result).items() if k != "run_dir"}
            manifest.write(self.paths.manifest)
            steps_w.close()
            inst_w.close()
            if progress:
                progress.close(result)
            close = getattr(self.agent, "aclose", None)
            if close is not None:
                await close()
        return result

    def stop(self) -> None:
        """Ask the run to stop (what SIGINT/SIGTERM do)."""
        self._stop.set()

    def _past(self, deadline: float | None) -> bool:
        return deadline is not None and self.clock() >= deadline

    def _rate(self) -> float:
        """Steps per (simulated) minute over the last 60 s of the record clock."""
        now = self.clock()
        while self._recent and self._recent[0] < now - 60.0:
            self._recent.popleft()
        return len(self._recent) * self.cfg.time_scale

    def _finish(self, t: asyncio.Task[InstanceResult], pid: str, iid: str, attempt: int, rnd: int,
                result: RunResult, inst_w: JsonlWriter) -> None:
        self.live.pop(pid, None)
        status, steps, error = "error", None, None
        if t.cancelled():
            status = "cancelled"
        elif (exc := t.exception()) is not None:
            status = "timeout" if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) else "error"
            error = f"{type(exc).__name__}: {exc}"
        else:
            r = t.result()
            status, steps, error = r.status, r.steps, r.error
        if status == "ok":
            result.ok += 1
        elif status == "cancelled":
            result.cancelled += 1
        else:
            result.errors += 1
        inst_w.write_line(InstanceEvent("end", iid, attempt, pid, self.clock(), rnd, status, steps, error).to_json())

    async def _cancel_all(self, tasks: dict[asyncio.Task[InstanceResult], tuple[str, str, int, int]],
                          result: RunResult, inst_w: JsonlWriter) -> None:
        leftover = list(self.live)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(list(tasks))
        for t, (pid, iid, attempt, rnd) in list(tasks.items()):
            self._finish(t, pid, iid, attempt, rnd, result, inst_w)
        tasks.clear()
        # backstop: agents release in finally, but a crashed agent may not have; releasing twice is harmless
        if leftover and self.cfg.endpoint.thunderagent:
            async with httpx.AsyncClient(timeout=5.0) as client:
                await asyncio.gather(*(release_program(self.cfg.endpoint, p, client) for p in leftover))
        self.live.clear()

    def _install_signals(self) -> Callable[[], None] | None:
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._stop.set)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / platform
                pass

        def restore() -> None:
            for s in installed:
                loop.remove_signal_handler(s)
        return restore

    # ---------------------------------------------------------------- engine metrics
    async def _scrape_loop(self, result: RunResult, client: httpx.AsyncClient) -> None:
        while True:
            await asyncio.sleep(self.cfg.scrape_interval_s)
            await self._scrape_once(result, client)

    async def _scrape_once(self, result: RunResult, client: httpx.AsyncClient) -> None:
        parse = parse_vllm_metrics
        for url in self.cfg.metrics_urls:
            try:
                r = await client.get(url.rstrip("/") + "/metrics")
                r.raise_for_status()
                sample = EngineSample.from_metrics(self.clock(), url, parse(r.text))
            except Exception:  # an engine restarting or not up yet: keep going, count it
                result.scrape_errors += 1
                continue
            with JsonlWriter(self.paths.engine_metrics) as w:
                w.write_line(sample.to_json())
            result.scrapes += 1


class _Progress:
    """A rich progress bar: instances done / total (count mode) or elapsed / duration, plus live stats."""

    def __init__(self, cfg: RunConfig, todo: int) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.cfg = cfg
        self.p = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[stats]}"),
                          TimeElapsedColumn(), transient=False)
        total = todo if cfg.duration_s is None else cfg.duration_s
        self.task = self.p.add_task(f"{cfg.arm} x{cfg.programs}", total=total, stats="")
        self.start = time.time()
        self.p.start()

    def update(self, r: RunResult, live: int, rate: float) -> None:
        done = r.ok + r.errors if self.cfg.duration_s is None else (time.time() - self.start)
        self.p.update(self.task, completed=done,
                      stats=f"in flight {live}  ok {r.ok}  err {r.errors}  steps {r.steps}  {rate:.0f} steps/min")

    def close(self, r: RunResult) -> None:
        self.update(r, 0, 0.0)
        self.p.stop()


async def run(config: RunConfig, agent: Agent) -> RunResult:
    """Run to completion (or deadline / signal)."""
    return await Runner(config, agent).run()
