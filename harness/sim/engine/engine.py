"""A model of vLLM v1's engine core: paged KV blocks, automatic prefix caching, and the step scheduler.

The package follows vLLM's layout so a vLLM reader recognises every decision: request.py (requests and their
token streams), block_pool.py (blocks, free queue, prefix-cache map), kv_cache_manager.py (the only user of
the block pool and the host tier), scheduler.py and output.py (one step's scheduling), offload.py (the host
KV tier), stats.py (counters and their `vllm:*` exposition) and this module, the engine core the DES and the
HTTP server drive.

Speed: blocks, ref counts and hashes live in numpy arrays and whole requests are touched/freed at once;
`Engine.step` advances a run of identical decode-only steps in one go (until a request finishes, a block
shortage would preempt, or the caller's next event), which is what makes an 80-minute 96-program run take
seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from harness.sim.engine.block_pool import BlockPool
from harness.sim.engine.kv_cache_manager import KVCacheManager
from harness.sim.engine.offload import HostKVTier
from harness.sim.engine.output import SchedulerOutput
from harness.sim.engine.request import Request, Status
from harness.sim.engine.scheduler import Scheduler
from harness.sim.engine.stats import EngineStats


@dataclass(slots=True)
class StepResult:
    duration: float  # seconds of engine time this call covered (0: nothing to run)
    steps: int
    finished: list[Request]
    first_tokens: list[Request]
    preempted: list[Request]


@dataclass(slots=True)
class _Pin:
    blocks: np.ndarray
    expiry: float


class Engine:
    """The engine core: add requests, call `step(now, horizon)` repeatedly, collect finished requests.

    The caller owns the clock. `step` runs one engine step starting at `now`, or, when the batch is
    decode-only and nothing else can change, a run of identical steps that all start before
    `now + horizon` (pass the time to the caller's next event; 0 forces single steps). The run ends at the
    step in which the first request finishes, before a block shortage would force a preemption, and before
    the next pin expiry."""

    def __init__(
        self,
        *,
        block_size: int,
        num_gpu_blocks: int,
        max_num_batched_tokens: int,
        max_num_seqs: int,
        timing: "StepTimeModelLike",
        max_model_len: int = 1 << 30,
        enable_caching: bool = True,
        unhashed_to_front: bool = True,
        skip_ahead: bool = True,
        host: HostKVTier | None = None,
    ) -> None:
        self.block_size = block_size
        self.num_gpu_blocks = num_gpu_blocks
        self.max_model_len = max_model_len
        self.timing = timing
        self._frontend = bool(timing.frontend_request_s or timing.frontend_token_s)
        self.skip_ahead = skip_ahead
        self.stats = EngineStats()
        self.kv = KVCacheManager(num_gpu_blocks, block_size, self.stats, enable_caching=enable_caching,
                                 unhashed_to_front=unhashed_to_front, host=host)
        self.scheduler = Scheduler(
            self.kv, self.stats, max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs
        )
        self.scheduler.on_admitted = self._on_admitted
        self.pins: dict[str, _Pin] = {}
        self.num_steps = 0

    @classmethod
    def from_profile(cls, profile: "ProfileLike", *, kv_offload_gib: float | None = None,
                     **kw: object) -> "Engine":
        """An engine with the profile's settings; `kv_offload_gib` (vLLM's --kv-offloading-size, GiB over all
        GPUs) adds the host KV tier, sized and timed by the profile's [offload] link (0 GiB: a tier that
        holds nothing, which must behave exactly like no tier)."""
        e = profile.engine
        if kv_offload_gib is not None:
            link = profile.host_link()  # type: ignore[attr-defined]
            kw["host"] = HostKVTier(link.capacity_blocks(kv_offload_gib, e.block_size), e.block_size, link)
        return cls(
            block_size=e.block_size,
            num_gpu_blocks=e.num_gpu_blocks,
            max_num_batched_tokens=e.max_num_batched_tokens,
            max_num_seqs=e.max_num_seqs,
            max_model_len=e.max_model_len,
            timing=profile.timing,
            **kw,  # type: ignore[arg-type]
        )

    # --- requests
    def add_request(self, req: Request) -> None:
        self.validate(req)
        self.scheduler.add_request(req)

    def validate(self, req: Request) -> None:
        """Raise ValueError if the request can never run (bad max_tokens, too long, larger than the cache)."""
        need = req.num_prompt_tokens + req.max_tokens
        if req.max_tokens < 1:
            raise ValueError(f"request {req.request_id}: max_tokens must be >= 1")
        if req.seq.length < need:
            raise ValueError(f"request {req.request_id}: token sequence has {req.seq.length} < {need} tokens")
        if need > self.max_model_len:
            raise ValueError(f"request {req.request_id}: {need} tokens exceed max_model_len {self.max_model_len}")
        if -(-need // self.block_size) > self.num_gpu_blocks - 1:
            raise ValueError(f"request {req.request_id}: {need} tokens can never fit in the KV cache")

    def abort(self, req: Request, now: float) -> None:
        """Client gone: drop the request wherever it is (vLLM's abort)."""
        self.scheduler.abort_request(req, self.num_steps)
        req.status = Status.ABORTED
        req.finish_time = now
        req.finish_reason = "abort"
        self.stats.success["abort"] = self.stats.success.get("abort", 0) + 1

    @property
    def pool(self) -> BlockPool:
        """The KV cache manager's block pool, for inspection (tests, debugging); the engine never touches it."""
        return self.kv.block_pool

    @property
    def host(self) -> HostKVTier | None:
        """The host KV tier (None when off), for its series and capacity; only the KV cache manager uses it."""
        return self.kv.host

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        """vllm:num_requests_waiting: the waiting queue, including requests whose KV is being loaded."""
        return len(self.scheduler.waiting) + len(self.scheduler.loading)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def next_wakeup(self) -> float | None:
        """The engine's next change of its own when it cannot step: a pin expiry or a host-tier load landing."""
        pe = self.next_pin_expiry()
        nl = self.scheduler.next_load()
        if nl is None:
            return pe
        return nl if pe is None else min(pe, nl)

    def kv_usage(self) -> float:
        return self.kv.usage

    def sync(self) -> None:
        """Materialise every decoder (exact per-request counters and block lists; tests and debugging)."""
        self.scheduler.sync(self.num_steps)

    # --- Continuum pinning
    def _on_admitted(self, req: Request) -> None:
        if req.program_id is not None and req.program_id in self.pins:
            self._unpin(req.program_id)

    def _pin(self, req: Request, now: float) -> None:
        pid = req.program_id
        assert pid is not None and req.pin_ttl is not None
        if pid in self.pins:
            self._unpin(pid)
        self.pins[pid] = _Pin(self.kv.pin(req), now + req.pin_ttl)
        self.stats.pins += 1

    def _unpin(self, pid: str) -> None:
        pin = self.pins.pop(pid)
        self.kv.unpin(pin.blocks)

    def expire_pins(self, now: float) -> None:
        if self.pins:
            for pid in [p for p, pin in self.pins.items() if pin.expiry <= now]:
                self._unpin(pid)
                self.stats.pin_expiries += 1

    def next_pin_expiry(self) -> float | None:
        return min((p.expiry for p in self.pins.values()), default=None)

    def unpin_program(self, pid: str) -> None:
        """The program ended (or was released): drop its pin now."""
        if pid in self.pins:
            self._unpin(pid)

    # --- stepping
    def step(self, now: float, horizon: float = 0.0) -> StepResult:
        self.expire_pins(now)
        sch = self.scheduler
        if sch.loading:
            sch.finish_loads(now)
        s = self.num_steps
        out = sch.schedule(now, s)
        d = out.decode_tokens
        if d == 0 and not out.prefills:
            return StepResult(0.0, 0, [], [], out.preempted)
        t = self.timing
        k = 1
        if self.skip_ahead and horizon > 0 and not out.prefills and not out.preempted \
                and sch.next_finish_step() is not None:
            exp = self.next_wakeup()
            if exp is not None:
                horizon = min(horizon, exp - now)
            k = self._run_length(s, out, horizon)
        if k == 1:
            dur = t.step_time(out.prefill_tokens, d, out.decode_context, out.prefill_context)
        else:
            dur = t.decode_run_time(k, d, out.decode_context)
            sch.allocate_run_blocks(s, k)
        if self._frontend:  # the API server's work on the engine's cores: new requests, output tokens
            done_prefills = sum(1 for r, n in out.prefills
                                if r.num_computed_tokens + n >= r.num_prompt_tokens + r.num_output_tokens)
            dur += t.frontend_time(out.new_requests, d * k + done_prefills)
        end = now + dur
        stats = self.stats
        stats.iteration_tokens.observe(out.prefill_tokens + d, k)
        stats.generation_tokens += d * k
        if d:
            stats.inter_token_latency.observe(dur / k, d * k)
        self.num_steps = s + k
        finished, first = sch.update_from_output(out, s, k, end)
        for req in finished:
            self._finish(req, end)
        return StepResult(dur, k, finished, first, out.preempted)

    def _finish(self, req: Request, now: float) -> None:
        req.status = Status.FINISHED
        req.finish_time = now
        req.finish_reason = req.finish_reason_at_limit
        if req.pin_ttl is not None and req.pin_ttl > 0 and req.program_id is not None:
            self._pin(req, now)
        self.kv.free(req)
        self.stats.on_finish(req)

    def _run_length(self, s: int, out: SchedulerOutput, horizon: float) -> int:
        """How many identical decode-only steps (step s included) can run before something changes."""
        sch = self.scheduler
        next_finish = sch.next_finish_step()
        assert next_finish is not None  # step() asks only when a decoder is due to finish
        kmax = next_finish - s + 1  # up to and including the step of the next finish
        if kmax <= 1:
            return 1
        t = self.timing
        b, ctx = out.decode_tokens, out.decode_context
        fe = t.frontend_token_s * b  # per step, when the API server shares the cores

        def run_time(k: int) -> float:
            return t.decode_run_time(k, b, ctx) + fe * k

        if run_time(kmax - 1) >= horizon:  # keep steps that start before the horizon
            low, high = 1, kmax - 1
            while low < high:
                mid = (low + high + 1) // 2
                if run_time(mid - 1) < horizon:
                    low = mid
                else:
                    high = mid - 1
            kmax = low
        if kmax <= 1:
            return 1
        free = self.kv.num_free_blocks
        if sch.blocks_for_run(s, kmax) > free:  # stop before a step that would have to preempt
            low, high = 1, kmax
            while low < high:
                mid = (low + high + 1) // 2
                if sch.blocks_for_run(s, mid) <= free:
                    low = mid
                else:
                    high = mid - 1
            kmax = low
        return kmax


class StepTimeModelLike(Protocol):
    """What the engine needs of timing.StepTimeModel: step times, and the API server's CPU time when it shares
    the engine's cores (0 when it does not)."""

    frontend_request_s: float
    frontend_token_s: float

    def frontend_time(self, new_requests: int, output_tokens: int) -> float: ...
    def step_time(self, prefill_tokens: int, decode_tokens: int, decode_context: int,
                  prefill_context: int = 0) -> float: ...
    def decode_run_time(self, k: int, decode_tokens: int, decode_context: int) -> float: ...


class ProfileLike(Protocol):
    @property
    def engine(self) -> object: ...
    @property
    def timing(self) -> StepTimeModelLike: ...
