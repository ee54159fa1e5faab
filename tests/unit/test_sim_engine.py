"""The vLLM-v1 engine model: block pool, prefix hashing, LRU eviction order, preemption, token budget,
chunked prefill, prefix-hit accounting, skip-ahead equivalence and Continuum pinning."""

from __future__ import annotations

import random

import numpy as np
import pytest

from harness.sim.engine import BlockPool, Engine, IdSeq, Request, SegmentSeq, Status
from harness.sim.timing import StepTimeModel

TM = StepTimeModel(0.01, 1e-4, 1e-3, 1e-6)


def make_engine(blocks: int = 20, bs: int = 4, budget: int = 16, seqs: int = 8, **kw: object) -> Engine:
    return Engine(block_size=bs, num_gpu_blocks=blocks, max_num_batched_tokens=budget, max_num_seqs=seqs,
                  timing=TM, **kw)  # type: ignore[arg-type]


def req(rid: str, segs: list[tuple[int, int]], prompt: int, out: int, bs: int = 4, t: float = 0.0,
        **kw: object) -> Request:
    seq = SegmentSeq(bs, segs)
    assert seq.length >= prompt + out
    return Request(rid, seq, prompt, out, t, **kw)  # type: ignore[arg-type]


def run_all(e: Engine, horizon: float = 1e9, t: float = 0.0, limit: int = 100000) -> tuple[float, list[Request]]:
    done: list[Request] = []
    for _ in range(limit):
        if not e.has_work():
            break
        r = e.step(t, horizon)
        assert r.steps > 0
        t += r.duration
        done += r.finished
    return t, done


# --- block pool -----------------------------------------------------------------------------------


def test_null_block_is_never_allocated_and_usage_counts_usable_blocks() -> None:
    p = BlockPool(5)
    assert p.get_num_free_blocks() == 4
    got = p.get_new_blocks(4).tolist()
    assert got == [1, 2, 3, 4]
    assert p.usage() == 1.0
    with pytest.raises(ValueError):
        p.get_new_blocks(1)


def test_free_order_reverse_hashed_to_back_unhashed_to_front() -> None:
    p = BlockPool(8)
    a = p.get_new_blocks(3)  # 1 2 3
    hs = np.array([11, 12, 13], dtype=np.int64)
    p.cache_blocks(a, hs, hs.tolist(), 0, 2)  # blocks 1, 2 full and hashed; 3 is a partial tail
    p.free_blocks(a[::-1])
    order = p.free_queue_order()
    # the unhashed tail goes to the front; the hashed ones to the back, tail (2) before head (1)
    assert order[0] == 3
    assert order[-2:] == [2, 1]
    # eviction: popping everything up to block 2 evicts hash 12 but keeps 11
    n_before = order.index(2) + 1
    p.get_new_blocks(n_before)
    assert p.get_cached_block(12) is None
    assert p.get_cached_block(11) == 1


def test_all_to_back_variant() -> None:
    p = BlockPool(8, unhashed_to_front=False)
    a = p.get_new_blocks(2)
    hs = np.array([5, 6], dtype=np.int64)
    p.cache_blocks(a, hs, hs.tolist(), 0, 1)
    p.free_blocks(a[::-1])
    assert p.free_queue_order()[-2:] == [2, 1]


def test_touch_takes_block_out_of_free_queue_and_ref_counts() -> None:
    p = BlockPool(6)
    a = p.get_new_blocks(2)
    hs = np.array([7, 8], dtype=np.int64)
    p.cache_blocks(a, hs, hs.tolist(), 0, 2)
    p.free_blocks(a[::-1])
    assert p.num_free == 5
    p.touch(np.array([1], dtype=np.int32))
    assert p.num_free == 4 and 1 not in p.free_queue_order()
    p.touch(np.array([1], dtype=np.int32))  # a second user
    assert p.ref[1] == 2
    p.free_blocks(np.array([1], dtype=np.int32))
    assert 1 not in p.free_queue_order()
    p.free_blocks(np.array([1], dtype=np.int32))
    assert p.free_queue_order()[-1] == 1  # most recently freed: evicted last
    # popping all free blocks never returns a block twice (stale queue entries are skipped)
    got = p.get_new_blocks(p.num_free).tolist()
    assert sorted(got) == [1, 2, 3, 4, 5]


