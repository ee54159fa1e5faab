"""Discrete-event mode: the engine model + a closed-loop agent workload + an optional policy, on virtual time.

N programs are kept in flight. A program is one sampled (or replayed) SWE-bench trajectory: environment
preparation, then call 0, tool time, call 1, ... ; when it ends, the next instance starts in its slot. Every
call is a `Request` whose token sequence is the program's own append-only `SegmentSeq` (shared system
prompt, its instance text, then output/observation per turn), so turn k's prompt is exactly turn k-1's
prompt + output + observation and the engine's prefix cache sees real reuse.

Arms:
  * "vllm"         — calls go straight to the engine;
  * "thunderagent" — every call passes through the ThunderAgent policy core (ThunderAgent.policy.make_policy,
                     router "tr" by default) exactly as the proxy drives it: on_arrival -> Proceed/Wait,
                     on_request_end with exact usage, release at program end, tick every scheduler_interval,
                     Resume/Reject actions applied; capacity = num_gpu_blocks x block_size, as discovered
                     from vllm:cache_config_info;
  * "bound"        — the "vllm" arm on the same profile with the KV limit lifted (blocks for every program's
                     longest possible context, so nothing is ever evicted or preempted): the throughput a
                     perfect scheduler could at most reach on this compute, against which a scheduler's
                     headroom is reported;
  * "continuum"    — the engine pins a program's blocks for `pin_ttl_s` after every response that ends in a
                     tool call (all but the last turn), Continuum-style;
  * "vllm-offload", "thunderagent-offload" — "vllm" / "thunderagent" with vLLM's native KV offloading on the
                     engine: a host-memory tier of `kv_offload_gib` GiB (harness/sim/offload.py), so a prefix
                     evicted from the GPU is loaded over PCIe instead of recomputed when the tier still holds it.

Outputs are the harness's own formats: StepRecords (one per LLM call, virtual seconds) and the engine-metrics
series (one row per `metrics_interval`), in memory and optionally written to a run directory with a manifest
that says simulated=true and names the profile. Deterministic for a seed.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.records import EngineSample, JsonlWriter, RunManifest, RunPaths, git_revision, package_versions
from harness.sim.engine import Engine, Request, SegmentSeq
from harness.sim.engine.stats import engine_sample, histogram_sample
from harness.sim.timing import Profile, ProfileError, load_profile
from harness.workload import Trajectory, WorkloadParams, load_workload_params, sample_trajectory, trajectory_rng
from ThunderAgent.policy.base import Policy, Proceed, Reject, Resume
from ThunderAgent.records import StepRecord

ARMS = ("vllm", "thunderagent", "continuum", "bound", "vllm-offload", "thunderagent-offload")
OFFLOAD_SUFFIX = "-offload"  # the arm with vLLM's host KV tier (--kv-offloading-size) on its engine
BACKEND = "sim://engine0"

# segment kinds of a program's token stream (the key's low 2 bits)
_SYS, _USER, _OUT, _OBS = 0, 1, 2, 3


class DesError(ValueError):
    """Bad DES arguments (one readable line)."""


@dataclass(slots=True)
class _Program:
    slot: int
    program_id: str
    traj: Trajectory
    uid: int
    seq: SegmentSeq
    k: int = 0  # index of the next (or current) call
    arrival: float = 0.0
    start: float = 0.0
    request: Request | None = None
    held: bool = False
    done: bool = False


@dataclass
class DesResult:
    """Everything one simulated run produced (virtual seconds throughout)."""

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
    policy_stats: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None

    @property
    def label(self) -> str:
        return f"simulated ({self.profile})"

    def steps_per_min(self, window: tuple[float, float] | None = None) -> float:
        """Served LLM calls per simulated minute whose end lies in the window (default: 10m-70m when the run
        is long enough, else the whole run)."""
        lo, hi = window if window is not None else _default_window(self.duration_s)
        n = sum(1 for s in self.steps if s.status == "ok" and lo <= s.end < hi)
        return n / ((hi - lo) / 60.0)

    def summary(self) -> dict[str, Any]:
        last = self.metrics[-1] if self.metrics else {}
        q = last.get("vllm:prefix_cache_queries_total", 0.0)
        h = last.get("vllm:prefix_cache_hits_total", 0.0)
        lo, hi = _default_window(self.duration_s)
        return {
            "label": self.label,
            "arm": self.arm,
            "programs": self.programs,
            "window_s": [lo, hi],
            "steps_per_min": round(self.steps_per_min(), 2),
            "steps_total": sum(1 for s in self.steps if s.status == "ok"),
            "prefix_hit_rate": round(h / q, 4) if q else None,
            **self._host_summary(last, q),
            "preemptions": int(last.get("vllm:num_preemptions_total", 0)),
            "engine_steps": self.engine_steps,
            "engine_calls": self.engine_calls,
            "cpu_s": round(self.cpu_s, 3),
            "holds": self.holds(),
            **({"policy": self.policy_stats} if self.policy_stats else {}),
        }

    @staticmethod
    def _host_summary(last: dict[str, float], q: float) -> dict[str, Any]:
        """With a host KV tier: the share of queried prompt tokens it served, and what crossed PCIe."""
        if "vllm:external_prefix_cache_hits_total" not in last:
            return {}
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


def _default_window(duration: float) -> tuple[float, float]:
    if duration >= 80 * 60:
        return 600.0, 4200.0
    return 0.0, duration


def _trajectory_source(
    workload: WorkloadParams | None, trajectories: Sequence[Trajectory] | None, seed: int, programs: int,
    resample: bool = False,
) -> Iterator[tuple[str, Trajectory]]:
    if trajectories is not None:
        if not trajectories:
            raise DesError("the trajectory list is empty")
        if resample:  # recorded traces as a pool: each new program draws one, uniformly, from the seed's stream
            rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, len(trajectories)]))
            i = 0
            while True:
                t = trajectories[int(rng.integers(len(trajectories)))]
                yield f"{t.instance_id}#{i}", t
                i += 1
        r = 0
        while True:
            for t in trajectories:
                yield (t.instance_id if r == 0 else f"{t.instance_id}#{r}"), t
            r += 1
    assert workload is not None
    i = 0
    while True:
        iid = f"sim-{i:05d}"
        yield iid, sample_trajectory(workload, iid, trajectory_rng(seed, iid), programs=programs)
        i += 1


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
    policy_config: Any = None,
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
) -> DesResult:
    """Simulate `programs` concurrent agent programs for `duration_s` virtual seconds on one engine.

    A cost-aware tr (the default tr mode) learns the prefill cost per token from the simulated engine's
    histograms, as the proxy does from real vLLM's /metrics; with `learn_prefill_cost=False` it is told the
    profile's figure instead (prefill_seconds_per_token), unless its config names one. `resample`: draw each
    program from `trajectories` at random (seeded) instead of replaying them in order.

    With `once`, each slot runs one program and then stays empty (a burst of `programs` programs, as a
    batch job or an RL rollout sends them); the run ends when the last one is done, or at duration_s."""
    if arm not in ARMS:
        raise DesError(f"unknown arm {arm!r}: choose one of {', '.join(ARMS)}")
    offload = arm.endswith(OFFLOAD_SUFFIX)
    if offload and kv_offload_gib is None:
        raise DesError(f"arm {arm!r} needs a host-tier size (kv_offload_gib, GiB over all GPUs)")
    if kv_offload_gib is not None and kv_offload_gib < 0:
        raise DesError(f"kv_offload_gib must be >= 0, got {kv_offload_gib}")
    base_arm = arm.removesuffix(OFFLOAD_SUFFIX)
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

    cpu0, wall0 = time.process_time(), time.perf_counter()
    try:
        engine = Engine.from_profile(prof, skip_ahead=skip_ahead, kv_offload_gib=kv_offload_gib if offload else None)
    except ProfileError as e:
        raise DesError(str(e)) from None
    bs = prof.engine.block_size
    max_len = prof.engine.max_model_len

    pol: Policy | None = None
    if base_arm == "thunderagent":
        if policy is not None:
            pol = policy
        else:
            from ThunderAgent.config import Config
            from ThunderAgent.policy import make_policy

            cfg = policy_config if policy_config is not None else Config(router="tr", backends=(BACKEND,))
            if BACKEND not in cfg.backends:
                import dataclasses

                cfg = dataclasses.replace(cfg, backends=(BACKEND,))
            if (getattr(cfg, "tr_mode", "fixed") == "cost-aware" and not cfg.cost_prefill_seconds_per_token
                    and not learn_prefill_cost):
                import dataclasses  # the simulator knows the prefill cost per token: its profile's

                cfg = dataclasses.replace(cfg, cost_prefill_seconds_per_token=prefill_seconds_per_token(prof))
            if engine.host is not None and not cfg.kv_offload_tokens:
                import dataclasses  # the host tier's size in tokens, as the operator passes --kv-offload-tokens

                cfg = dataclasses.replace(cfg, kv_offload_tokens=engine.host.capacity_blocks * bs)
            pol = make_policy(cfg.policy_settings())
        pol.add_backend(BACKEND)
        actions0 = pol.set_capacity(BACKEND, prof.engine.kv_tokens, 0.0)
        assert not actions0 or all(isinstance(a, (Resume, Reject)) or True for a in actions0)
    tick_interval = float(getattr(policy_config, "scheduler_interval", 5.0) or 5.0) if pol else math.inf
    # only a cost-aware tr learns from metrics; other policies see no extra calls (their runs stay as they were)
    learns = pol is not None and pol.learns_from_engine
    pin_ttl = pin_ttl_s if arm == "continuum" else None

    source = _trajectory_source(wl if isinstance(wl, WorkloadParams) else None, trajectories, seed, programs, resample)
    events: list[tuple[float, int, int]] = []  # (time, tie-break, slot); the slot's program makes its next call
    counter = 0
    slots: list[_Program | None] = [None] * programs
    by_pid: dict[str, _Program] = {}
    steps: list[StepRecord] = []
    metrics: list[dict[str, float]] = []
    uid_counter = 0
    # first calls in a row that could not be sent (longer than max_model_len): a program that fails there ends at
    # once and its slot starts the next one at the same virtual time, so a pool where nothing fits would spin
    unfit_in_a_row = 0
    unfit_limit = max(100, 10 * programs)
    run_name = run_id or f"des-{arm}-{programs}"

    def push(t: float, slot: int) -> None:
        nonlocal counter
        counter += 1
        heapq.heappush(events, (t, counter, slot))

    def start_program(slot: int, now: float) -> None:
        nonlocal uid_counter
        iid, traj = next(source)
        uid_counter += 1
        uid = uid_counter
        seq = SegmentSeq(bs, [(_SYS, traj.system_tokens), ((uid << 20) * 4 + _USER, traj.first_user_tokens)])
        p = _Program(slot, f"{iid}@{uid}", traj, uid, seq)
        slots[slot] = p
        by_pid[p.program_id] = p
        push(now + traj.prep_time_s, slot)

    def end_program(p: _Program, now: float) -> None:
        p.done = True
        by_pid.pop(p.program_id, None)
        engine.unpin_program(p.program_id)
        if pol is not None:
            _ok, acts = pol.release(p.program_id, now)
            apply(acts, now)
        if not once:
            start_program(p.slot, now)

    def record(p: _Program, req: Request | None, now: float, status: str = "ok", error: str | None = None) -> None:
        turn = p.traj.turns[p.k]
        steps.append(StepRecord(
            program_id=p.program_id,
            step=p.k + 1,
            arrival=p.arrival,
            start=p.start,
            end=now,
            status=status,
            first_token=req.first_token_time if req is not None else None,
            prompt_tokens=p.traj.prompt_tokens(p.k),
            completion_tokens=turn.output_tokens if status == "ok" else 0,
            cached_tokens=max(req.num_cached_tokens, 0) if req is not None else None,
            pause_s=p.start - p.arrival,
            error=error,
            run_id=run_name,
            arm=arm,
            instance_id=p.traj.instance_id,
            backend=BACKEND,
        ))

    def submit(p: _Program, now: float) -> None:
        turn = p.traj.turns[p.k]
        prompt = p.traj.prompt_tokens(p.k)
        p.start = now
        p.held = False
        last = p.k == len(p.traj.turns) - 1
        req = Request(
            request_id=f"{p.program_id}/{p.k}",
            seq=p.seq,
            num_prompt_tokens=prompt,
            max_tokens=turn.output_tokens,
            arrival_time=now,
            program_id=p.program_id,
            pin_ttl=None if (pin_ttl is None or last) else pin_ttl,
        )
        p.request = req
        engine.add_request(req)

    def apply(actions: list[Any], now: float) -> None:
        for a in actions:
            if isinstance(a, Resume):
                p = by_pid.get(a.program_id)
                if p is not None and p.held:
                    submit(p, now)
            elif isinstance(a, Reject):
                p = by_pid.get(a.program_id)
                if p is not None and p.held:
                    p.held = False
                    record(p, None, now, "error", f"{a.status}: {a.message}")
                    end_program(p, now)

    def call(p: _Program, now: float) -> None:
        """The program sends call p.k now."""
        nonlocal unfit_in_a_row
        turn = p.traj.turns[p.k]
        if p.k > 0:
            prev = p.traj.turns[p.k - 1]
            p.seq.append((((p.uid << 20) + p.k - 1) << 2) + _OBS, prev.observation_tokens)
        p.seq.append((((p.uid << 20) + p.k) << 2) + _OUT, turn.output_tokens)
        p.arrival = now
        prompt = p.traj.prompt_tokens(p.k)
        if prompt + turn.output_tokens > max_len or turn.output_tokens < 1:
            unfit_in_a_row = unfit_in_a_row + 1 if p.k == 0 else 0
            if unfit_in_a_row > unfit_limit:
                raise DesError(f"{unfit_in_a_row} programs in a row could not send their first call: it needs "
                               f"{prompt + turn.output_tokens} tokens (e.g. {p.traj.instance_id}) and max_model_len is "
                               f"{max_len}; shorten the trajectories or use a profile with a longer context")
            p.start = now
            record(p, None, now, "error", "400: context length exceeds max_model_len")
            end_program(p, now)
            return
        unfit_in_a_row = 0
        if pol is not None:
            adm = pol.on_arrival(p.program_id, prompt, now)
            if not isinstance(adm, Proceed):
                p.held = True
                return
        submit(p, now)

    def finish(req: Request, now: float) -> None:
        pid = req.program_id
        p = by_pid.get(pid) if pid is not None else None
        if p is None or p.request is not req:
            return
        record(p, req, now)
        p.request = None
        if pol is not None:
            apply(pol.on_request_end(p.program_id, now, req.num_prompt_tokens + req.num_output_tokens), now)
        turn = p.traj.turns[p.k]
        if p.k + 1 < len(p.traj.turns):
            p.k += 1
            push(now + turn.tool_time_s, p.slot)
        else:
            end_program(p, now)

    for s in range(programs):
        start_program(s, 0.0)

    t = 0.0
    next_scrape = 0.0
    next_tick = tick_interval
    engine_calls = 0
    while True:
        while events and events[0][0] <= t:
            et, _c, slot = heapq.heappop(events)
            p = slots[slot]
            if p is not None and not p.done:
                call(p, et)
        if t >= next_scrape:
            row: dict[str, float] = {"t": t}
            row.update(engine_sample(engine.stats, num_running=engine.num_running, num_waiting=engine.num_waiting,
                                     kv_cache_usage=engine.kv_usage(), host=engine.host))
            metrics.append(row)
            next_scrape += metrics_interval
            if pol is not None and learns:  # a cost-aware tr learns from the engine as it would from /metrics
                seen = dict(row)
                seen["vllm:request_prefill_time_seconds_sum"] = engine.stats.prefill_time.total
                seen["vllm:request_prefill_time_seconds_count"] = engine.stats.prefill_time.n
                seen["vllm:inter_token_latency_seconds_sum"] = engine.stats.inter_token_latency.total
                seen["vllm:inter_token_latency_seconds_count"] = engine.stats.inter_token_latency.n
                seen.update(histogram_sample("vllm:iteration_tokens_total", engine.stats.iteration_tokens))
                apply(pol.observe_engine(BACKEND, seen, t), t)
        if pol is not None and t >= next_tick:
            apply(pol.tick(t), t)
            next_tick += tick_interval
        if t >= duration_s or (once and not by_pid and not engine.has_work()):
            break
        next_ev = min(events[0][0] if events else math.inf, next_scrape, next_tick, duration_s)
        if engine.has_work():
            res = engine.step(t, next_ev - t)
            engine_calls += 1
            if res.steps:
                t += res.duration
                for req in res.finished:
                    finish(req, t)
                continue
        engine.expire_pins(t)
        pe = engine.next_wakeup()
        t = max(t, min(next_ev, pe if pe is not None else math.inf))

    cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
    pstats: dict[str, Any] = {}
    if pol is not None:
        st = pol.stats()
        pstats = {k: getattr(st, k) for k in ("pauses", "resumes", "forced_resumes", "marks", "rejects", "queue_length",
                                              "swaps", "unmarks") if hasattr(st, k)}
        if pol.mode is not None:  # which tr rule ran, and (cost-aware) what it believed at the end
            pstats["tr_mode"] = pol.mode
        report = pol.report(BACKEND)
        if report:
            pstats["cost_aware"] = {k: round(v, 9) for k, v in report.items()}
    if arm == "continuum":
        pstats = {"pins": engine.stats.pins, "pin_expiries": engine.stats.pin_expiries, "pin_ttl_s": pin_ttl_s}
    result = DesResult(arm, prof.name, programs, duration_s, seed, steps, metrics, engine.num_steps, engine_calls,
                       wall_s, cpu_s, pstats)
    if out_dir is not None:
        result.run_dir = write_run_dir(result, out_dir, prof, run_name, workload=wl, num_gpu_blocks=num_gpu_blocks,
                                       pin_ttl_s=pin_ttl_s if arm == "continuum" else None)
    return result


def write_run_dir(result: DesResult, out_dir: str | Path, prof: Profile, run_id: str, *, workload: Any = None,
                  num_gpu_blocks: int | None = None, pin_ttl_s: float | None = None) -> Path:
    """manifest.json + steps.jsonl + engine_metrics.jsonl in `out_dir` (the harness's run-directory format)."""
    paths = RunPaths.create(out_dir)
    for f in (paths.steps, paths.engine_metrics):
        if f.exists():
            f.unlink()  # a DES run is regenerated whole, never appended to
    with JsonlWriter(paths.steps) as w:
        for s in result.steps:
            w.write(s)
    with JsonlWriter(paths.engine_metrics) as w:
        for row in result.metrics:
            vals = {k: v for k, v in row.items() if k != "t"}
            w.write_line(EngineSample(t=row["t"], engine="sim", values=vals).to_json())
    wl_name = workload.name if isinstance(workload, WorkloadParams) else (workload if isinstance(workload, str) else "traces")
    RunManifest(
        run_id=run_id,
        arm=result.arm,
        programs=result.programs,
        agent="synthetic",
        engine="des",
        simulated=True,
        profile=prof.name,
        start_time=0.0,
        time_scale=1.0,
        workload=wl_name,
        seed=result.seed,
        duration_s=result.duration_s,
        end_time=result.duration_s,
        git_revision=git_revision(),
        versions=package_versions(),
        extra={
            "label": result.label,
            "block_size": prof.engine.block_size,
            "num_gpu_blocks": prof.engine.num_gpu_blocks,
            "num_gpu_blocks_override": num_gpu_blocks,
            "timing": {"beta0": prof.timing.beta0, "beta1": prof.timing.beta1, "beta2": prof.timing.beta2,
                       "beta3": prof.timing.beta3},
            "pin_ttl_s": pin_ttl_s,
            "summary": result.summary(),
        },
    ).write(paths.manifest)
    return paths.root
