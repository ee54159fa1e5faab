"""Unit tests of the cost-aware tr limits on a fake clock: the overcommit factor follows the
full-thrash recompute share (prompt tokens/s × prefill s/token) against --cost-recompute-budget."""

from __future__ import annotations

import pytest

from ThunderAgent.cli import validate
from ThunderAgent.config import Config
from ThunderAgent.policy import make_policy
from ThunderAgent.policy.base import Proceed, Resume, Wait
from ThunderAgent.policy.capacity import CapacityPolicy
from ThunderAgent.policy.limits import CostAwareLimits, FixedLimits, make_limits

URL = "http://b1"


def counters(prompt: float, hits: float = 0.0, prefill_s: float = 0.0, prefills: float = 0.0,
             preempt: float = 0.0) -> dict[str, float]:
    return {"vllm:prompt_tokens_total": prompt, "vllm:prefix_cache_hits_total": hits,
            "vllm:request_prefill_time_seconds_sum": prefill_s,
            "vllm:request_prefill_time_seconds_count": prefills, "vllm:num_preemptions_total": preempt}


def feed(lim: CostAwareLimits, rate: float, seconds: int, start: float = 0.0, t0: float = 0.0) -> float:
    """`seconds` one-second scrapes at `rate` prompt tokens/s; returns the cumulative prompt count."""
    total = start
    for i in range(seconds):
        lim.observe(URL, counters(total), t0 + i)
        total += rate
    return total


def test_make_limits_builds_each_mode_and_refuses_unknown():
    assert isinstance(make_limits(Config(tr_mode="fixed").policy_settings()), FixedLimits)
    assert isinstance(make_limits(Config(tr_mode="cost-aware").policy_settings()), CostAwareLimits)
    with pytest.raises(ValueError, match="--tr-mode"):
        validate(Config(tr_mode="bogus"))


@pytest.mark.parametrize("kw,msg", [
    ({"cost_recompute_budget": 0.0}, "--cost-recompute-budget"),
    ({"cost_max_overcommit": 0.5}, "--cost-max-overcommit"),
    ({"cost_prefill_seconds_per_token": -1.0}, "--cost-prefill-seconds-per-token"),
    ({"cost_half_life": 0.0}, "--cost-half-life"),
])
def test_bad_cost_knobs_name_their_flag(kw, msg):
    with pytest.raises(ValueError, match=msg):
        validate(Config(tr_mode="cost-aware", **kw))


def test_starts_as_the_fixed_rule_before_any_evidence():
    lim = CostAwareLimits(1.0, 0.95, budget=0.5, max_overcommit=4.0, prefill_seconds_per_token=1e-5)
    assert lim.high(URL, 10_000) == 10_000 and lim.low(URL, 10_000) == 9_500
    lim.observe(URL, counters(0), 0.0)  # one scrape: no delta yet
    assert lim.overcommit(URL) == 1.0


def test_cheap_recompute_relaxes_the_limits_up_to_the_cap_at_most_doubling_per_scrape():
    # 1,000 prompt tokens/s × 1e-4 s/token = 10% of the engine: losing the cache is cheap (half-life 1: one
    # observation under the budget is sustained evidence here)
    lim = CostAwareLimits(1.0, 0.95, budget=0.5, max_overcommit=4.0, prefill_seconds_per_token=1e-4, half_life=1.0)
    lim.observe(URL, counters(0), 0.0)
    lim.observe(URL, counters(1_000), 1.0)
    assert lim.overcommit(URL) == 2.0  # target 5x, but one doubling per observation
    lim.observe(URL, counters(2_000), 2.0)
    assert lim.overcommit(URL) == 4.0  # capped at --cost-max-overcommit
    assert lim.high(URL, 10_000) == 40_000 and lim.low(URL, 10_000) == 38_000
    assert lim.engines[URL].share == pytest.approx(0.1)


