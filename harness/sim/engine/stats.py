"""The simulator's engine counters and their Prometheus exposition with vLLM's names and labels.

Names, help texts, label conventions (`engine="0"`, `model_name=...`, labels in alphabetical order, `_created`
samples) and histogram buckets are copied from real vLLM 0.32 captures (shared/samples/vllm-metrics-sample*.txt),
so the same parser (ThunderAgent.backends.parse_vllm_metrics / parse_cache_config) reads a simulator and a real
engine alike. The text is rendered by hand rather than through prometheus_client's registry because the
simulator observes runs of identical steps in one go (weighted histogram observations) and keeps time on a
virtual clock.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field

from ThunderAgent.policy.limits import bucket_key

from harness.sim.engine.offload import HostKVTier
from harness.sim.engine.request import Request

LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                   480.0, 960.0, 1920.0, 7680.0)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
               80.0)
TOKEN_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)
ITERATION_BUCKETS = (1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0)
PREEMPTION_BUCKETS = (1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0)
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")


@dataclass(slots=True)
class Histogram:
    buckets: tuple[float, ...]
    counts: list[float] = field(default_factory=list)
    total: float = 0.0
    n: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0.0] * (len(self.buckets) + 1)

    def observe(self, value: float, weight: float = 1.0) -> None:
        """Record `value` `weight` times (a run of identical engine steps is one call)."""
        self.counts[bisect.bisect_left(self.buckets, value)] += weight
        self.total += value * weight
        self.n += weight


@dataclass(slots=True)
class EngineStats:
    """Cumulative counters in vLLM's units (tokens, requests, steps)."""

    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    num_preemptions: int = 0
    pins: int = 0
    pin_expiries: int = 0
    success: dict[str, int] = field(default_factory=lambda: {r: 0 for r in FINISH_REASONS})
    iteration_tokens: Histogram = field(default_factory=lambda: Histogram(ITERATION_BUCKETS))
    inter_token_latency: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    queue_time: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    inference_time: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    prefill_time: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    decode_time: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    tpot: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    request_prompt_tokens: Histogram = field(default_factory=lambda: Histogram(TOKEN_BUCKETS))
    request_generation_tokens: Histogram = field(default_factory=lambda: Histogram(TOKEN_BUCKETS))
    request_preemptions: Histogram = field(default_factory=lambda: Histogram(PREEMPTION_BUCKETS))

    def on_finish(self, req: Request) -> None:
        self.success[req.finish_reason or "length"] = self.success.get(req.finish_reason or "length", 0) + 1
        end = req.finish_time or 0.0
        sched = req.first_scheduled_time if req.first_scheduled_time is not None else req.arrival_time
        first = req.first_token_time if req.first_token_time is not None else end
        self.ttft.observe(first - req.arrival_time)
        self.e2e.observe(end - req.arrival_time)
        self.queue_time.observe(sched - req.arrival_time)
        self.inference_time.observe(end - sched)
        self.prefill_time.observe(first - sched)
        self.decode_time.observe(end - first)
        if req.num_output_tokens > 1:
            self.tpot.observe((end - first) / (req.num_output_tokens - 1))
        self.request_prompt_tokens.observe(req.num_prompt_tokens)
        self.request_generation_tokens.observe(req.num_output_tokens)
        self.request_preemptions.observe(req.num_preemptions)

    @property
    def request_success(self) -> int:
        return sum(self.success.values())


def _fmt(v: float) -> str:
    if v == float("inf"):
        return "+Inf"
    return repr(float(v))


def _labels(d: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(d.items())) + "}"


