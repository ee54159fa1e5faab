"""The discrete-event run: N programs kept in flight on one engine model, on virtual time.

A `Simulation` is built from the run's manifest (des_manifest: arm, programs, duration, seed, run id, the
engine knobs) and the profile, the programs' source and, for the thunderagent arms, the policy's settings.
`run()` returns the in-memory `DesResult` whose manifest is the one given plus the run's results.

The loop: the next program call (an event at its own virtual time), an engine-metrics scrape every
`metrics_interval`, a policy tick every scheduler_interval, or engine steps up to whichever comes first. Calls
are processed at their event time, not the loop's. Policy calls go through `DesPolicy` (adapter.py) over the
policy driver, exactly as the proxy drives it: on_arrival -> Proceed/Wait, on_request_end with exact usage,
release at program end, tick, engine observations for a policy that learns from them; Resume/Reject applied.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.records import RunManifest
from harness.sim.des.adapter import DesPolicy
from harness.sim.des.programs import DesError, Program, trajectory_source
from harness.sim.des.result import DesResult, des_manifest, write_run_dir
from harness.sim.engine import Engine, Request, engine_sample, histogram_sample
from harness.sim.timing import Profile, ProfileError, load_profile
from harness.workload import Trajectory, WorkloadParams, load_workload_params
from ThunderAgent.config import Config
from ThunderAgent.policy import PolicySettings, make_policy
from ThunderAgent.policy.base import Policy
from ThunderAgent.policy.driver import Failed
from ThunderAgent.records import StepRecord

ARMS = ("vllm", "thunderagent", "continuum", "bound", "vllm-offload", "thunderagent-offload")
OFFLOAD_SUFFIX = "-offload"  # the arm with vLLM's host KV tier (--kv-offloading-size) on its engine
BACKEND = "sim://engine0"


def prefill_seconds_per_token(prof: Profile) -> float:
    """The profile's prefill cost per token: one full chunk of max_num_batched_tokens prefilled from scratch
    (GEMMs + attention over the chunk), less the step overhead, per token — what a cost-aware tr would
    otherwise learn from the engine's histograms. Longer contexts cost more per token (attention), so this
    is the cheap end: the cost-aware mode errs towards admitting."""
    n = max(1, prof.engine.max_num_batched_tokens)
    return (prof.timing.step_time(n, 0, 0, n * (n + 1) // 2) - prof.timing.step_time(0, 0, 0)) / n


def unlimited_blocks(prof: Profile, programs: int) -> int:
    """KV blocks that hold `programs` contexts of max_model_len each (+ the null block): the "bound" arm's
    cache, where no prefix is ever evicted for lack of room and no request is preempted."""
    bs = prof.engine.block_size
    return max(prof.engine.num_gpu_blocks, programs * -(-prof.engine.max_model_len // bs) + 1)


def policy_settings(config: Config | PolicySettings | None, prof: Profile, *, host_tokens: int | None,
                    learn_prefill_cost: bool) -> PolicySettings:
    """The simulated proxy's policy settings: the given ones (a proxy Config or PolicySettings; default tr)
    with the simulated backend, the profile's prefill cost per token when a cost-aware tr is told it rather
    than learning it, and the host tier's size in tokens (as the operator passes --kv-offload-tokens)."""
    if config is None:
        config = Config(router="tr", backends=(BACKEND,))
    s = config.policy_settings() if isinstance(config, Config) else config
    if BACKEND not in s.backends:
        s = replace(s, backends=(BACKEND,))
    if s.tr_mode == "cost-aware" and not s.cost_prefill_seconds_per_token and not learn_prefill_cost:
        s = replace(s, cost_prefill_seconds_per_token=prefill_seconds_per_token(prof))
    if host_tokens is not None and not s.kv_offload_tokens:
        s = replace(s, kv_offload_tokens=host_tokens)
    return s