def test_expensive_recompute_keeps_the_fixed_rule_and_falls_back_after_relaxing():
    # a 355B model on 8xH100: 1e-5 s/token; 200K prompt tokens/s -> re-prefilling everything = 2x the engine
    lim = CostAwareLimits(1.0, 0.95, budget=0.5, max_overcommit=4.0, prefill_seconds_per_token=1e-5)
    feed(lim, 200_000, 5)
    assert lim.overcommit(URL) == 1.0
    # load drops (fewer programs): cheap again -> relax; load returns -> halve per scrape back to 1
    lim2 = CostAwareLimits(1.0, 0.95, budget=0.5, max_overcommit=4.0, prefill_seconds_per_token=1e-5,
                           half_life=0.5)
    total = feed(lim2, 1_000, 4)
    assert lim2.overcommit(URL) == 4.0
    feed(lim2, 400_000, 6, start=total, t0=4.0)
    assert lim2.overcommit(URL) == 1.0


def test_between_cheap_and_expensive_it_settles_where_share_meets_the_budget():
    lim = CostAwareLimits(1.0, 0.95, budget=0.5, max_overcommit=8.0, prefill_seconds_per_token=1e-4,
                          half_life=0.5)
    # the rate grows with the factor (more programs admitted): rate = 2,000 tokens/s per unit of overcommit
    total, t = 0.0, 0.0
    lim.observe(URL, counters(total), t)
    for _ in range(30):
        t += 1.0
        total += 2_000 * lim.overcommit(URL)
        lim.observe(URL, counters(total), t)
    # share = 0.2 × m -> budget 0.5 is met at m = 2.5
    assert lim.overcommit(URL) == pytest.approx(2.5, rel=0.1)


def test_counter_reset_is_ignored_not_a_negative_rate():
    lim = CostAwareLimits(1.0, 0.95, budget=0.5, max_overcommit=4.0, prefill_seconds_per_token=1e-4)
    feed(lim, 1_000, 3)
    m = lim.overcommit(URL)
    lim.observe(URL, counters(10), 3.0)  # engine restarted
    assert lim.overcommit(URL) == m
    lim.observe(URL, counters(10), 3.0)  # same timestamp: no delta
    assert lim.overcommit(URL) == m


def _histograms(lim: CostAwareLimits, windows: list[int], *, step: float, with_itl: bool,
                with_computed: bool) -> list[float | None]:
    """Feed one-second scrapes where each window's 4 requests compute `uncached` new prompt tokens (500 more
    are cached) and each request's prefill time is one engine step + 1e-5 s per computed token."""
    m = {k: 0.0 for k in ("vllm:prompt_tokens_total", "vllm:prefix_cache_hits_total",
                          "vllm:request_prefill_time_seconds_sum", "vllm:request_prefill_time_seconds_count",
                          "vllm:num_preemptions_total")}
    if with_itl:
        m.update({"vllm:inter_token_latency_seconds_sum": 0.0, "vllm:inter_token_latency_seconds_count": 0.0})
    if with_computed:
        m["vllm:request_prefill_kv_computed_tokens_sum"] = 0.0
    lim.observe(URL, dict(m), 0.0)
    learned = []
    for i, uncached in enumerate(windows, start=1):
        n = 4
        m["vllm:prompt_tokens_total"] += n * (uncached + 500)
        # prefix hits are counted per admission: a preempted request re-admitted adds hits again, so
        # prompt - hits under-counts what was computed; the computed-tokens histogram does not
        m["vllm:prefix_cache_hits_total"] += n * 500 + (300 if with_computed else 0)
        m["vllm:request_prefill_time_seconds_sum"] += n * (step + 1e-5 * uncached)
        m["vllm:request_prefill_time_seconds_count"] += n
        if with_itl:
            m["vllm:inter_token_latency_seconds_sum"] += 100 * step  # 100 decode tokens, one step each
            m["vllm:inter_token_latency_seconds_count"] += 100
        if with_computed:
            m["vllm:request_prefill_kv_computed_tokens_sum"] += n * uncached
        lim.observe(URL, dict(m), float(i))
        learned.append(lim.prefill_seconds_per_token(URL))
    return learned


WINDOWS = [100, 800, 300, 1_200, 200, 600]


