"""The KV cache manager (vLLM v1's vllm/v1/core/kv_cache_manager.py): the one owner of the block pool and the
host KV tier. The scheduler and the engine reach blocks only through its verbs:

* `get_computed_blocks`: the longest run of a request's leading full blocks that are cached, capped at
  num_tokens - 1 tokens so one token is always computed (vLLM caps hits the same way).
* `get_num_blocks_to_allocate` / `allocate_slots`: blocks for n more tokens after the hit blocks; hit blocks
  that sit in the free queue count as blocks to allocate. Full blocks are hashed and registered at allocation
  time, as vLLM does (`cache_blocks`).
* `allocate_decode_blocks` / `attach_decode_blocks`: the scheduler tracks decoders lazily (see scheduler.py);
  blocks popped for them at the step they are needed are held here until the request is brought up to date,
  then appended to its block table.
* `free`: a request's blocks in reverse order (its tail is evicted before its head).
* `pin` / `unpin`: the Continuum arm keeps a finished request's blocks referenced for a while.
* The host tier (offload.py, vLLM's native CPU offloading): `cache_blocks` offers newly full prompt blocks to it
  as they are computed (offload_prompt_only, vLLM's default); `get_num_host_hit_blocks` and `load_from_host`
  serve a waiting request whose prefix misses the GPU past its GPU hits but hits the tier.
"""

from __future__ import annotations

import numpy as np

from harness.sim.engine.block_pool import BlockPool
from harness.sim.engine.offload import HostKVTier
from harness.sim.engine.request import Request
from harness.sim.engine.stats import EngineStats

_EMPTY = np.zeros(0, dtype=np.int32)


def _extend_block_table(req: Request, new: np.ndarray) -> None:
    """Append block ids to the request's block table (grown by doubling)."""
    n = req.nblocks + len(new)
    if n > len(req.blocks):
        cap = len(req.blocks)
        while cap < n:
            cap *= 2
        arr = np.zeros(cap, dtype=np.int32)
        arr[: req.nblocks] = req.blocks[: req.nblocks]
        req.blocks = arr
    req.blocks[req.nblocks:n] = new
    req.nblocks = n