def render_metrics(
    stats: EngineStats,
    *,
    model_name: str,
    num_running: int,
    num_waiting: int,
    kv_cache_usage: float,
    block_size: int,
    num_gpu_blocks: int,
    num_gpu_blocks_override: int | None,
    max_num_seqs: int,
    created: float | None = None,
    profile: str | None = None,
    host: HostKVTier | None = None,
) -> str:
    """The /metrics text of one engine (engine="0")."""
    created = time.time() if created is None else created
    base = {"engine": "0", "model_name": model_name}
    out: list[str] = []

    def family(name: str, kind: str, help_: str) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")

    def sample(name: str, value: float, extra: dict[str, str] | None = None) -> None:
        out.append(f"{name}{_labels({**base, **(extra or {})})} {_fmt(value)}")

    def gauge(name: str, value: float, help_: str) -> None:
        family(name, "gauge", help_)
        sample(name, value)

    def counter(name: str, value: float, help_: str, by: dict[str, dict[str, str]] | None = None,
                values: dict[str, float] | None = None) -> None:
        family(f"{name}_total", "counter", help_)
        if by is None:
            sample(f"{name}_total", value)
        else:
            for key, lab in by.items():
                sample(f"{name}_total", (values or {}).get(key, 0.0), lab)
        family(f"{name}_created", "gauge", help_)
        if by is None:
            sample(f"{name}_created", created)
        else:
            for _key, lab in by.items():
                sample(f"{name}_created", created, lab)

    def histogram(name: str, h: Histogram, help_: str) -> None:
        family(name, "histogram", help_)
        cum = 0.0
        for le, c in zip((*h.buckets, float("inf")), h.counts):
            cum += c
            sample(f"{name}_bucket", cum, {"le": _fmt(le)})
        sample(f"{name}_count", h.n)
        sample(f"{name}_sum", h.total)
        family(f"{name}_created", "gauge", help_)
        sample(f"{name}_created", created)

    if profile:
        out.append(f"# thunderbench simulator: numbers are SIMULATED with profile {profile}")
    gauge("vllm:num_requests_running", num_running, "Number of requests in model execution batches.")
    gauge("vllm:num_requests_waiting", num_waiting, "Number of requests waiting to be processed.")
    family("vllm:num_requests_waiting_by_reason", "gauge",
           "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for scheduling capacity; "
           "'deferred' = deferred by transient constraints (LoRA budget, KV transfer, blocked status). Sum of all "
           "reasons equals vllm:num_requests_waiting.")
    sample("vllm:num_requests_waiting_by_reason", num_waiting, {"reason": "capacity"})
    sample("vllm:num_requests_waiting_by_reason", 0, {"reason": "deferred"})
    gauge("vllm:kv_cache_usage_perc", kv_cache_usage, "KV-cache usage. 1 means 100 percent usage.")
    counter("vllm:prefix_cache_queries", stats.prefix_cache_queries,
            "Prefix cache queries, in terms of number of queried tokens.")
    counter("vllm:prefix_cache_hits", stats.prefix_cache_hits, "Prefix cache hits, in terms of number of cached tokens.")
    counter("vllm:num_preemptions", stats.num_preemptions, "Cumulative number of preemption from the engine.")
    counter("vllm:prompt_tokens", stats.prompt_tokens, "Number of prefill tokens processed.")
    counter("vllm:prompt_tokens_cached", stats.prefix_cache_hits, "Number of cached prompt tokens (local + external).")
    counter("vllm:generation_tokens", stats.generation_tokens, "Number of generation tokens processed.")
    counter("vllm:request_success", 0, "Count of successfully processed requests.",
            by={r: {"finished_reason": r} for r in FINISH_REASONS}, values={k: float(v) for k, v in stats.success.items()})
    histogram("vllm:request_prompt_tokens", stats.request_prompt_tokens, "Number of prefill tokens processed.")
    histogram("vllm:request_generation_tokens", stats.request_generation_tokens, "Number of generation tokens processed.")
    histogram("vllm:iteration_tokens_total", stats.iteration_tokens, "Histogram of number of tokens per engine_step.")
    histogram("vllm:time_to_first_token_seconds", stats.ttft, "Histogram of time to first token in seconds.")
    histogram("vllm:inter_token_latency_seconds", stats.inter_token_latency, "Histogram of inter-token latency in seconds.")
    histogram("vllm:request_time_per_output_token_seconds", stats.tpot,
              "Histogram of time_per_output_token_seconds per request.")
    histogram("vllm:e2e_request_latency_seconds", stats.e2e, "Histogram of e2e request latency in seconds.")
    histogram("vllm:request_queue_time_seconds", stats.queue_time, "Histogram of time spent in WAITING phase for request.")
    histogram("vllm:request_inference_time_seconds", stats.inference_time,
              "Histogram of time spent in RUNNING phase for request.")
    histogram("vllm:request_prefill_time_seconds", stats.prefill_time, "Histogram of time spent in PREFILL phase for request.")
    histogram("vllm:request_decode_time_seconds", stats.decode_time, "Histogram of time spent in DECODE phase for request.")
    histogram("vllm:request_num_preemptions", stats.request_preemptions,
              "Histogram of the number of times a request was preempted.")
    if host is not None:
        hs = host_series(host)
        helps = {
            "vllm:external_prefix_cache_queries": "External prefix cache queries from KV connector cross-instance "
                                                  "cache sharing, in terms of number of queried tokens.",
            "vllm:external_prefix_cache_hits": "External prefix cache hits from KV connector cross-instance cache "
                                               "sharing, in terms of number of cached tokens.",
            "vllm:kv_offload_load_bytes": "Total bytes loaded from offload storage to GPU.",
            "vllm:kv_offload_load_time": "Total load time from offload storage to GPU, in seconds.",
            "vllm:kv_offload_store_bytes": "Total bytes stored from GPU to offload storage.",
            "vllm:kv_offload_store_time": "Total store time from GPU to offload storage, in seconds.",
            "vllm:kv_offload_allocation_failure": "Number of KV offload store allocation attempts that failed.",
        }
        for name, help_ in helps.items():
            counter(name, hs[name + "_total"], help_)
        gauge("thunderbench_sim_kv_offload_host_usage_perc", hs["thunderbench_sim_kv_offload_host_usage_perc"],
              "Simulator only (not a vLLM series): fraction of the host KV tier's blocks in use.")
        gauge("thunderbench_sim_kv_offload_host_blocks", hs["thunderbench_sim_kv_offload_host_blocks"],
              "Simulator only (not a vLLM series): capacity of the host KV tier in blocks.")
    family("vllm:cache_config_info", "gauge", "Information of the LLMEngine CacheConfig")
    info = {
        "block_size": str(block_size),
        "cache_dtype": "auto",
        "enable_prefix_caching": "True",
        "gpu_memory_utilization": "0.9",
        "kv_cache_max_concurrency": "None",
        "kv_cache_size_tokens": str(num_gpu_blocks * block_size),
        "num_cpu_blocks": "None",
        "num_gpu_blocks": str(num_gpu_blocks),
        "num_gpu_blocks_override": "None" if num_gpu_blocks_override is None else str(num_gpu_blocks_override),
        "prefix_caching_hash_algo": "sha256",
        "sliding_window": "None",
    }
    out.append(f"vllm:cache_config_info{_labels({'engine': '0', **info})} 1.0")
    return "\n".join(out) + "\n"


