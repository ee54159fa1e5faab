"""The step scheduler (vLLM v1's vllm/v1/core/sched/scheduler.py): FCFS within max_num_batched_tokens and
max_num_seqs, preemption by recompute.

One step: running requests first (a decode token or their next prefill chunk, within the token budget); when a
running request cannot get its blocks, the LAST running request is preempted by recompute (blocks freed,
computed tokens reset, pushed to the FRONT of the waiting queue), until the allocation succeeds or the request
itself was preempted (vLLM's running loop pops running[-1] for FCFS). Only when nothing was preempted in the
step are waiting requests admitted, in order, each with its prefix-cache lookup, while the token budget,
max_num_seqs and free blocks allow; with vLLM's default scheduler_reserve_full_isl a waiting request is admitted
only if its whole sequence fits, not just its first chunk. Prefix-cache queries/hits are recorded at admission
and only for requests never preempted (vLLM 0.32: "record at admission so unscheduled lookups are not counted";
preempted ones go to separate preempted_* stats), which is why queries == prompt tokens in
shared/samples/vllm-metrics-sample-kv-pressure.txt despite 74 preemptions.

With a host KV tier, a waiting request whose prefix misses the GPU past its GPU hits but hits the tier is given
its blocks, parked while they are copied host -> GPU (other requests keep stepping), and then admitted with
those tokens computed.

Every block the scheduler needs comes from the KV cache manager (kv_cache_manager.py).
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Callable

import numpy as np

from harness.sim.engine.kv_cache_manager import KVCacheManager
from harness.sim.engine.output import SchedulerOutput
from harness.sim.engine.request import Request, Status
from harness.sim.engine.stats import EngineStats

_EMPTY_SLOT = -(1 << 40)  # decode offset of an empty slot: never crosses a block boundary


class Scheduler:
    """vLLM v1's FCFS step scheduler (running first, then waiting) with recompute preemption.

    Decoding requests are tracked lazily in numpy slot arrays: a decoder's computed tokens are
    `decode_offset[slot] + S` at global step S and its block count is `decode_blocks[slot]`, so a step costs
    O(requests that change) instead of O(batch). Blocks popped for decoders are owed to them by the KV cache
    manager and attached (and their newly full blocks hashed) when the request is brought up to date at finish
    or preemption (`materialize`): the pool sees the same pops at the same steps, and no other request can look
    those blocks up in between (a request's decode blocks hold its own, not-yet-resubmitted content). vLLM's
    order is kept wherever it is observable: a block shortage is resolved request by request in running order,
    preempting from the end of `running`. Since max_num_seqs <= max_num_batched_tokens (vLLM enforces it),
    every decoder always fits the token budget, and at most one request (the last admitted) is mid-prefill.
    """

    def __init__(
        self,
        kv: KVCacheManager,
        stats: EngineStats,
        *,
        max_num_batched_tokens: int,
        max_num_seqs: int,
        reserve_full_isl: bool = True,
    ) -> None:
        if max_num_batched_tokens < max_num_seqs:
            raise ValueError("max_num_batched_tokens must be >= max_num_seqs (vLLM refuses this configuration)")
        self.kv = kv
        self.block_size = kv.block_size
        self.stats = stats
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.running: list[Request] = []  # admission order (= vLLM's running order)
        self.waiting: deque[Request] = deque()
        cap = max_num_seqs + 1
        # per decoder slot: computed tokens minus the global step, and the blocks the decoder is entitled to
        self.decode_offset = np.full(cap, _EMPTY_SLOT, dtype=np.int64)
        self.decode_blocks = np.zeros(cap, dtype=np.int64)
        self.slot_req: list[Request | None] = [None] * cap
        # min-heap: decoders use the lowest slots, so the arrays are cut at `slot_end`
        self._free_slots = list(range(cap))
        self.slot_end = 0  # 1 + the highest slot in use
        self.num_decoders = 0
        self.sum_decode_offset = 0
        self.finish_heap: list[tuple[int, int, Request]] = []  # (step of the last token, seqno, request)
        self._seqno = 0
        self.reserve_full_isl = reserve_full_isl
        self.on_admitted: Callable[[Request], None] = lambda req: None
        self.loading: list[tuple[float, int, Request]] = []  # (landing time, order, request): host-tier loads
        self.inflight: dict[int, Request] = {}  # loading or loaded and not yet running (their reservation)
        self._load_seq = 0

    def add_request(self, req: Request) -> None:
        req.status = Status.WAITING
        self.waiting.append(req)

    def has_work(self) -> bool:
        return bool(self.running or self.waiting or self.loading)

    # --- decoders
    def _enter_decode(self, req: Request, s_next: int) -> None:
        """req (computed == num_tokens - 1) decodes from step s_next on."""
        slot = heapq.heappop(self._free_slots)
        if slot >= self.slot_end:
            self.slot_end = slot + 1
        req.slot = slot
        offset = req.num_computed_tokens - s_next
        self.decode_offset[slot] = offset
        self.decode_blocks[slot] = req.nblocks
        self.slot_req[slot] = req
        self.sum_decode_offset += offset
        self.num_decoders += 1
        req.output_offset = req.num_output_tokens - s_next
        req.finish_step = s_next + req.max_tokens - req.num_output_tokens - 1
        heapq.heappush(self.finish_heap, (req.finish_step, req.seqno, req))

    def materialize(self, req: Request, s: int) -> None:
        """Bring a decoder's counters, blocks and hashes up to date at step boundary s; it leaves the slots."""
        slot = req.slot
        if slot < 0:
            return
        offset = int(self.decode_offset[slot])
        req.num_computed_tokens = offset + s
        req.num_output_tokens = req.output_offset + s
        self.kv.attach_decode_blocks(req, int(self.decode_blocks[slot]) - req.nblocks)
        if self.kv.enable_caching:
            self.kv.cache_blocks(req, req.num_computed_tokens // self.block_size)
        self.decode_offset[slot] = _EMPTY_SLOT
        self.decode_blocks[slot] = 0
        self.slot_req[slot] = None
        self.sum_decode_offset -= offset
        self.num_decoders -= 1
        heapq.heappush(self._free_slots, slot)
        end = self.slot_end
        while end and self.slot_req[end - 1] is None:
            end -= 1
        self.slot_end = end
        req.slot = -1

    def sync(self, s: int) -> None:
        """Bring every decoder up to date at step s and let it go on decoding (tests and debugging)."""
        for req in list(self.running):
            if req.slot >= 0:
                self.materialize(req, s)
                self._enter_decode(req, s)

    def decoders_crossing_block(self, s: int) -> np.ndarray:
        """Decoder slots that need a new block at step s (computed + 1 > blocks * block_size)."""
        end = self.slot_end
        return np.flatnonzero(self.decode_offset[:end] + (s + 1) > self.decode_blocks[:end] * self.block_size)

    def blocks_for_run(self, s: int, k: int) -> int:
        """Blocks the decoders still need to run steps s .. s+k-1."""
        bs = self.block_size
        end = self.slot_end
        need = (self.decode_offset[:end] + (s + k + bs - 1)) // bs - self.decode_blocks[:end]
        return int(np.maximum(need, 0).sum())

    def allocate_run_blocks(self, s: int, k: int) -> None:
        """The blocks the decoders need for steps s .. s+k-1 beyond what step s already allocated."""
        extra = self.blocks_for_run(s, k)
        if extra:
            bs = self.block_size
            end = self.slot_end
            self.decode_blocks[:end] = np.maximum(self.decode_blocks[:end],
                                                  (self.decode_offset[:end] + (s + k + bs - 1)) // bs)
            self.kv.allocate_decode_blocks(extra)

    def next_finish_step(self) -> int | None:
        """The step of the earliest pending decoder finish (possibly a stale entry of a preempted request)."""
        return self.finish_heap[0][0] if self.finish_heap else None

    def _preempt(self, req: Request, s: int) -> None:
        self.materialize(req, s)
        self.kv.free(req)
        req.status = Status.PREEMPTED
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        self.stats.num_preemptions += 1
        self.waiting.appendleft(req)

    # --- host KV tier loads
    def _start_load(self, req: Request, num_hit_tokens: int, num_host_blocks: int, now: float) -> None:
        """The request's blocks are allocated; it waits (off the waiting queue) while num_host_blocks blocks are
        copied host -> GPU, then goes back to the front of the queue with those tokens computed."""
        bs = self.block_size
        loaded_tokens = num_host_blocks * bs
        if req.num_preemptions == 0 and req.num_cached_tokens < 0:  # vLLM records both lookups at this pass
            self.kv.record_lookup(req.num_tokens, num_hit_tokens, loaded_tokens)
        if req.num_cached_tokens < 0:
            req.num_cached_tokens = num_hit_tokens + loaded_tokens
        if req.first_scheduled_time is None:
            req.first_scheduled_time = now
        req.num_computed_tokens = num_hit_tokens + loaded_tokens
        req.load_ready = self.kv.load_from_host(req, num_hit_tokens // bs, num_host_blocks, now)
        req.status = Status.WAITING
        self._load_seq += 1
        heapq.heappush(self.loading, (req.load_ready, self._load_seq, req))
        self.inflight[id(req)] = req

    def finish_loads(self, now: float) -> None:
        """Loads that have landed by `now`: their requests rejoin the front of the waiting queue (vLLM keeps
        them in place there while they load; the ones ahead of them have been admitted meanwhile)."""
        loading = self.loading
        done: list[Request] = []
        while loading and loading[0][0] <= now:
            done.append(heapq.heappop(loading)[2])
        for req in reversed(done):
            self.waiting.appendleft(req)

    def _inflight_reserved(self) -> int:
        """Blocks the loading (or loaded, not yet running) requests still need for their whole sequence."""
        if not self.inflight:
            return 0
        bs = self.block_size
        return sum(max(0, -(-r.num_tokens // bs) - r.nblocks) for r in self.inflight.values())

    def next_load(self) -> float | None:
        return self.loading[0][0] if self.loading else None

    # --- one step
    def schedule(self, now: float, s: int) -> SchedulerOutput:
        kv = self.kv
        running = self.running
        preempted: list[Request] = []
        budget = self.max_num_batched_tokens - self.num_decoders
        # 1. decoders that cross a block boundary this step
        cross = self.decoders_crossing_block(s)
        need = len(cross)
        if need:
            if need <= kv.num_free_blocks:
                self.decode_blocks[cross] += 1
                kv.allocate_decode_blocks(need)
            else:
                seqs = np.fromiter((self.slot_req[c].seqno for c in cross), dtype=np.int64, count=need)
                for slot in cross[np.argsort(seqs)].tolist():
                    req = self.slot_req[slot]
                    if req is None:  # preempted earlier in this loop
                        continue
                    while kv.num_free_blocks < 1:
                        victim = running.pop()
                        self._preempt(victim, s)
                        preempted.append(victim)
                        if victim is req:
                            break
                    if req.status is Status.PREEMPTED:
                        break
                    self.decode_blocks[slot] += 1
                    kv.allocate_decode_blocks(1)
        # 2. the request that is mid-prefill (at most one, last in running)
        prefills: list[tuple[Request, int]] = []
        prefill_tokens = 0
        if running and running[-1].slot < 0:
            req = running[-1]
            n = min(req.num_prompt_tokens + req.num_output_tokens - req.num_computed_tokens, budget)
            if kv.allocate_slots(req, n):
                prefills.append((req, n))
                prefill_tokens += n
                budget -= n
            else:  # vLLM pops the last running request, which is this one
                running.pop()
                self._preempt(req, s)
                preempted.append(req)
        # 3. waiting requests, only if nothing was preempted in this step
        admitted = new = 0
        if not preempted:
            waiting = self.waiting
            while waiting and budget > 0:
                if len(running) >= self.max_num_seqs:
                    break
                req = waiting[0]
                if req.nblocks:  # its prefix was loaded from the host tier: it holds those blocks already
                    n_hit = req.num_computed_tokens
                    hits = None
                    n = req.num_prompt_tokens + req.num_output_tokens - n_hit
                else:
                    hit_blocks, n_hit = kv.get_computed_blocks(req)
                    n = req.num_prompt_tokens + req.num_output_tokens - n_hit
                    hits = hit_blocks if n_hit else None
                    if kv.has_host_tier:
                        num_host_blocks = kv.get_num_host_hit_blocks(req, len(hit_blocks))
                        if num_host_blocks:
                            # vLLM admits a load only if its whole sequence fits in the free blocks less what
                            # the loads already in flight still need to finish (they hold blocks, make no
                            # progress and cannot be preempted)
                            if kv.get_num_blocks_to_allocate(req, n, hits) + self._inflight_reserved() \
                                    > kv.num_free_blocks:
                                break
                            if not kv.allocate_slots(req, num_host_blocks * self.block_size, hits):
                                break
                            waiting.popleft()
                            self._start_load(req, n_hit, num_host_blocks, now)
                            continue
                # vLLM >= 0.3x scheduler_reserve_full_isl (default on): admit only if the WHOLE sequence fits,
                # not just its first chunk
                if self.reserve_full_isl and n > budget \
                        and kv.get_num_blocks_to_allocate(req, n, hits) > kv.num_free_blocks:
                    break
                if n > budget:
                    n = budget
                if not kv.allocate_slots(req, n, hits):
                    break
                waiting.popleft()
                if req.nblocks and self.inflight:
                    self.inflight.pop(id(req), None)
                if req.num_preemptions == 0 and req.num_cached_tokens < 0:
                    kv.record_lookup(req.num_prompt_tokens + req.num_output_tokens, n_hit)
                    new += 1
                elif req.nblocks and req.num_preemptions == 0 and req.first_token_time is None:
                    new += 1  # loaded from the host tier: new to the engine all the same
                if req.num_cached_tokens < 0:
                    req.num_cached_tokens = n_hit
                if req.first_scheduled_time is None:
                    req.first_scheduled_time = now
                req.num_computed_tokens = n_hit
                req.status = Status.RUNNING
                self._seqno += 1
                req.seqno = self._seqno
                running.append(req)
                prefills.append((req, n))
                prefill_tokens += n
                budget -= n
                admitted += 1
                self.on_admitted(req)
        num_decoders = self.num_decoders
        prefill_context = 0
        for req, n in prefills:  # chunk of n tokens from position p attends to n*p + n(n+1)/2 tokens in all
            p = req.num_computed_tokens
            prefill_context += n * p + n * (n + 1) // 2
        decode_context = self.sum_decode_offset + num_decoders * s
        return SchedulerOutput(prefills, prefill_tokens, num_decoders, decode_context, preempted, admitted,
                               prefill_context, new)

    def update_from_output(self, out: SchedulerOutput, s: int, k: int, end: float) -> tuple[list[Request],
                                                                                               list[Request]]:
        """Advance the requests by the k steps from step s that ended at time `end`: decoders whose last token
        was produced, and prefill chunks (a finished prefill yields a token and enters decode, or finishes).
        Returns (finished, first tokens); the finished ones have left `running`."""
        stats = self.stats
        s_end = s + k
        finished: list[Request] = []
        first: list[Request] = []
        heap = self.finish_heap
        while heap and heap[0][0] < s_end:
            _step, seqno, req = heapq.heappop(heap)
            if req.slot < 0 or req.seqno != seqno or req.status is not Status.RUNNING:
                continue  # stale: preempted (or aborted) since
            self.materialize(req, s_end)
            finished.append(req)
        for req, n in out.prefills:
            req.num_computed_tokens += n
            if req.num_computed_tokens >= req.num_prompt_tokens + req.num_output_tokens:
                req.num_output_tokens += 1
                stats.generation_tokens += 1
                if req.first_token_time is None:
                    req.first_token_time = end
                    stats.prompt_tokens += req.num_prompt_tokens
                    first.append(req)
                if req.num_output_tokens >= req.max_tokens:
                    finished.append(req)
                else:
                    self._enter_decode(req, s_end)
        if finished:
            done = set(map(id, finished))
            self.running = [r for r in self.running if id(r) not in done]
        return finished, first

    def abort_request(self, req: Request, s: int) -> None:
        """Drop the request wherever it is (running, waiting, or loading from the host tier), freeing its
        blocks (vLLM's finish_requests with FINISHED_ABORTED)."""
        if req.status == Status.RUNNING and req in self.running:
            self.running.remove(req)
            self.materialize(req, s)
            self.kv.free(req)
        elif req in self.waiting:
            self.waiting.remove(req)
            if req.nblocks:  # loaded from the host tier, not yet admitted
                self.kv.free(req)
                self.inflight.pop(id(req), None)
        elif any(r is req for _t, _n, r in self.loading):
            self.loading = [x for x in self.loading if x[2] is not req]
            heapq.heapify(self.loading)
            self.inflight.pop(id(req), None)
            self.kv.free(req)