class KVCacheManager:
    def __init__(self, num_gpu_blocks: int, block_size: int, stats: EngineStats, *, enable_caching: bool = True,
                 unhashed_to_front: bool = True, host: HostKVTier | None = None) -> None:
        self.block_pool = BlockPool(num_gpu_blocks, unhashed_to_front=unhashed_to_front)
        self.block_size = block_size
        self.stats = stats
        self.enable_caching = enable_caching
        self.host = host  # the host-memory KV tier (vLLM's native offloading), None when off
        # blocks popped for decoders at the step they crossed a block boundary, not yet attached to their
        # request (a stack: a decoder brought up to date takes the last ones it is owed)
        self._decode_blocks_owed: list[int] = []

    # --- pool state
    @property
    def num_free_blocks(self) -> int:
        return self.block_pool.num_free

    @property
    def usage(self) -> float:
        """vllm:kv_cache_usage_perc (a property, as in vLLM)."""
        return self.block_pool.usage()

    # --- prefix cache and allocation
    def get_computed_blocks(self, req: Request) -> tuple[np.ndarray, int]:
        """The longest run of leading full blocks of `req` that are cached (at most num_tokens - 1 tokens)."""
        if not self.enable_caching:
            return _EMPTY, 0
        bs = self.block_size
        max_blocks = (req.num_tokens - 1) // bs
        if max_blocks <= 0:
            return _EMPTY, 0
        seq = req.seq
        harr = seq.hashes_upto(max_blocks)
        pool = self.block_pool
        known = seq.last_blocks
        i = 0
        parts: list[np.ndarray] = []
        if known is not None and len(known):
            m = min(len(known), max_blocks)
            ok = pool.hash[known[:m]] == harr[:m]
            i = m if ok.all() else int(np.argmin(ok))
            if i:
                parts.append(known[:i])
        if i < max_blocks:
            extra = pool.lookup(seq.hash_list(), harr, i, max_blocks)
            if len(extra):
                parts.append(extra)
        if not parts:
            return _EMPTY, 0
        blocks = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return blocks, len(blocks) * bs

    def get_num_blocks_to_allocate(self, req: Request, num_new_tokens: int,
                                   hit_blocks: np.ndarray | None = None) -> int:
        """New blocks + hit blocks that currently sit in the free queue."""
        num_hit = 0 if hit_blocks is None else len(hit_blocks)
        total = req.num_computed_tokens + num_hit * self.block_size + num_new_tokens
        need = -(-total // self.block_size) - req.nblocks - num_hit
        if num_hit:
            need += int(np.count_nonzero(self.block_pool.ref[hit_blocks] == 0))
        return max(need, 0)

    def allocate_slots(self, req: Request, num_new_tokens: int, hit_blocks: np.ndarray | None = None) -> bool:
        """Blocks for num_new_tokens more tokens (after the hit blocks); False when they do not fit."""
        bs = self.block_size
        pool = self.block_pool
        num_hit = 0 if hit_blocks is None else len(hit_blocks)
        total = req.num_computed_tokens + num_hit * bs + num_new_tokens
        new = -(-total // bs) - req.nblocks - num_hit
        if num_hit:
            evictable = int(np.count_nonzero(pool.ref[hit_blocks] == 0))
            if new + evictable > pool.num_free:
                return False
            pool.touch(hit_blocks)
            _extend_block_table(req, hit_blocks)
            req.num_cached_blocks = req.nblocks
        elif new > pool.num_free:
            return False
        if new > 0:
            _extend_block_table(req, pool.get_new_blocks(new))
        if self.enable_caching:
            self.cache_blocks(req, min(total, req.num_tokens) // bs)
        return True

    def cache_blocks(self, req: Request, num_full_blocks: int) -> None:
        """Register the request's newly full blocks in the prefix cache, and offer its newly full prompt blocks
        to the host tier (the offloading connector offers them from the first one)."""
        start = req.num_cached_blocks
        if num_full_blocks > start:
            seq = req.seq
            harr = seq.hashes_upto(num_full_blocks)
            self.block_pool.cache_blocks(req.blocks, harr, seq.hash_list(), start, num_full_blocks,
                                         seq.last_blocks)
            req.num_cached_blocks = num_full_blocks
        host = self.host
        if host is not None:
            n_store = min(num_full_blocks, req.num_prompt_tokens // self.block_size)
            if n_store > req.num_host_offered:
                req.seq.hashes_upto(n_store)
                host.store(req.seq.hash_list()[req.num_host_offered:n_store])
                req.num_host_offered = n_store

    def free(self, req: Request) -> None:
        """Free a request's blocks in reverse order (its tail is evicted before its head)."""
        blocks = req.block_ids()
        if len(blocks):
            req.seq.last_blocks = blocks[: req.num_cached_blocks].copy()
            self.block_pool.free_blocks(blocks[::-1])
        req.nblocks = 0
        req.num_cached_blocks = 0

    # --- decoders (lazily tracked by the scheduler)
    def allocate_decode_blocks(self, n: int) -> None:
        """Pop n blocks for decoders that cross a block boundary; they are owed until attached."""
        self._decode_blocks_owed.extend(self.block_pool.get_new_blocks(n).tolist())

    def attach_decode_blocks(self, req: Request, n: int) -> None:
        """Append the last n owed decode blocks to the request's block table."""
        if n > 0:
            owed = self._decode_blocks_owed
            _extend_block_table(req, np.array(owed[len(owed) - n:], dtype=np.int32))
            del owed[len(owed) - n:]

    # --- pinning (the Continuum arm)
    def pin(self, req: Request) -> np.ndarray:
        """Hold one more reference on the request's blocks (none of them is in the free queue while the request
        holds them); returns the pinned block ids for `unpin`."""
        blocks = req.block_ids().copy()
        self.block_pool.ref[blocks] += 1
        return blocks

    def unpin(self, blocks: np.ndarray) -> None:
        self.block_pool.free_blocks(blocks[::-1])

    # --- host KV tier (vLLM's OffloadingConnector, scheduler side)
    @property
    def has_host_tier(self) -> bool:
        return self.host is not None

    def get_num_host_hit_blocks(self, req: Request, num_gpu_hit_blocks: int) -> int:
        """Blocks after the GPU hits that the host tier holds, up to its first miss (at most num_tokens - 1
        tokens in all, as for GPU hits)."""
        assert self.host is not None
        max_blocks = (req.num_tokens - 1) // self.block_size
        if max_blocks <= num_gpu_hit_blocks:
            return 0
        seq = req.seq
        seq.hashes_upto(max_blocks)
        return self.host.lookup(seq.hash_list(), num_gpu_hit_blocks, max_blocks)

    def load_from_host(self, req: Request, first_block: int, num_blocks: int, now: float) -> float:
        """Copy the request's blocks [first_block, first_block + num_blocks) host -> GPU (their GPU blocks are
        already allocated); returns when the last byte lands."""
        assert self.host is not None
        return self.host.load(req.seq.hash_list()[first_block:first_block + num_blocks], now)

    def record_lookup(self, num_tokens: int, num_gpu_hit_tokens: int,
                      num_host_hit_tokens: int | None = None) -> None:
        """Count one admission's prefix-cache lookup: vllm:prefix_cache_queries/hits, and with a host tier the
        external (connector) queries past the GPU hits and, when the tier was hit, its hits."""
        self.stats.prefix_cache_queries += num_tokens
        self.stats.prefix_cache_hits += num_gpu_hit_tokens
        if self.host is not None:
            self.host.stats.external_queries += num_tokens - num_gpu_hit_tokens
            if num_host_hit_tokens is not None:
                self.host.stats.external_hits += num_host_hit_tokens
