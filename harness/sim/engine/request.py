"""Requests and their token streams, as the engine model sees them (vLLM v1's vllm/v1/request.py).

A request carries a `TokenSeq` holding its prompt AND its output tokens: the workload decides the output, the
engine only decides when it is computed. Prefix caching works on chained hashes of full blocks:

* `SegmentSeq` describes tokens as segments (shared system prompt, instance text, output k, observation k) and
  hashes per-block content descriptors instead of token lists: two blocks get equal hashes exactly when their
  token ranges are equal, and a program's turn k prompt is literally its turn k-1 prompt + output +
  observation, so prefix reuse and its loss are real (the DES).
* `IdSeq` hashes real token-id lists (the HTTP server).

A request's block table (`blocks[:nblocks]`) lives on the request for speed, but only the KV cache manager
writes it; the scheduler's decode bookkeeping (`slot`, `seqno`, `output_offset`, `finish_step`) is written only
by the scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

import numpy as np

NO_HASH = 0  # a block hash is never 0, so 0 marks a block that holds no cached content


def _hash(x: object) -> int:
    h = hash(x)
    return h if h != NO_HASH else 1


# --- token sequences ----------------------------------------------------------------------------------


class TokenSeq(Protocol):
    """The token stream of a request: prompt followed by the output tokens it will generate."""

    block_size: int
    # the leading cached blocks the sequence's previous request held when it was freed (set by the KV cache
    # manager): the first place to look for this sequence's prefix
    last_blocks: np.ndarray | None

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

    __slots__ = ("_keys", "_ends", "_len", "_cur_seg")

    def __init__(self, block_size: int, segments: list[tuple[int, int]] | None = None) -> None:
        super().__init__(block_size)
        self._keys: list[int] = []
        self._ends: list[int] = []
        self._len = 0
        self._cur_seg = 0  # segment holding the first token of block len(hashes)
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
        first = i * bs
        end_tok = first + bs
        si, keys, ends = self._cur_seg, self._keys, self._ends
        seg_start = ends[si - 1] if si else 0
        # the cursor always points at the segment holding token first (blocks are hashed in order)
        while ends[si] <= first:
            seg_start = ends[si]
            si += 1
        if ends[si] >= end_tok:  # the common case: the block lies inside one segment
            key: object = (keys[si], first - seg_start)
        else:
            pieces = []
            pos = first
            j = si
            start = seg_start
            while pos < end_tok:
                end = ends[j]
                take = min(end, end_tok) - pos
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
    # scheduler bookkeeping (see Scheduler): decoder slot, admission order, and for a decoder the output-token
    # count minus the global step (its output tokens at step S are output_offset + S) and the step of its last token
    slot: int = -1
    seqno: int = 0
    output_offset: int = 0
    finish_step: int = 0

    @property
    def num_tokens(self) -> int:
        return self.num_prompt_tokens + self.num_output_tokens

    def block_ids(self) -> np.ndarray:
        return self.blocks[: self.nblocks]