def test_prefill_cost_is_learned_as_the_marginal_cost_per_computed_token():
    """Each request's prefill time = one 20 ms engine step + 1e-5 s per computed token. Less one step (vLLM's
    mean inter-token latency) per request, over the tokens the requests computed, the learned figure is the
    true marginal 1e-5 — not the 2e-4 a request with 100 new tokens shows when the step is counted in — and it
    is only trusted after MIN_PREFILLS (16) requests: 4 windows of 4 here."""
    lim = CostAwareLimits(1.0, 0.95, budget=0.8, max_overcommit=4.0, half_life=1.0)
    learned = _histograms(lim, WINDOWS, step=0.02, with_itl=True, with_computed=True)
    assert learned[:3] == [None] * 3
    assert all(p == pytest.approx(1e-5, rel=1e-6) for p in learned[3:])
    # ~4 × 1,100 prompt tokens/s × 1e-5 s/token ≈ 0.04 of the engine: relaxed
    assert lim.overcommit(URL) > 1.0


def test_without_the_latency_histograms_the_step_stays_in_an_upper_bound():
    """An engine without inter-token latency (or the computed-tokens histogram) still yields a figure: prefill
    seconds per (prompt - hits) token, the step included — an upper bound, erring towards pausing."""
    lim = CostAwareLimits(1.0, 0.95, budget=0.8, max_overcommit=4.0)
    learned = _histograms(lim, WINDOWS, step=0.02, with_itl=False, with_computed=False)
    assert learned[-1] is not None and learned[-1] > 1e-5
    assert learned[-1] == pytest.approx(1e-5 + 0.02 * 6 / sum(WINDOWS), rel=0.2)


def test_a_noisy_step_never_makes_the_learned_cost_negative():
    lim = CostAwareLimits(1.0, 0.95, budget=0.8, max_overcommit=4.0, half_life=1.0)
    m = {"vllm:prompt_tokens_total": 0.0, "vllm:request_prefill_time_seconds_sum": 0.0,
         "vllm:request_prefill_time_seconds_count": 0.0, "vllm:inter_token_latency_seconds_sum": 0.0,
         "vllm:inter_token_latency_seconds_count": 0.0}
    for i in range(8):  # prefill time below the mean step (short prefills in small batches)
        lim.observe(URL, dict(m), float(i))
        m["vllm:prompt_tokens_total"] += 1_000
        m["vllm:request_prefill_time_seconds_sum"] += 4 * 0.001
        m["vllm:request_prefill_time_seconds_count"] += 4
        m["vllm:inter_token_latency_seconds_sum"] += 0.5
        m["vllm:inter_token_latency_seconds_count"] += 100
    assert lim.prefill_seconds_per_token(URL) == 0.0
    assert lim.overcommit(URL) == 4.0  # prefill looks free: admit up to the cap


def test_a_known_figure_wins_over_the_learned_upper_bound():
    lim = CostAwareLimits(1.0, 0.95, budget=0.5, max_overcommit=4.0, prefill_seconds_per_token=3e-5, half_life=1.0)
    for i in range(8):
        lim.observe(URL, counters(i * 4_000.0, 0.0, i * 40.0, i * 4.0), float(i))  # 10 ms/token measured
    assert lim.prefill_seconds_per_token(URL) == 3e-5
    assert lim.engines[URL].share == pytest.approx(4_000 * 3e-5, rel=0.05)
    assert lim.overcommit(URL) == 4.0


def test_learned_upper_bound_keeps_the_fixed_rule_when_prefill_looks_expensive():
    lim = CostAwareLimits(1.0, 0.95, budget=0.5, max_overcommit=4.0)
    for i in range(8):
        lim.observe(URL, counters(i * 4_000.0, 0.0, i * 40.0, i * 4.0), float(i))  # 10 ms/token: share 40
    assert lim.prefill_seconds_per_token(URL) == pytest.approx(1e-2)
    assert lim.overcommit(URL) == 1.0