class Simulation:
    """One simulated run. `manifest` describes it (des_manifest); `prof` is the profile the engine runs
    (its num_gpu_blocks override applied); `source` yields (instance id, trajectory) for every program started.

    The policy (arms thunderagent*): `policy` when given, else one made from `settings` (a proxy Config or
    PolicySettings; default: tr with the proxy's defaults). With `once`, each slot runs one program and then
    stays empty; the run ends when the last one is done, or at the manifest's duration."""

    def __init__(self, manifest: RunManifest, prof: Profile, source: Iterator[tuple[str, Trajectory]], *,
                 policy: Policy | None = None, settings: Config | PolicySettings | None = None,
                 metrics_interval: float = 5.0, skip_ahead: bool = True, learn_prefill_cost: bool = True,
                 once: bool = False) -> None:
        # cpu_s and wall_s cover building the engine and the policy too
        self._cpu0, self._wall0 = time.process_time(), time.perf_counter()
        self.manifest = manifest
        self.prof = prof
        self.arm = manifest.arm
        self.programs = manifest.programs
        self.duration_s = manifest.duration_s  # as given (an int stays an int in the summary's window)
        self.run_id = manifest.run_id
        self.metrics_interval = metrics_interval
        self.once = once
        self.source = source
        self.offload = self.arm.endswith(OFFLOAD_SUFFIX)
        host_gib = manifest.extra.get("kv_offload_gib") if self.offload else None
        try:
            self.engine = Engine.from_profile(prof, skip_ahead=skip_ahead, kv_offload_gib=host_gib)
        except ProfileError as e:
            raise DesError(str(e)) from None
        self.block_size = prof.engine.block_size
        self.max_len = prof.engine.max_model_len
        self.pin_ttl: float | None = manifest.extra.get("pin_ttl_s") if self.arm == "continuum" else None

        self.now = 0.0  # the virtual time of what is being processed: every policy call reads it
        self.policy: DesPolicy | None = None
        self.tick_interval = math.inf
        if self.arm.removesuffix(OFFLOAD_SUFFIX) == "thunderagent":
            if policy is None:
                host = self.engine.host
                policy = make_policy(policy_settings(
                    settings, prof, host_tokens=host.capacity_blocks * self.block_size if host is not None else None,
                    learn_prefill_cost=learn_prefill_cost))
            self.policy = DesPolicy(policy, BACKEND, self._clock, self._submit, self._rejected)
            self.policy.start(prof.engine.kv_tokens)
            self.tick_interval = float((settings or PolicySettings()).scheduler_interval)

        self.events: list[tuple[float, int, int]] = []  # (time, tie-break, slot): the slot's program calls
        self.counter = 0
        self.slots: list[Program | None] = [None] * self.programs
        self.by_pid: dict[str, Program] = {}
        self.steps: list[StepRecord] = []
        self.metrics: list[dict[str, float]] = []
        self.uid_counter = 0
        # first calls in a row that could not be sent (longer than max_model_len): a program that fails there
        # ends at once and its slot starts the next one at the same virtual time, so a pool where nothing fits
        # would spin
        self.unfit_in_a_row = 0
        self.unfit_limit = max(100, 10 * self.programs)
        self.engine_calls = 0

    def _clock(self) -> float:
        return self.now

    # --- programs ----------------------------------------------------------------------------------------
    def _push(self, t: float, slot: int) -> None:
        self.counter += 1
        heapq.heappush(self.events, (t, self.counter, slot))

    def _start_program(self, slot: int) -> None:
        iid, traj = next(self.source)
        self.uid_counter += 1
        p = Program.start_new(slot, iid, traj, self.uid_counter, self.block_size)
        self.slots[slot] = p
        self.by_pid[p.program_id] = p
        self._push(self.now + traj.prep_time_s, slot)

    def _end_program(self, p: Program) -> None:
        p.done = True
        self.by_pid.pop(p.program_id, None)
        self.engine.unpin_program(p.program_id)
        if self.policy is not None:
            self.policy.release(p.program_id)
        if not self.once:
            self._start_program(p.slot)

    def _record(self, p: Program, req: Request | None, status: str = "ok", error: str | None = None) -> None:
        turn = p.traj.turns[p.k]
        self.steps.append(StepRecord(
            program_id=p.program_id,
            step=p.k + 1,
            arrival=p.arrival,
            start=p.start,
            end=self.now,
            status=status,
            first_token=req.first_token_time if req is not None else None,
            prompt_tokens=p.traj.prompt_tokens(p.k),
            completion_tokens=turn.output_tokens if status == "ok" else 0,
            cached_tokens=max(req.num_cached_tokens, 0) if req is not None else None,
            pause_s=p.start - p.arrival,
            error=error,
            run_id=self.run_id,
            arm=self.arm,
            instance_id=p.traj.instance_id,
            backend=BACKEND,
        ))

    # --- calls -------------------------------------------------------------------------------------------
    def _call(self, p: Program) -> None:
        """The program sends call p.k now."""
        turn = p.traj.turns[p.k]
        p.append_turn()
        p.arrival = self.now
        prompt = p.traj.prompt_tokens(p.k)
        if prompt + turn.output_tokens > self.max_len or turn.output_tokens < 1:
            self.unfit_in_a_row = self.unfit_in_a_row + 1 if p.k == 0 else 0
            if self.unfit_in_a_row > self.unfit_limit:
                raise DesError(f"{self.unfit_in_a_row} programs in a row could not send their first call: it needs "
                               f"{prompt + turn.output_tokens} tokens (e.g. {p.traj.instance_id}) and max_model_len "
                               f"is {self.max_len}; shorten the trajectories or use a profile with a longer context")
            p.start = self.now
            self._record(p, None, "error", "400: context length exceeds max_model_len")
            self._end_program(p)
            return
        self.unfit_in_a_row = 0
        if self.policy is None or self.policy.arrive(p.program_id, prompt, p):
            self._submit(p)

    def _submit(self, p: Program) -> None:
        """The call goes to the engine now (at once, or when the policy resumes its program)."""
        turn = p.traj.turns[p.k]
        p.start = self.now
        last = p.k == len(p.traj.turns) - 1
        req = Request(
            request_id=f"{p.program_id}/{p.k}",
            seq=p.seq,
            num_prompt_tokens=p.traj.prompt_tokens(p.k),
            max_tokens=turn.output_tokens,
            arrival_time=self.now,
            program_id=p.program_id,
            pin_ttl=None if (self.pin_ttl is None or last) else self.pin_ttl,
        )
        p.request = req
        self.engine.add_request(req)

    def _rejected(self, p: Program, failure: Failed) -> None:
        """The policy failed the held call: an error step, and the program ends."""
        self._record(p, None, "error", f"{failure.status}: {failure.message}")
        self._end_program(p)

    def _finish(self, req: Request) -> None:
        pid = req.program_id
        p = self.by_pid.get(pid) if pid is not None else None
        if p is None or p.request is not req:
            return
        self._record(p, req)
        p.request = None
        if self.policy is not None:
            self.policy.finish(p.program_id, req.num_prompt_tokens + req.num_output_tokens)
        turn = p.traj.turns[p.k]
        if p.k + 1 < len(p.traj.turns):
            p.k += 1
            self._push(self.now + turn.tool_time_s, p.slot)
        else:
            self._end_program(p)

    # --- engine metrics ------------------------------------------------------------------------------------
    def _scrape(self) -> None:
        engine = self.engine
        row: dict[str, float] = {"t": self.now}
        row.update(engine_sample(engine.stats, num_running=engine.num_running, num_waiting=engine.num_waiting,
                                 kv_cache_usage=engine.kv_usage(), host=engine.host))
        self.metrics.append(row)
        if self.policy is not None and self.policy.learns_from_engine:
            # a cost-aware tr learns from the engine as it would from /metrics; other policies see no extra calls
            seen = dict(row)
            seen["vllm:request_prefill_time_seconds_sum"] = engine.stats.prefill_time.total
            seen["vllm:request_prefill_time_seconds_count"] = engine.stats.prefill_time.n
            seen["vllm:inter_token_latency_seconds_sum"] = engine.stats.inter_token_latency.total
            seen["vllm:inter_token_latency_seconds_count"] = engine.stats.inter_token_latency.n
            seen.update(histogram_sample("vllm:iteration_tokens_total", engine.stats.iteration_tokens))
            self.policy.observe(seen)

    # --- the loop ----------------------------------------------------------------------------------------
    def run(self) -> DesResult:
        engine, events, slots, policy = self.engine, self.events, self.slots, self.policy
        duration_s, once = self.duration_s, self.once
        for s in range(self.programs):
            self._start_program(s)

        t = 0.0
        next_scrape = 0.0
        next_tick = self.tick_interval
        while True:
            while events and events[0][0] <= t:
                et, _c, slot = heapq.heappop(events)
                p = slots[slot]
                if p is not None and not p.done:
                    self.now = et
                    self._call(p)
            self.now = t
            if t >= next_scrape:
                self._scrape()
                next_scrape += self.metrics_interval
            if policy is not None and t >= next_tick:
                policy.tick()
                next_tick += self.tick_interval
            if t >= duration_s or (once and not self.by_pid and not engine.has_work()):
                break
            next_ev = min(events[0][0] if events else math.inf, next_scrape, next_tick, duration_s)
            if engine.has_work():
                res = engine.step(t, next_ev - t)
                self.engine_calls += 1
                if res.steps:
                    t += res.duration
                    self.now = t
                    for req in res.finished:
                        self._finish(req)
                    continue
            engine.expire_pins(t)
            pe = engine.next_wakeup()
            t = max(t, min(next_ev, pe if pe is not None else math.inf))
        return self._result(time.process_time() - self._cpu0, time.perf_counter() - self._wall0)

    def _result(self, cpu_s: float, wall_s: float) -> DesResult:
        pstats: dict[str, Any] = {}
        if self.policy is not None:
            pol = self.policy.policy
            st = pol.stats()
            pstats = {k: getattr(st, k) for k in ("pauses", "resumes", "forced_resumes", "marks", "rejects",
                                                  "queue_length", "swaps", "unmarks")}
            if pol.mode is not None:  # which tr rule ran, and (cost-aware) what it believed at the end
                pstats["tr_mode"] = pol.mode
            report = pol.report(BACKEND)
            if report:
                pstats["cost_aware"] = {k: round(v, 9) for k, v in report.items()}
        if self.arm == "continuum":
            pstats = {"pins": self.engine.stats.pins, "pin_expiries": self.engine.stats.pin_expiries,
                      "pin_ttl_s": self.pin_ttl}
        m = self.manifest
        result = DesResult(self.arm, self.prof.name, self.programs, self.duration_s, m.seed, self.steps,
                           self.metrics, self.engine.num_steps, self.engine_calls, wall_s, cpu_s, m, pstats)
        m.extra.update(summary=result.summary(), des_cpu_s=round(cpu_s, 3), des_wall_s=round(wall_s, 3),
                       **result.host_summary())
        return result