def histogram_sample(name: str, h: Histogram) -> dict[str, float]:
    """A histogram as the proxy's parser keys a kept one (cumulative buckets, _count, _sum), without text."""
    out: dict[str, float] = {}
    cum = 0.0
    for le, c in zip((*h.buckets, float("inf")), h.counts):
        cum += c
        out[bucket_key(name, le)] = cum
    out[f"{name}_count"] = h.n
    out[f"{name}_sum"] = h.total
    return out


def engine_sample(stats: EngineStats, *, num_running: int, num_waiting: int, kv_cache_usage: float,
                  host: HostKVTier | None = None) -> dict[str, float]:
    """One row of the engine-metrics series (the values a scrape of /metrics would give) without rendering
    text; with a host KV tier, its series as well (host_series)."""
    row = {
        "vllm:num_requests_running": float(num_running),
        "vllm:num_requests_waiting": float(num_waiting),
        "vllm:kv_cache_usage_perc": float(kv_cache_usage),
        "vllm:prefix_cache_queries_total": float(stats.prefix_cache_queries),
        "vllm:prefix_cache_hits_total": float(stats.prefix_cache_hits),
        "vllm:prompt_tokens_total": float(stats.prompt_tokens),
        "vllm:generation_tokens_total": float(stats.generation_tokens),
        "vllm:num_preemptions_total": float(stats.num_preemptions),
        "vllm:request_success_total": float(stats.request_success),
    }
    if host is not None:
        row.update(host_series(host))
    return row


def host_series(host: HostKVTier) -> dict[str, float]:
    """The host KV tier's series. vllm:* names are the ones vLLM 0.32's OffloadingConnector exports
    (kv_connector/v1/offloading/metrics.py; counters, so _total in the text) and the scheduler's connector
    prefix-cache counters (v1/metrics/loggers.py). vLLM exports no gauge of the tier's occupancy: that one is
    ours, named thunderbench_sim_*."""
    st = host.stats
    return {
        "vllm:external_prefix_cache_queries_total": float(st.external_queries),
        "vllm:external_prefix_cache_hits_total": float(st.external_hits),
        "vllm:kv_offload_load_bytes_total": float(st.load_bytes),
        "vllm:kv_offload_load_time_total": float(st.load_time),
        "vllm:kv_offload_store_bytes_total": float(st.store_bytes),
        "vllm:kv_offload_store_time_total": float(st.store_time),
        "vllm:kv_offload_allocation_failure_total": float(st.allocation_failures),
        "thunderbench_sim_kv_offload_host_usage_perc": host.usage(),
        "thunderbench_sim_kv_offload_host_blocks": float(host.capacity_blocks),
    }