def test_policy_admits_past_capacity_once_the_engine_shows_recompute_is_cheap():
    pol = make_policy(Config(backends=(URL,), tr_mode="cost-aware", cost_prefill_seconds_per_token=1e-5,
                             cost_half_life=1.0).policy_settings())
    assert isinstance(pol, CapacityPolicy)
    pol.set_capacity(URL, 10_000, 0.0)
    assert pol.on_arrival("a", 9_000, 0.0) == Proceed(URL)
    assert pol.on_arrival("b", 9_000, 0.0) == Wait()  # the fixed rule until the engine has been observed
    assert pol.observe_engine(URL, counters(0), 1.0) == []
    assert pol.observe_engine(URL, counters(5_000), 2.0) == [Resume("b", URL)]  # 5K tok/s × 1e-5 = 5%: ×2
    assert pol.on_arrival("c", 9_000, 2.5) == Wait()  # 27K > 0.95 × 20K
    assert pol.observe_engine(URL, counters(10_000), 3.0) == [Resume("c", URL)]  # ×4: 27.3K ≤ 38K


def test_policy_falls_back_to_pausing_when_recompute_turns_expensive():
    cfg = Config(backends=(URL,), tr_mode="cost-aware", cost_prefill_seconds_per_token=1e-5, cost_half_life=1.0,
                 scheduler_interval=1.0)
    pol = make_policy(cfg.policy_settings())
    pol.set_capacity(URL, 10_000, 0.0)
    assert pol.on_arrival("a", 9_000, 0.0) == Proceed(URL)
    assert pol.on_arrival("b", 9_000, 0.0) == Wait()  # the limit binds: the cheap evidence counts
    pol.observe_engine(URL, counters(0), 0.0)
    assert pol.observe_engine(URL, counters(5_000), 1.0) == [Resume("b", URL)]  # x2
    assert pol.on_arrival("c", 9_000, 1.5) == Wait()  # 27K > 0.95 x 20K
    assert pol.observe_engine(URL, counters(10_000), 2.0) == [Resume("c", URL)]  # x4
    for pid in "abc":
        pol.on_request_end(pid, 2.1, 9_000)  # all ACTING now
    total = 10_000.0
    for i in range(3, 8):  # 200K tok/s: re-prefilling everything would take 2x the engine
        total += 200_000
        pol.observe_engine(URL, counters(total), float(i))
    assert pol.stats().pauses == 2  # back under the fixed limit: one 9K program stays
    assert pol.limits.overcommit(URL) == 1.0  # type: ignore[attr-defined]
    assert pol.backends()[0].used <= 10_000


def test_simulator_feeds_a_cost_aware_tr_with_its_profiles_prefill_cost():
    from harness.sim.des import BACKEND, prefill_seconds_per_token, run_des
    from harness.sim.timing import load_profile

    prof = load_profile("glm4.6-8xh100")
    p = prefill_seconds_per_token(prof)
    assert prof.timing.beta1 < p < 3 * prof.timing.beta1  # GEMMs plus attention over one 8K chunk
    cfg = Config(router="tr", backends=(BACKEND,), tr_mode="cost-aware", cost_prefill_seconds_per_token=p)
    pol = make_policy(cfg.policy_settings())
    run_des(prof, arm="thunderagent", programs=8, duration_s=120.0, policy=pol, policy_config=cfg,
            metrics_interval=5.0)
    learned = pol.limits.engines[BACKEND]  # type: ignore[attr-defined]
    assert learned.prompt_rate and learned.prompt_rate > 0
    assert learned.share == pytest.approx(learned.prompt_rate * p)


def test_simulator_learned_prefill_cost_recovers_the_profiles_physics():
    """Learning online from the simulated engine's histograms (as from real vLLM): the figure lands between the
    profile's cheap end (one 8K chunk: GEMMs + attention over the chunk) and a few times it (long contexts pay
    attention over their whole prefix), never below the GEMM-only beta1."""
    from harness.sim.des import BACKEND, prefill_seconds_per_token, run_des
    from harness.sim.timing import load_profile

    prof = load_profile("glm4.6-8xh100")
    p = prefill_seconds_per_token(prof)
    cfg = Config(router="tr", backends=(BACKEND,), tr_mode="cost-aware")
    pol = make_policy(cfg.policy_settings())
    run_des(prof, arm="thunderagent", programs=8, duration_s=300.0, policy=pol, policy_config=cfg,
            metrics_interval=5.0, learn_prefill_cost=True)
    learned = pol.limits.prefill_seconds_per_token(BACKEND)  # type: ignore[attr-defined]
    assert cfg.cost_prefill_seconds_per_token == 0.0 and learned is not None
    assert prof.timing.beta1 < p <= learned < 4 * p