def run_des(
    profile: Profile | str,
    *,
    arm: str = "vllm",
    programs: int = 24,
    duration_s: float = 80 * 60.0,
    seed: int = 0,
    workload: WorkloadParams | str | None = "openhands",
    trajectories: Sequence[Trajectory] | None = None,
    policy: Policy | None = None,
    policy_config: Config | PolicySettings | None = None,
    pin_ttl_s: float = 2.0,
    metrics_interval: float = 5.0,
    num_gpu_blocks: int | None = None,
    skip_ahead: bool = True,
    out_dir: str | Path | None = None,
    run_id: str | None = None,
    learn_prefill_cost: bool = True,
    resample: bool = False,
    once: bool = False,
    kv_offload_gib: float | None = None,
    record: dict[str, Any] | None = None,
) -> DesResult:
    """Simulate `programs` concurrent agent programs for `duration_s` virtual seconds on one engine.

    A cost-aware tr (the default tr mode) learns the prefill cost per token from the simulated engine's
    histograms, as the proxy does from real vLLM's /metrics; with `learn_prefill_cost=False` it is told the
    profile's figure instead (prefill_seconds_per_token), unless its config names one. `resample`: draw each
    program from `trajectories` at random (seeded) instead of replaying them in order.

    With `once`, each slot runs one program and then stays empty (a burst of `programs` programs, as a
    batch job or an RL rollout sends them); the run ends when the last one is done, or at duration_s.

    `record`: what the caller's manifest says of the run beyond these arguments: RunManifest fields (recipe,
    dataset, workload: the name it was given by) and `extra` entries (merged under the run's own). The result
    carries the manifest; with `out_dir` the run directory is written once, at the end."""
    if arm not in ARMS:
        raise DesError(f"unknown arm {arm!r}: choose one of {', '.join(ARMS)}")
    offload = arm.endswith(OFFLOAD_SUFFIX)
    if offload and kv_offload_gib is None:
        raise DesError(f"arm {arm!r} needs a host-tier size (kv_offload_gib, GiB over all GPUs)")
    if kv_offload_gib is not None and kv_offload_gib < 0:
        raise DesError(f"kv_offload_gib must be >= 0, got {kv_offload_gib}")
    if programs < 1:
        raise DesError("programs must be >= 1")
    if duration_s <= 0:
        raise DesError("duration_s must be > 0")
    prof = load_profile(profile) if isinstance(profile, str) else profile
    if arm == "bound":
        num_gpu_blocks = unlimited_blocks(prof, programs)
    prof = prof.with_num_gpu_blocks(num_gpu_blocks)
    wl = load_workload_params(workload) if isinstance(workload, str) and trajectories is None else workload
    if trajectories is None and not isinstance(wl, WorkloadParams):
        raise DesError("give a workload (name or WorkloadParams) or a trajectory list")
    m = des_manifest(
        prof, arm=arm, programs=programs, duration_s=duration_s, seed=seed,
        workload=wl.name if isinstance(wl, WorkloadParams) else (wl if isinstance(wl, str) else "traces"),
        run_id=run_id or f"des-{arm}-{programs}", num_gpu_blocks=num_gpu_blocks,
        pin_ttl_s=pin_ttl_s if arm == "continuum" else None, kv_offload_gib=kv_offload_gib if offload else None)
    if record:
        fields = {k: v for k, v in record.items() if k != "extra"}
        if clash := sorted(set(fields) & set(_RUN_FIELDS)):
            raise DesError(f"the record names fields the run sets itself: {', '.join(clash)}")
        m = replace(m, **fields, extra={**record.get("extra", {}), **m.extra})
    source = trajectory_source(wl if isinstance(wl, WorkloadParams) else None, trajectories, seed, programs, resample)
    sim = Simulation(m, prof, source, policy=policy, settings=policy_config, metrics_interval=metrics_interval,
                     skip_ahead=skip_ahead, learn_prefill_cost=learn_prefill_cost, once=once)
    result = sim.run()
    if out_dir is not None:
        write_run_dir(result, out_dir)
    return result


# the manifest fields a DES run sets itself from run_des's arguments (a caller's record adds the others)
_RUN_FIELDS = ("run_id", "arm", "programs", "agent", "engine", "simulated", "profile", "start_time", "time_scale",
               "seed", "duration_s", "end_time")
