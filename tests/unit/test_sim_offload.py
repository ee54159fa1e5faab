"""The host KV tier (vLLM's native CPU offloading) against worked examples: capacity, store as computed
(prompt blocks only), LRU eviction, the load path on a GPU miss, bandwidth-limited timing, its metrics; and the
DES arms with a zero-size tier equal to the plain arms exactly."""

from __future__ import annotations

import pytest

from harness.sim.des import DesError, run_des
from harness.sim.engine import Engine, HostKVTier, HostLink, Request, SegmentSeq, Status, render_metrics
from harness.sim.timing import StepTimeModel, load_profile
from harness.workload import Trajectory, Turn

TM = StepTimeModel(0.01, 1e-4, 1e-3, 1e-6)
# 1,000 B per token per GPU, 2 GPUs, 1 MB/s per GPU: a 4-token block moves in 4 ms, 8 KB on both GPUs together
LINK = HostLink(kv_bytes_per_token_per_gpu=1000.0, num_gpus=2, bandwidth_bytes_per_s=1e6)


def tier(blocks: int) -> HostKVTier:
    return HostKVTier(blocks, 4, LINK)


# --- the tier alone ---------------------------------------------------------------------------------


def test_capacity_in_blocks_from_gib_over_all_gpus() -> None:
    # GLM-4.6-FP8 at TP8: 23,552 B per token per GPU x 8 GPUs x 16 tokens = 3,014,656 B per block
    glm = load_profile("glm4.6-8xh100").host_link()
    assert glm.kv_bytes_per_token_per_gpu == 23552 and glm.num_gpus == 8
    assert glm.capacity_blocks(256, 16) == 256 * 2**30 // 3_014_656 == 91_180
    assert glm.capacity_blocks(0, 16) == 0
    assert LINK.capacity_blocks(1 / 1024, 4) == 131  # 1 MiB / 8,000 B
    with pytest.raises(ValueError):
        LINK.capacity_blocks(-1, 4)


def test_transfer_time_is_bytes_per_gpu_over_bandwidth() -> None:
    assert LINK.transfer_s(4) == pytest.approx(0.004)
    glm = load_profile("glm4.6-8xh100").host_link()
    # a 30,000-token prefix: 706.6 MB per GPU over 52 GB/s = 13.6 ms (a re-prefill of it costs seconds)
    assert glm.transfer_s(30_000) == pytest.approx(30_000 * 23552 / 52e9)
    assert glm.bandwidth_bytes_per_s == 52e9 and "PCIe Gen5" in glm.source


def test_store_reuse_and_lru_eviction_order() -> None:
    t = tier(3)
    assert t.store([1, 2]) == 2
    assert t.stats.store_bytes == 2 * 8000 and t.stats.store_time == pytest.approx(0.008)
    assert t.store([1]) == 0  # held: a reuse, 1 becomes the most recent; nothing moves over PCIe
    assert t.stats.store_bytes == 2 * 8000
    assert t.store([3, 4]) == 2  # one over capacity: the least recently used (2) goes
    assert list(t.lru) == [1, 3, 4] and t.stats.evicted_blocks == 1
    assert t.lookup([1, 3, 4, 2], 0, 4) == 3 and t.lookup([2, 1], 0, 2) == 0  # up to the first miss


def test_a_store_that_would_evict_its_own_offer_fails_whole() -> None:
    t = tier(2)
    t.store([1, 2])
    assert t.store([1, 2, 3]) == 0  # 3 fits only by evicting 1 or 2, which this offer holds
    assert list(t.lru) == [1, 2] and t.stats.allocation_failures == 1
    z = tier(0)
    assert z.store([5]) == 0 and len(z) == 0 and z.stats.allocation_failures == 1


def test_loads_queue_on_the_host_to_gpu_direction_and_refresh_recency() -> None:
    t = tier(4)
    t.store([1, 2, 3])
    assert t.load([1, 2], now=1.0) == pytest.approx(1.008)
    assert t.load([3], now=1.002) == pytest.approx(1.012)  # waits for the first load to finish
    assert t.load([3], now=2.0) == pytest.approx(2.004)  # idle link: starts at once
    assert list(t.lru) == [1, 2, 3] and t.stats.loads == 3
    assert t.stats.load_bytes == 4 * 8000 and t.stats.load_time == pytest.approx(0.016)