def test_after_a_spell_over_the_budget_only_a_sustained_dip_relaxes_again():
    """Pausing is the safe side: m relaxes only once the share has been under the budget for --cost-half-life
    observations (here 4) in a row — from the start, and again after a spell over the budget."""
    lim = CostAwareLimits(1.0, 0.95, budget=0.8, max_overcommit=8.0, prefill_seconds_per_token=1e-5,
                          half_life=4.0)
    total, t = 0.0, 0.0
    lim.observe(URL, counters(total), t)

    def scrape(rate: float, binding: bool = True) -> float:
        nonlocal total, t
        total, t = total + rate, t + 1.0
        lim.observe(URL, counters(total), t, binding=binding)
        return lim.overcommit(URL)

    assert [scrape(10_000) for _ in range(5)] == [1.0, 1.0, 1.0, 2.0, 4.0]  # share 0.1: the 4th in a row relaxes
    for _ in range(12):
        scrape(400_000)  # re-prefilling everything would take 4x the engine
    assert lim.overcommit(URL) == 1.0
    seen = []
    for _ in range(20):  # the load drops for good; the smoothed share takes a few scrapes to follow
        m = scrape(1_000)
        seen.append((lim.engines[URL].share, m))
    under = [i for i, (share, _m) in enumerate(seen) if share < 0.8]
    first = under[0]
    assert all(m == 1.0 for _s, m in seen[:first + 3])  # the first 3 scrapes under the budget: not yet
    assert seen[first + 3][1] > 1.0 and seen[-1][1] == 8.0  # the 4th in a row: relax (at most x2 per scrape)


def test_the_factor_grows_only_on_evidence_taken_while_the_fixed_limit_binds():
    """While the programs fit the cache (early in a run, contexts still short) nothing depends on m and the cost
    seen then understates what later, longer contexts would cost: no growth, however cheap it looks; the
    observations under the budget count only while the limit binds, and falling is never held back."""
    lim = CostAwareLimits(1.0, 0.95, budget=0.8, max_overcommit=8.0, prefill_seconds_per_token=1e-5,
                          half_life=2.0)
    total, t = 0.0, 0.0
    lim.observe(URL, counters(total), t, binding=False)

    def scrape(rate: float, binding: bool) -> float:
        nonlocal total, t
        total, t = total + rate, t + 1.0
        lim.observe(URL, counters(total), t, binding=binding)
        return lim.overcommit(URL)

    assert [scrape(10_000, False) for _ in range(6)] == [1.0] * 6  # cheap, but nothing binds: m stays
    assert lim.engines[URL].below == 0
    assert [scrape(10_000, True) for _ in range(3)] == [1.0, 2.0, 4.0]  # binds: 2 in a row, then x2 per scrape
    for _ in range(8):
        scrape(400_000, False)  # expensive: m falls whether or not the limit binds
    assert lim.overcommit(URL) == 1.0


def test_the_policy_tells_its_limits_whether_the_fixed_limit_binds():
    seen: list[bool] = []

    class Spy(FixedLimits):
        def observe(self, url, metrics, now, *, binding=True):
            seen.append(binding)

    pol = CapacityPolicy(Config(backends=(URL,)).policy_settings(), limits=Spy(1.0, 0.95))
    pol.set_capacity(URL, 10_000, 0.0)
    pol.observe_engine(URL, counters(0), 0.5)  # empty backend
    assert pol.on_arrival("a", 6_000, 1.0) == Proceed(URL)
    pol.observe_engine(URL, counters(0), 1.5)  # 6K of 9.5K: fits
    assert pol.on_arrival("b", 6_000, 2.0) == Wait()  # 12K > 9.5K: b waits
    pol.observe_engine(URL, counters(0), 2.5)  # a request waits: binds
    assert seen == [False, False, True]


