"""Metrics/capacity parsing (real vLLM captures), SGLang/SkyRL capacity, health hysteresis."""

from __future__ import annotations

from pathlib import Path

import pytest

from ThunderAgent.backends import (
    VLLM_SERIES,
    HealthTracker,
    MetricsParseError,
    parse_cache_config,
    parse_sglang_capacity,
    parse_skyrl_metrics,
    parse_vllm_metrics,
)

DATA = Path(__file__).parent.parent / "fakes" / "data"
IDLE = (DATA / "vllm-metrics-sample.txt").read_text()
PRESSURE = (DATA / "vllm-metrics-sample-kv-pressure.txt").read_text()


def test_vllm_sample_values():
    m = parse_vllm_metrics(IDLE)
    assert all(k in m for k in VLLM_SERIES)
    assert m["vllm:request_success_total"] == 46.0  # summed over finished_reason
    assert m["vllm:prefix_cache_queries_total"] == 14839.0 and m["vllm:prefix_cache_hits_total"] == 11392.0
    assert m["vllm:generation_tokens_total"] == 27280.0
    assert not any(k.endswith("_created") or k.endswith("_bucket") for k in m)


def test_vllm_pressure_sample_preemptions():
    m = parse_vllm_metrics(PRESSURE)
    assert m["vllm:num_preemptions_total"] > 0


def test_cache_config_from_samples():
    assert parse_cache_config(IDLE) == (128, 8192)
    assert parse_cache_config(PRESSURE) == (128, 24)
    assert parse_cache_config("# nothing here\n") is None
    assert parse_cache_config('vllm:cache_config_info{block_size="16",num_gpu_blocks="None"} 1.0\n') is None


TWO_ENGINES = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 4.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 5.1e-05
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.5
# TYPE vllm:request_success counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} 1.5e+03
vllm:request_success_total{engine="1",finished_reason="length",model_name="m"} 2.0
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="27283"} 1.0
vllm:cache_config_info{block_size="16",engine="1",num_gpu_blocks="27283"} 1.0
"""


def test_exponents_and_multiple_engines():
    m = parse_vllm_metrics(TWO_ENGINES)
    assert m["vllm:num_requests_running"] == 7.0  # summed
    assert m["vllm:kv_cache_usage_perc"] == pytest.approx((5.1e-05 + 0.5) / 2)  # averaged, exponent kept
    assert m["vllm:request_success_total"] == 1502.0
    assert parse_cache_config(TWO_ENGINES) == (16, 2 * 27283)


def test_v0_names_mapped():
    m = parse_vllm_metrics('# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc{model_name="m"} 0.25\n')
    assert m["vllm:kv_cache_usage_perc"] == 0.25


def test_malformed_metrics_raise():
    with pytest.raises(MetricsParseError):
        parse_vllm_metrics("vllm:x{a=b} notanumber\n")


def test_sglang_and_skyrl_capacity():
    assert parse_sglang_capacity({"max_total_num_tokens": "4096"}) == 4096
    assert parse_sglang_capacity({"server_info": {"max_total_num_tokens": 100}}) == 100
    assert parse_sglang_capacity({"internal_states": [{"memory_usage": {"token_capacity": 7}}, {"memory_usage": {"token_capacity": 9}}]}) == 9
    assert parse_sglang_capacity({"max_total_num_tokens": 0}) is None
    m = parse_skyrl_metrics({"engines": [{"kv_cache_usage_pct": 50, "num_running_reqs": 2}, {"kv_cache_usage_pct": 10, "num_waiting_reqs": 1}, {"error": "down"}]})
    assert m["vllm:kv_cache_usage_perc"] == pytest.approx(0.3) and m["vllm:num_requests_running"] == 2 and m["num_engines"] == 3
    assert parse_skyrl_metrics({"engines": []}) is None


def test_health_hysteresis():
    h = HealthTracker(fail_threshold=3, ok_threshold=2)
    assert [h.record(False), h.record(False)] == [None, None] and h.healthy
    assert h.record(True) is None  # a success resets the failure streak
    assert [h.record(False), h.record(False), h.record(False)] == [None, None, False]
    assert h.record(False) is None and not h.healthy
    assert [h.record(True), h.record(False), h.record(True), h.record(True)] == [None, None, None, True]