# --- in the engine ----------------------------------------------------------------------------------


def make_engine(blocks: int, host_blocks: int | None, **kw: object) -> Engine:
    host = None if host_blocks is None else HostKVTier(host_blocks, 4, LINK)
    return Engine(block_size=4, num_gpu_blocks=blocks, max_num_batched_tokens=64, max_num_seqs=8, timing=TM,
                  host=host, **kw)  # type: ignore[arg-type]


def run(e: Engine, t: float = 0.0) -> tuple[float, list[Request]]:
    done: list[Request] = []
    for _ in range(10_000):
        if not e.has_work():
            return t, done
        r = e.step(t, 0.0)
        if r.steps:
            t += r.duration
            done += r.finished
        else:  # waiting on a load: jump to when it lands
            nxt = e.next_wakeup()
            assert nxt is not None and nxt > t
            t = nxt
    raise AssertionError("engine did not drain")


def test_prompt_blocks_are_stored_as_computed_decode_blocks_are_not() -> None:
    e = make_engine(blocks=40, host_blocks=100)
    seq = SegmentSeq(4, [(1, 10), (2, 30)])
    a = Request("a", seq, 10, 9, 0.0)  # prompt 10 tokens = 2 full blocks; output fills 2 more
    e.add_request(a)
    run(e)
    assert e.host is not None
    assert list(e.host.lru) == seq.hash_list()[:2]  # offload_prompt_only (vLLM's default)
    assert e.host.stats.store_bytes == 2 * 8000


def _prime(e: Engine) -> tuple[SegmentSeq, float]:
    """Program P's turn 1 (24 tokens) runs; then a request as large as the whole GPU pool (8 usable blocks of
    4 tokens) evicts all of P's blocks from it."""
    p = SegmentSeq(4, [(1, 24), (2, 8), (3, 100)])
    e.add_request(Request("p1", p, 24, 1, 0.0))
    t, _ = run(e)
    e.add_request(Request("x", SegmentSeq(4, [(9, 40)]), 31, 1, t))
    t, _ = run(e, t)
    assert e.pool.lookup(p.hash_list(), p.hashes_upto(6), 0, 6).size == 0  # P's prefix left the GPU
    return p, t


def _evict_then_return(host_blocks: int | None) -> tuple[Engine, Request, float]:
    """After _prime, P's turn 2 (turn 1 + 4 new tokens) arrives."""
    e = make_engine(blocks=9, host_blocks=host_blocks)
    p, t = _prime(e)
    p2 = Request("p2", p, 28, 1, t)
    e.add_request(p2)
    t_end, done = run(e, t)
    assert done == [p2]
    return e, p2, t_end - t