def _coprefill(lim: CostAwareLimits, *, k: int, with_buckets: bool, windows: int = 6) -> float | None:
    """One-second scrapes: each window, 4 engine steps each finish k prefills of 300 computed tokens (plus 20
    decode-only steps of 8 tokens, 8 requests running). A prefill step takes 5 ms + 1e-5 s per computed token in
    it (k x 300), and every request finishing there reports that whole step as its prefill time."""
    from ThunderAgent.backends import bucket_key

    edges = (1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, float("inf"))
    m = {k_: 0.0 for k_ in ("vllm:prompt_tokens_total", "vllm:prefix_cache_hits_total",
                            "vllm:request_prefill_time_seconds_sum", "vllm:request_prefill_time_seconds_count",
                            "vllm:num_preemptions_total", "vllm:inter_token_latency_seconds_sum",
                            "vllm:inter_token_latency_seconds_count", "vllm:request_prefill_kv_computed_tokens_sum")}
    m["vllm:num_requests_running"] = 8.0
    steps: dict[float, float] = {}
    if with_buckets:
        steps = {e: 0.0 for e in edges}
        m["vllm:iteration_tokens_total_count"] = 0.0
    lim.observe(URL, {**m, **{bucket_key("vllm:iteration_tokens_total", e): c for e, c in steps.items()}}, 0.0)
    for i in range(1, windows + 1):
        step_s = 0.005 + 1e-5 * k * 300
        m["vllm:prompt_tokens_total"] += 4 * k * 300
        m["vllm:request_prefill_kv_computed_tokens_sum"] += 4 * k * 300
        m["vllm:request_prefill_time_seconds_sum"] += 4 * k * step_s
        m["vllm:request_prefill_time_seconds_count"] += 4 * k
        m["vllm:inter_token_latency_seconds_sum"] += 20 * 8 * 0.005
        m["vllm:inter_token_latency_seconds_count"] += 20 * 8
        if with_buckets:
            m["vllm:iteration_tokens_total_count"] += 24
            for e in edges:  # cumulative: 20 decode steps of 8 tokens, 4 steps of k x 300 (+8) tokens
                steps[e] += (20 if e >= 8 else 0) + (4 if e >= k * 300 + 8 else 0)
        lim.observe(URL, {**m, **{bucket_key("vllm:iteration_tokens_total", e): c for e, c in steps.items()}},
                    float(i))
    return lim.prefill_seconds_per_token(URL)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_requests_prefilled_in_one_step_are_not_charged_that_step_k_times(k):
    """k requests finishing their prefill in one step each report the whole step; the iteration-tokens
    histogram (steps above what the running requests can decode) gives k, and the learned cost is the true
    1e-5 s/token whatever k is. Without the histogram the figure reads k times too high (the old bias)."""
    with_hist = _coprefill(CostAwareLimits(1.0, 0.95, budget=1.0, max_overcommit=8.0), k=k, with_buckets=True)
    without = _coprefill(CostAwareLimits(1.0, 0.95, budget=1.0, max_overcommit=8.0), k=k, with_buckets=False)
    assert with_hist == pytest.approx(1e-5, rel=1e-6)
    assert without == pytest.approx(k * 1e-5, rel=1e-6)


def test_prefill_steps_reads_the_kept_histogram_and_tolerates_its_absence():
    from ThunderAgent.backends import bucket_key, parse_vllm_metrics
    from ThunderAgent.policy.limits import prefill_steps

    text = open("tests/fakes/data/vllm-metrics-sample-kv-pressure.txt").read()
    m = parse_vllm_metrics(text)
    assert m[bucket_key("vllm:iteration_tokens_total", 512.0)] == 6583.0  # buckets of this family are kept
    assert not any(k.startswith("vllm:time_to_first_token_seconds_bucket") for k in m)  # others still dropped
    zero = {k: 0.0 for k in m if k.startswith("vllm:iteration_tokens_total")}
    zero["vllm:num_requests_running"] = m.get("vllm:num_requests_running", 0.0)
    running = max(1.0, m.get("vllm:num_requests_running", 0.0))
    edge = next(e for e in (1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0) if e >= running)
    expected = m["vllm:iteration_tokens_total_count"] - m[bucket_key("vllm:iteration_tokens_total", edge)]
    assert prefill_steps(m, zero) == expected
    assert prefill_steps({"vllm:prompt_tokens_total": 1.0}, {}) is None  # an engine without the histogram
