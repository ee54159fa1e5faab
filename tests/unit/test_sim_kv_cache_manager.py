"""The engine model's seams on a tiny pool: the KV cache manager's verbs (the only way to blocks), and the
scheduler driven directly (schedule -> update_from_output, abort) without the Engine around it."""

from __future__ import annotations

import numpy as np
import pytest

from harness.sim.engine import (EngineStats, HostKVTier, HostLink, KVCacheManager, Request, Scheduler,
                                SegmentSeq)

BS = 4


def make_kv(blocks: int = 9, host_blocks: int | None = None) -> KVCacheManager:
    host = None
    if host_blocks is not None:
        host = HostKVTier(host_blocks, BS, HostLink(kv_bytes_per_token_per_gpu=1000.0, num_gpus=1,
                                                    bandwidth_bytes_per_s=1e6))
    return KVCacheManager(blocks, BS, EngineStats(), host=host)


def req(rid: str, key: int, prompt: int, out: int = 1) -> Request:
    return Request(rid, SegmentSeq(BS, [(key, prompt + out)]), prompt, out, 0.0)


def test_allocate_slots_takes_whole_blocks_and_refuses_what_does_not_fit() -> None:
    kv = make_kv(blocks=5)  # 4 usable
    a = req("a", 1, 10)
    assert kv.get_num_blocks_to_allocate(a, 10) == 3
    assert kv.allocate_slots(a, 10)
    assert a.nblocks == 3 and kv.num_free_blocks == 1
    assert a.num_cached_blocks == 2  # the two full blocks are hashed at allocation
    b = req("b", 2, 8)
    assert not kv.allocate_slots(b, 8)  # needs 2, 1 free: nothing taken
    assert b.nblocks == 0 and kv.num_free_blocks == 1
    kv.free(a)
    assert a.nblocks == 0 and kv.num_free_blocks == 4 and kv.usage == 0.0


def test_get_computed_blocks_finds_the_freed_prefix_and_leaves_one_token_to_compute() -> None:
    kv = make_kv()
    a = req("a", 1, 12)
    kv.allocate_slots(a, 12)
    held = a.block_ids().copy()
    kv.free(a)
    again = req("a2", 1, 12)
    blocks, tokens = kv.get_computed_blocks(again)
    # 3 full blocks are cached, but at most 12 - 1 tokens may be hits: 2 blocks
    assert tokens == 8 and blocks.tolist() == held[:2].tolist()
    assert kv.get_computed_blocks(req("a3", 1, 8))[1] == 4  # 8 tokens: at most 7 hit -> 1 block
    # hit blocks that sit in the free queue count as blocks to allocate (they leave it)
    assert kv.get_num_blocks_to_allocate(again, 4, blocks) == 1 + 2
    free = kv.num_free_blocks
    assert kv.allocate_slots(again, 4, blocks)
    assert again.block_ids().tolist()[:2] == held[:2].tolist() and kv.num_free_blocks == free - 3
    assert kv.get_computed_blocks(req("other", 2, 12))[1] == 0


def test_caching_off_finds_nothing() -> None:
    kv = KVCacheManager(9, BS, EngineStats(), enable_caching=False)
    a = req("a", 1, 12)
    kv.allocate_slots(a, 12)
    kv.free(a)
    assert kv.get_computed_blocks(req("a2", 1, 12))[1] == 0


def test_pin_keeps_blocks_out_of_the_free_queue_until_unpinned() -> None:
    kv = make_kv(blocks=5)
    a = req("a", 1, 8)
    kv.allocate_slots(a, 8)
    pinned = kv.pin(a)
    kv.free(a)
    assert kv.num_free_blocks == 2  # the request let go, the pin still holds its 2 blocks
    kv.unpin(pinned)
    assert kv.num_free_blocks == 4
    blocks, tokens = kv.get_computed_blocks(req("a2", 1, 8))
    assert tokens == 4 and blocks.tolist() == pinned[:1].tolist()  # still cached after the pin ended


def test_decode_blocks_are_owed_until_attached_last_first() -> None:
    kv = make_kv(blocks=9)
    a, b = req("a", 1, 4), req("b", 2, 4)
    kv.allocate_slots(a, 4)
    kv.allocate_slots(b, 4)
    free = kv.num_free_blocks
    kv.allocate_decode_blocks(2)
    assert kv.num_free_blocks == free - 2
    before = a.nblocks
    kv.attach_decode_blocks(a, 1)
    kv.attach_decode_blocks(b, 1)
    kv.attach_decode_blocks(b, 0)  # nothing owed to it: no change
    assert a.nblocks == before + 1 and b.nblocks == 2
    assert a.block_ids()[-1] != b.block_ids()[-1]
    assert len({*a.block_ids().tolist(), *b.block_ids().tolist()}) == 4


def test_host_tier_gets_prompt_blocks_only_and_lookups_are_counted() -> None:
    kv = make_kv(blocks=9, host_blocks=10)
    assert kv.has_host_tier
    a = req("a", 1, 10, out=6)  # prompt: 2 full blocks; decode fills more
    kv.allocate_slots(a, 16)
    assert kv.host is not None and len(kv.host) == 2  # offload_prompt_only
    kv.free(a)
    kv.allocate_slots(req("filler", 9, 32), 32)  # all 8 blocks: evicts a's GPU blocks
    again = req("a2", 1, 10, out=6)
    blocks, tokens = kv.get_computed_blocks(again)
    assert tokens == 0 and kv.get_num_host_hit_blocks(again, len(blocks)) == 2
    assert kv.load_from_host(again, 0, 2, now=1.0) == pytest.approx(1.0 + 8 * 1000.0 / 1e6)
    kv.record_lookup(16, 0, 8)
    kv.record_lookup(16, 4)
    st, hs = kv.stats, kv.host.stats
    assert (st.prefix_cache_queries, st.prefix_cache_hits) == (32, 4)
    assert (hs.external_queries, hs.external_hits) == (16 + 12, 8)


def test_scheduler_alone_prefills_decodes_and_aborts() -> None:
    stats = EngineStats()
    kv = KVCacheManager(9, BS, stats)
    sch = Scheduler(kv, stats, max_num_batched_tokens=8, max_num_seqs=4)
    a = req("a", 1, 6, out=3)
    sch.add_request(a)
    out = sch.schedule(0.0, 0)
    assert [(r.request_id, n) for r, n in out.prefills] == [("a", 6)] and out.new_requests == 1
    finished, first = sch.update_from_output(out, 0, 1, 0.5)
    assert finished == [] and first == [a] and a.first_token_time == 0.5 and a.slot >= 0
    out = sch.schedule(0.5, 1)  # a decodes: 6 computed tokens of KV read
    assert out.decode_tokens == 1 and out.decode_context == 6 and not out.prefills
    finished, _ = sch.update_from_output(out, 1, 1, 0.6)
    assert finished == [] and sch.next_finish_step() == 2
    b = req("b", 2, 4)
    sch.add_request(b)
    sch.schedule(0.6, 2)  # b admitted beside a's last decode
    free = kv.num_free_blocks
    sch.abort_request(b, 2)
    assert b not in sch.running and kv.num_free_blocks > free
    out = sch.schedule(0.7, 2)
    finished, _ = sch.update_from_output(out, 2, 1, 0.8)
    assert finished == [a] and a.num_output_tokens == 3
    assert not sch.running and a.slot == -1
    kv.free(a)
    assert kv.num_free_blocks == 8
    np.testing.assert_array_equal(sch.decode_blocks, 0)
