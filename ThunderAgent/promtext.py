"""Prometheus text exposition as vLLM writes it, read into plain numbers: the one parser of /metrics text.

The proxy's scraper (ThunderAgent/backends.py, once a second per backend), the harness's engine-metrics
recorder and the simulator's calibration all read /metrics through these functions. The text itself is
parsed by prometheus_client's parser (exponents, `+Inf`, escaped labels, histograms with their `_bucket`,
`_sum`, `_count` and `_created` samples); what is here is vLLM's reading of it: several engines or models
summed (ratio gauges averaged), vLLM V0 names mapped to V1 names, the capacity in `vllm:cache_config_info`'s
labels.
"""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

from ThunderAgent.policy.limits import bucket_key  # the key format the cost-aware limits read

# Gauges that are fractions/ratios: averaged over engines instead of summed.
AVERAGED = frozenset(
    {"vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage", "sglang:cache_hit_rate"}
)
# vLLM V0 names -> V1 names (filled only when the V1 name is absent).
V0_NAMES = {
    "vllm:gpu_cache_usage_perc": "vllm:kv_cache_usage_perc",
    "vllm:gpu_prefix_cache_queries_total": "vllm:prefix_cache_queries_total",
    "vllm:gpu_prefix_cache_hits_total": "vllm:prefix_cache_hits_total",
}
# Histograms whose buckets are kept (the rest are reduced to _sum/_count): engine steps by token count, which
# tells steps that finish a prefill from decode-only steps (the cost-aware mode's de-biasing, policy/limits.py).
KEPT_BUCKETS = frozenset({"vllm:iteration_tokens_total"})


class MetricsParseError(ValueError):
    pass


def parse_vllm_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {sample name: value}, aggregated over label sets (engines, models, reasons).

    Counters and count-like gauges are summed (e.g. "vllm:request_success_total" = sum over
    finished_reason and engines); ratio gauges (AVERAGED) are averaged. Histogram buckets and `_created`
    timestamps are skipped, except the cumulative buckets of KEPT_BUCKETS (keyed by `bucket_key`, summed);
    `_sum`/`_count` are kept (summed). Raises MetricsParseError on malformed text.
    """
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                name = s.name
                if name.endswith("_bucket") and family.name in KEPT_BUCKETS:
                    name = bucket_key(family.name, float(s.labels.get("le", "nan")))
                elif (
                    name.endswith("_created")
                    or name.endswith("_bucket")
                    or name.endswith("_gsum")
                    or name.endswith("_gcount")
                ):
                    continue
                value = float(s.value)
                if math.isnan(value):
                    continue
                sums[name] = sums.get(name, 0.0) + value
                counts[name] = counts.get(name, 0) + 1
    except (ValueError, TypeError, IndexError) as e:
        raise MetricsParseError(f"malformed Prometheus text: {e}") from e
    out = {k: (v / counts[k] if k in AVERAGED else v) for k, v in sums.items()}
    for old, new in V0_NAMES.items():
        if old in out and new not in out:
            out[new] = out[old]
    return out


def parse_cache_config(text: str) -> tuple[int, int] | None:
    """(block_size, num_gpu_blocks) from `vllm:cache_config_info` labels, or None if absent/unknown.

    With several engines behind one server (data parallel) each engine has its own KV pool, so
    num_gpu_blocks is summed over distinct engines. Capacity in tokens = block_size * num_gpu_blocks.
    """
    block_size: int | None = None
    blocks: dict[str, int] = {}
    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, TypeError, IndexError):
        return None
    for family in families:
        if family.name != "vllm:cache_config_info":
            continue
        for s in family.samples:
            try:
                bs = int(s.labels["block_size"])
                nb = int(s.labels["num_gpu_blocks"])
            except (KeyError, ValueError):
                continue
            if bs <= 0 or nb <= 0:
                continue
            block_size = bs
            blocks[s.labels.get("engine", str(len(blocks)))] = nb
    if block_size is None:
        return None
    return block_size, sum(blocks.values())


def info_labels(text: str, name: str) -> list[dict[str, str]]:
    """The label sets of an info metric (e.g. `vllm:cache_config_info`, one per engine); [] if absent."""
    return [dict(s.labels) for family in text_string_to_metric_families(text) if family.name == name
            for s in family.samples]


def histogram_stats(text: str, name: str) -> tuple[float, float]:
    """(sum, count) of a histogram summed over its label sets (engines)."""
    values = parse_vllm_metrics(text)
    return values.get(name + "_sum", 0.0), values.get(name + "_count", 0.0)