def test_queue_compaction_keeps_order() -> None:
    p = BlockPool(6)
    for i in range(3000):  # many touch/free cycles leave stale entries behind
        b = p.get_new_blocks(1)
        hs = np.array([100 + i], dtype=np.int64)
        p.cache_blocks(b, hs, hs.tolist(), 0, 1)
        p.free_blocks(b)
        p.touch(b)
        p.free_blocks(b)
    order = p.free_queue_order()
    assert sorted(order) == [1, 2, 3, 4, 5] and p.num_free == 5


# --- prefix hashing -------------------------------------------------------------------------------


def test_segment_hashes_equal_exactly_for_equal_token_ranges() -> None:
    a = SegmentSeq(4, [(0, 10), (101, 7)])
    b = SegmentSeq(4, [(0, 10), (202, 7)])
    ha, hb = a.hashes_upto(4)[:4], b.hashes_upto(4)[:4]
    assert ha[0] == hb[0] and ha[1] == hb[1]  # tokens 0..7: shared system segment
    assert ha[2] != hb[2] and ha[3] != hb[3]  # block 2 straddles into the program's own segment
    # chaining: identical content after a different parent gives a different hash
    c = SegmentSeq(4, [(1, 4), (0, 8)])
    d = SegmentSeq(4, [(0, 8)])
    assert c.hashes_upto(2)[1] != d.hashes_upto(2)[1]


def test_append_only_sequence_matches_one_built_at_once() -> None:
    inc = SegmentSeq(16, [(0, 50)])
    h1 = inc.hashes_upto(3)[:3].copy()
    inc.append(7, 30)
    inc.append(9, 45)
    whole = SegmentSeq(16, [(0, 50), (7, 30), (9, 45)])
    assert list(inc.hashes_upto(7)[:7]) == list(whole.hashes_upto(7)[:7])
    assert list(h1) == list(whole.hashes_upto(3)[:3])
    with pytest.raises(ValueError):
        inc.hashes_upto(9)  # only 125 tokens


def test_id_seq_hashes_token_lists() -> None:
    a = IdSeq(4, [1, 2, 3, 4, 5, 6, 7, 8, 9])
    b = IdSeq(4, [1, 2, 3, 4, 5, 6, 7, 0])
    assert a.hashes_upto(2)[0] == b.hashes_upto(2)[0]
    assert a.hashes_upto(2)[1] != b.hashes_upto(2)[1]


# --- scheduling -----------------------------------------------------------------------------------


def test_prefix_hits_counted_once_per_request_capped_at_num_tokens_minus_one() -> None:
    e = make_engine(blocks=30, budget=64)
    r1 = req("a", [(0, 8), (1, 5)], 8, 5)
    e.add_request(r1)
    run_all(e)
    assert e.stats.prefix_cache_queries == 8 and e.stats.prefix_cache_hits == 0
    # identical 8-token prompt: 2 full blocks cached, but at most 7 tokens may hit -> 1 block
    r2 = req("b", [(0, 8), (2, 4)], 8, 4)
    e.add_request(r2)
    run_all(e)
    assert r2.num_cached_tokens == 4
    assert e.stats.prefix_cache_queries == 16 and e.stats.prefix_cache_hits == 4
    # a continuation (prompt = previous prompt + output + more) hits the previous blocks, output included
    # r1 computed 8 + 4 of its 5 output tokens (the last sampled token never enters the KV cache)
    r3 = req("c", [(0, 8), (1, 5), (3, 5), (4, 2)], 18, 2)
    e.add_request(r3)
    run_all(e)
    assert r3.num_cached_tokens == 12  # 3 full blocks: 8 prompt + 4 output tokens of r1
    assert e.stats.prompt_tokens == 8 + 8 + 18
    assert e.stats.generation_tokens == 5 + 4 + 2
    assert e.stats.request_success == 3


def test_token_budget_and_chunked_prefill() -> None:
    e = make_engine(blocks=40, budget=10, seqs=8)
    a = req("a", [(1, 23), (2, 3)], 23, 3)
    b = req("b", [(3, 5), (4, 3)], 5, 3)
    e.add_request(a)
    e.add_request(b)
    r = e.step(0.0)
    assert a.num_computed_tokens == 10 and b.num_computed_tokens == 0  # a took the whole budget
    assert r.first_tokens == []
    e.step(0.0)
    assert a.num_computed_tokens == 20 and e.num_waiting == 1
    r = e.step(0.0)  # a: last 3 tokens -> first output; b admitted with the 7 remaining budget tokens
    assert a in r.first_tokens and b in r.first_tokens
    assert b.num_computed_tokens == 5
    # step time charges uncached prefill tokens: 3 + 5
    assert r.duration == pytest.approx(TM.step_time(8, 0, 0))