def test_gpu_miss_host_hit_loads_instead_of_recomputing() -> None:
    e0, r0, dur0 = _evict_then_return(None)
    e1, r1, dur1 = _evict_then_return(100)
    assert r0.num_cached_tokens == 0  # without the tier: all 28 tokens recomputed
    assert r1.num_cached_tokens == 24  # the 6 prompt blocks of turn 1 came back from host memory
    assert e1.host is not None
    st = e1.host.stats
    assert st.loads == 1 and st.load_bytes == 6 * 8000 and st.load_time == pytest.approx(0.024)
    assert st.external_hits == 24 and st.external_queries == 24 + 31 + 28  # p1, x, p2: each past 0 GPU hits
    assert e1.stats.prefix_cache_hits == e0.stats.prefix_cache_hits  # GPU hits are counted apart
    # the loaded request computed 4 tokens instead of 28, after waiting for its 24 ms load (the engine had
    # nothing else to run meanwhile)
    assert dur1 == pytest.approx(0.024 + TM.step_time(4, 0, 0, 4 * 24 + 10), abs=1e-9)
    assert dur0 == pytest.approx(TM.step_time(28, 0, 0, 28 * 29 // 2), abs=1e-9)


def test_a_load_overlaps_other_requests_steps() -> None:
    """While one request's prefix is in flight the engine keeps stepping the others (vLLM's worker copies on
    its own stream); the loading request counts as waiting and holds its blocks."""
    e = make_engine(blocks=9, host_blocks=100)
    p, t = _prime(e)
    e.add_request(Request("p2", p, 28, 1, t))
    e.add_request(Request("y", SegmentSeq(4, [(7, 40)]), 4, 3, t))
    r = e.step(t, 0.0)  # p2 starts its load, y is admitted and steps
    assert r.steps == 1 and e.num_running == 1 and e.num_waiting == 1
    _ready, _n, loading = e.scheduler.loading[0]
    assert loading.request_id == "p2" and loading.nblocks == 6 and loading.status is Status.WAITING
    assert e.next_wakeup() == pytest.approx(t + 0.024)
    _t2, done = run(e, t + r.duration)
    assert {d.request_id for d in done} == {"p2", "y"}


def test_abort_while_loading_frees_the_blocks() -> None:
    e = make_engine(blocks=9, host_blocks=100)
    p, t = _prime(e)
    p2 = Request("p2", p, 28, 1, t)
    e.add_request(p2)
    e.step(t, 0.0)
    assert e.pool.num_free == 2 and e.scheduler.loading
    e.abort(p2, t)
    assert e.pool.num_free == 8 and not e.has_work() and p2.status is Status.ABORTED


def test_zero_capacity_tier_is_exactly_no_tier() -> None:
    def drive(host_blocks: int | None) -> list:
        e = make_engine(blocks=16, host_blocks=host_blocks)
        out = []
        t = 0.0
        for i in range(30):
            prog = i % 5
            e.add_request(Request(f"r{i}", SegmentSeq(4, [(0, 12), (100 + prog, 40), (500 + i, 40)]),
                                  20 + (i * 7) % 30, 1 + i % 6, t))
            t, done = run(e, t)
            out += [(r.request_id, round(r.finish_time or 0, 12), r.num_cached_tokens) for r in done]
        return out + [(e.stats.prefix_cache_hits, e.stats.num_preemptions, e.num_steps)]

    assert drive(0) == drive(None)


def test_host_series_in_the_metrics_text() -> None:
    e, _r, _d = _evict_then_return(100)
    text = render_metrics(e.stats, model_name="m", num_running=0, num_waiting=0, kv_cache_usage=0.0, block_size=4,
                          num_gpu_blocks=9, num_gpu_blocks_override=None, max_num_seqs=8, host=e.host)
    assert 'vllm:kv_offload_load_bytes_total{engine="0",model_name="m"} 48000.0' in text
    assert 'vllm:external_prefix_cache_hits_total{engine="0",model_name="m"} 24.0' in text
    assert "thunderbench_sim_kv_offload_host_usage_perc" in text and "Simulator only" in text
    plain = render_metrics(e.stats, model_name="m", num_running=0, num_waiting=0, kv_cache_usage=0.0, block_size=4,
                           num_gpu_blocks=9, num_gpu_blocks_override=None, max_num_seqs=8)
    assert "kv_offload" not in plain


# --- DES arms -----------------------------------------------------------------------------------------


def trajs(n: int = 6) -> list[Trajectory]:
    return [Trajectory(f"i{i}", 2000, 300 + 50 * i, 5.0 + i, tuple(Turn(200 + 10 * k, 150, 2.0 + k % 3)
                                                                   for k in range(8))) for i in range(n)]


@pytest.mark.parametrize("arm", ["vllm", "thunderagent"])
def test_des_offload_arm_with_zero_gib_equals_the_plain_arm_exactly(arm: str) -> None:
    common = dict(programs=6, duration_s=900, trajectories=trajs(), seed=0, num_gpu_blocks=700)  # KV pressure
    plain = run_des("glm4.6-8xh100", arm=arm, **common)  # type: ignore[arg-type]
    zero = run_des("glm4.6-8xh100", arm=arm + "-offload", kv_offload_gib=0, **common)  # type: ignore[arg-type]
    key = [(s.program_id, s.step, s.end, s.prompt_tokens, s.cached_tokens) for s in plain.steps]
    assert key == [(s.program_id, s.step, s.end, s.prompt_tokens, s.cached_tokens) for s in zero.steps]
    assert plain.summary()["preemptions"] > 0 or arm == "thunderagent"
    for a, b in zip(plain.metrics, zero.metrics):
        assert a == {k: v for k, v in b.items() if k in a}
    assert zero.summary()["host_hit_rate"] == 0.0
    # and a real tier changes the run (the same pressure, 16 GiB of host memory: 5,700 blocks)
    some = run_des("glm4.6-8xh100", arm=arm + "-offload", kv_offload_gib=16, **common)  # type: ignore[arg-type]
    if arm == "vllm":
        assert some.summary()["host_hit_rate"] > 0


def test_des_offload_arm_needs_a_size_and_a_profile_that_can_offload() -> None:
    with pytest.raises(DesError, match="host-tier size"):
        run_des("glm4.6-8xh100", arm="vllm-offload", programs=1, duration_s=10)
    with pytest.raises(DesError, match=r"\[offload\]"):
        run_des("tiny-cpu", arm="vllm-offload", kv_offload_gib=1, programs=1, duration_s=10)


def test_live_sim_server_uses_the_same_tier_and_exports_its_series() -> None:
    import httpx

    from harness.sim.server import serve_in_thread

    with serve_in_thread("glm4.6-8xh100", kv_offload_gib=256) as url:
        text = httpx.get(url + "/metrics", timeout=10).text
    assert "vllm:kv_offload_load_bytes_total" in text
    assert 'thunderbench_sim_kv_offload_host_blocks{engine="0",model_name="glm4.6-8xh100"} 91180.0' in text


def test_a_load_is_admitted_only_if_it_fits_beside_the_reservations_of_loads_in_flight() -> None:
    """vLLM gates an async load on free blocks less what the loads in flight still need to finish."""
    e = make_engine(blocks=8, host_blocks=100)  # 7 usable GPU blocks
    assert e.host is not None
    seqs = [SegmentSeq(4, [(k, 40)]) for k in (1, 2)]
    for s in seqs:  # 3 prompt blocks of each in host memory, none on the GPU
        s.hashes_upto(3)
        e.host.store(s.hash_list()[:3])
    p, q = (Request(n, s, 16, 1, 0.0) for n, s in zip("pq", seqs))  # 16 tokens: 4 blocks each, 3 loadable
    e.add_request(p)
    e.add_request(q)
    e.step(0.0, 0.0)
    # p loads 3 blocks and still needs 1: q's 4 + that 1 exceed the 4 free blocks, so q waits
    assert [x[2].request_id for x in e.scheduler.loading] == ["p"]
    assert e.pool.num_free == 4 and list(e.scheduler.waiting) == [q]
    _t, done = run(e, 0.0)
    assert {r.request_id for r in done} == {"p", "q"}
    assert e.host.stats.loads == 2 and p.num_cached_tokens == q.num_cached_tokens == 12


@pytest.mark.parametrize("seed", [1, 2])
def test_skip_ahead_stays_exact_with_the_tier(seed: int) -> None:
    """Runs of decode steps advanced in one go stop at the next load landing: the same timeline, hits, loads
    and preemptions as stepping one by one."""
    import random

    def drive(skip: bool) -> list:
        rng = random.Random(seed)
        e = Engine(block_size=4, num_gpu_blocks=16, max_num_batched_tokens=48, max_num_seqs=12, timing=TM,
                   skip_ahead=skip, host=HostKVTier(60, 4, LINK))
        pending, t = [], 0.0
        for i in range(40):
            t += rng.expovariate(20.0)
            prog = rng.randrange(6)
            pending.append((t, [(0, 12), (1000 + prog, 30), (5000 + i, 200)], rng.randrange(5, 30),
                            rng.randrange(1, 13)))
        t, reqs = 0.0, []
        while pending or e.has_work():
            while pending and pending[0][0] <= t:
                at, segs, p, g = pending.pop(0)
                reqs.append(Request(f"r{len(reqs)}", SegmentSeq(4, segs), p, g, at))
                e.add_request(reqs[-1])
            nxt = pending[0][0] if pending else 1e9
            if e.has_work():
                res = e.step(t, nxt - t)
                if res.steps:
                    t += res.duration
                    continue
                w = e.next_wakeup()
                nxt = min(nxt, w) if w is not None else nxt
            t = nxt
        assert e.host is not None
        return [(r.request_id, round(r.finish_time or 0, 9), r.num_cached_tokens) for r in reqs] + [
            (e.stats.prefix_cache_hits, e.stats.num_preemptions, e.host.stats.loads, e.num_steps)]

    fast, slow = drive(True), drive(False)
    assert fast == slow
    assert fast[-1][2] > 0  # loads happened