def test_max_num_seqs_limits_admission() -> None:
    e = make_engine(blocks=40, budget=16, seqs=2)
    rs = [req(f"r{i}", [(10 + i, 2), (20 + i, 5)], 2, 5) for i in range(3)]
    for r in rs:
        e.add_request(r)
    e.step(0.0)
    assert e.num_running == 2 and e.num_waiting == 1


def test_preemption_of_newest_running_request_and_no_admission_in_that_step() -> None:
    # 5 usable blocks of 4 tokens; three 3-token prompts that grow to 11 tokens each
    e = make_engine(blocks=6, bs=4, budget=32, seqs=8)
    rs = [req(f"r{i}", [(10 + i, 3), (20 + i, 8)], 3, 8) for i in range(3)]
    for r in rs:
        e.add_request(r)
    e.step(0.0, 0.0)
    assert e.num_running == 3 and e.pool.num_free == 2
    late = req("late", [(99, 2), (98, 2)], 2, 2)
    e.add_request(late)
    seen = 0
    for _ in range(200):
        if not e.has_work():
            break
        before = list(e.scheduler.running)
        max_seq = max((r.seqno for r in before), default=0)
        res = e.step(0.0, 0.0)
        if res.preempted:
            seen += 1
            # victims are taken from the end of the running list (newest admitted first)
            assert res.preempted == before[len(before) - len(res.preempted):][::-1]
            # ... pushed to the FRONT of the waiting queue with their computed tokens reset
            assert e.scheduler.waiting[0] is res.preempted[-1]
            assert all(v.num_computed_tokens == 0 and v.status is Status.PREEMPTED for v in res.preempted)
            # ... and nothing was admitted in that step
            assert all(r.seqno <= max_seq for r in e.scheduler.running)
    assert seen >= 1 and e.stats.num_preemptions >= seen
    assert all(r.num_output_tokens == r.max_tokens for r in (*rs, late))
    # re-admissions after preemption are not counted again in the prefix-cache queries
    assert e.stats.prefix_cache_queries == 3 * 3 + 2
    assert e.stats.request_success == 4


def test_preempted_request_recomputes_only_evicted_blocks() -> None:
    e = make_engine(blocks=7, bs=4, budget=64, seqs=8)
    a = req("a", [(1, 8), (2, 12)], 8, 12)
    b = req("b", [(3, 8), (4, 12)], 8, 12)
    e.add_request(a)
    e.add_request(b)
    _t, done = run_all(e, horizon=0.0)
    assert len(done) == 2
    assert e.stats.num_preemptions >= 1
    victim = b if b.num_preemptions else a
    assert victim.num_preemptions >= 1
    # it was re-admitted with at least part of its prefix still cached (its freed blocks went to the back)
    assert e.stats.iteration_tokens.total < (8 + 12) * 2 * 3


def _random_workload(seed: int, n: int = 40) -> list[tuple[float, list[tuple[int, int]], int, int]]:
    rng = random.Random(seed)
    out = []
    t = 0.0
    for i in range(n):
        t += rng.expovariate(20.0)
        prog = rng.randrange(6)
        prompt = rng.randrange(5, 30)
        gen = rng.randrange(1, 13)
        segs = [(0, 12), (1000 + prog, 30), (5000 + i, 200)]
        out.append((t, segs, prompt, gen))
    return out


def _drive(workload: list[tuple[float, list[tuple[int, int]], int, int]], skip: bool, blocks: int = 40) -> list[tuple]:
    e = Engine(block_size=4, num_gpu_blocks=blocks, max_num_batched_tokens=48, max_num_seqs=12, timing=TM,
               skip_ahead=skip)
    pending = list(workload)
    t = 0.0
    reqs = []
    while pending or e.has_work():
        while pending and pending[0][0] <= t:
            at, segs, p, g = pending.pop(0)
            r = Request(f"r{len(reqs)}", SegmentSeq(4, segs), p, g, at)
            reqs.append(r)
            e.add_request(r)
        nxt = pending[0][0] if pending else 1e9
        if e.has_work():
            res = e.step(t, nxt - t)
            if res.steps:
                t += res.duration
                continue
        t = nxt
    st = e.stats
    return [(r.request_id, round(r.finish_time, 9), r.num_cached_tokens, r.num_preemptions) for r in reqs] + [
        (st.prefix_cache_queries, st.prefix_cache_hits, st.num_preemptions, st.generation_tokens, st.prompt_tokens,
         e.num_steps)]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
@pytest.mark.parametrize("blocks", [14, 40])
def test_skip_ahead_is_exact(seed: int, blocks: int) -> None:
    """Runs of identical decode steps advanced in one go give the same timeline, hits and preemptions as
    stepping one by one (also under KV pressure, where preemptions happen)."""
    w = _random_workload(seed)
    fast, slow = _drive(w, True, blocks), _drive(w, False, blocks)
    assert fast == slow
    if blocks == 14:
        assert fast[-1][2] > 0  # the small cache really preempts


def test_engine_rejects_impossible_requests() -> None:
    e = make_engine(blocks=4, bs=4)
    with pytest.raises(ValueError):
        e.add_request(req("x", [(1, 30)], 20, 5))  # 25 tokens > 3 usable blocks
    with pytest.raises(ValueError):
        e.add_request(Request("y", SegmentSeq(4, [(1, 5)]), 4, 3, 0.0))  # sequence too short
    with pytest.raises(ValueError):
        Engine(block_size=4, num_gpu_blocks=8, max_num_batched_tokens=4, max_num_seqs=8, timing=TM)


def test_abort_frees_blocks() -> None:
    e = make_engine(blocks=20)
    a = req("a", [(1, 8), (2, 20)], 8, 20)
    e.add_request(a)
    e.step(0.0)
    e.step(0.0)
    assert e.pool.num_free < 19
    e.abort(a, 1.0)
    assert e.pool.num_free == 19 and not e.has_work() and a.status is Status.ABORTED


# --- Continuum pinning ----------------------------------------------------------------------------


@pytest.mark.parametrize("pinned", [True, False])
def test_pinned_blocks_survive_pressure_until_ttl(pinned: bool) -> None:
    e = make_engine(blocks=9, bs=4, budget=64)  # 8 usable blocks
    a = req("a", [(1, 12), (2, 4), (3, 20)], 12, 4, program_id="p", pin_ttl=5.0 if pinned else None)
    e.add_request(a)
    t, _ = run_all(e)
    assert ("p" in e.pins) == pinned
    # two other programs run one after the other, 4 blocks each: without the pin the second one's
    # allocations reach a's cached blocks in the free queue (LRU) and evict them
    for name, key in (("f", 50), ("b", 60)):
        other = req(name, [(key, 12), (key + 1, 4)], 12, 4)
        e.add_request(other)
        t, _ = run_all(e, t=t)
    cont = req("a2", [(1, 12), (2, 4), (3, 20)], 20, 2, program_id="p")
    e.add_request(cont)
    t, _ = run_all(e, t=t)
    # a computed 15 tokens: 3 full blocks (the 4th holds 3 tokens and was never hashed)
    assert cont.num_cached_tokens == (12 if pinned else 4)
    assert "p" not in e.pins  # the program's next call took the blocks over
    d = req("d", [(1, 12), (2, 4), (3, 20)], 12, 2, program_id="q", pin_ttl=1.0)
    e.add_request(d)
    t, _ = run_all(e, t=t)
    assert "q" in e.pins
    e.expire_pins(t + 2.0)
    assert "q" not in e.pins and e.stats.pin_expiries == 1
    assert e.pool.num_free == 8


def test_frontend_work_is_charged_to_the_engine_clock_once_per_request_and_per_token() -> None:
    """A profile measured on shared cores charges the API server's work: per new request (not again after a
    preemption) and per output token; runs of identical steps charge exactly what single steps do."""
    from dataclasses import replace as dc_replace

    fe = dc_replace(TM, frontend_request_s=0.5, frontend_token_s=0.01)
    totals = []
    for timing in (TM, fe):
        for skip in (True, False):
            eng = Engine(block_size=16, num_gpu_blocks=64, max_num_batched_tokens=512, max_num_seqs=8,
                         timing=timing, skip_ahead=skip)
            for i in range(3):
                eng.add_request(Request(f"r{i}", IdSeq(16, [1000 * i + j for j in range(100 + 20)]), 100, 20, 0.0))
            t = 0.0
            while eng.has_work():
                res = eng.step(t, 10.0)
                t += res.duration
            totals.append(t)
    base, base_single, with_fe, with_fe_single = totals
    assert base == pytest.approx(base_single) and with_fe == pytest.approx(with_fe_single)
    assert with_fe - base == pytest.approx(3 * 0.5 + 3 * 20 * 0.01)  # 3 requests, 60 output tokens
