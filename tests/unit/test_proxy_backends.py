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
    m = parse_vllm_metrics(
        '# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc{model_name="m"} 0.25\n'
    )
    assert m["vllm:kv_cache_usage_perc"] == 0.25


def test_malformed_metrics_raise():
    with pytest.raises(MetricsParseError):
        parse_vllm_metrics("vllm:x{a=b} notanumber\n")


def test_sglang_and_skyrl_capacity():
    assert parse_sglang_capacity({"max_total_num_tokens": "4096"}) == 4096
    assert parse_sglang_capacity({"server_info": {"max_total_num_tokens": 100}}) == 100
    assert (
        parse_sglang_capacity(
            {
                "internal_states": [
                    {"memory_usage": {"token_capacity": 7}},
                    {"memory_usage": {"token_capacity": 9}},
                ]
            }
        )
        == 9
    )
    assert parse_sglang_capacity({"max_total_num_tokens": 0}) is None
    m = parse_skyrl_metrics(
        {
            "engines": [
                {"kv_cache_usage_pct": 50, "num_running_reqs": 2},
                {"kv_cache_usage_pct": 10, "num_waiting_reqs": 1},
                {"error": "down"},
            ]
        }
    )
    assert (
        m["vllm:kv_cache_usage_perc"] == pytest.approx(0.3)
        and m["vllm:num_requests_running"] == 2
        and m["num_engines"] == 3
    )
    assert parse_skyrl_metrics({"engines": []}) is None


def test_health_hysteresis():
    h = HealthTracker(fail_threshold=3, ok_threshold=2)
    assert [h.record(False), h.record(False)] == [None, None] and h.healthy
    assert h.record(True) is None  # a success resets the failure streak
    assert [h.record(False), h.record(False), h.record(False)] == [None, None, False]
    assert h.record(False) is None and not h.healthy
    assert [h.record(True), h.record(False), h.record(True), h.record(True)] == [None, None, None, True]


# --- fetch_capacity / scrape over HTTP (httpx.MockTransport) -------------------------------------------

import httpx  # noqa: E402

from ThunderAgent.backends import BackendState, fetch_capacity, scrape  # noqa: E402


def mock_client(routes: dict[str, httpx.Response]) -> httpx.AsyncClient:
    def handler(req: httpx.Request) -> httpx.Response:
        return routes.get(req.url.path, httpx.Response(404))

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_fetch_capacity_per_backend_type():
    async with mock_client({"/metrics": httpx.Response(200, text=PRESSURE)}) as c:
        st = BackendState(url="http://v")
        assert await fetch_capacity(c, st) == 128 * 24
        assert st.cache_config_json() == {
            "block_size": 128,
            "num_gpu_blocks": 24,
            "total_tokens_capacity": 3072,
        }
    async with mock_client(
        {"/get_server_info": httpx.Response(200, json={"max_total_num_tokens": 5000})}
    ) as c:
        st = BackendState(url="http://s", backend_type="sglang")
        assert await fetch_capacity(c, st) == 5000 and st.cache_config_json() == {
            "total_tokens_capacity": 5000
        }
    skyrl = {
        "timestamp": 1,
        "engines": [{"engine_id": 0, "kv_cache_usage_pct": 20}, {"engine_id": 1, "kv_cache_usage_pct": 40}],
    }
    async with mock_client({"/metrics": httpx.Response(200, json=skyrl)}) as c:
        st = BackendState(url="http://k", backend_type="skyrl")
        assert await fetch_capacity(c, st) == 400_000
        assert (
            st.cache_config_json()["backend_type"] == "skyrl" and st.cache_config_json()["num_engines"] == 2
        )
        assert await scrape(c, st) and st.latest["vllm:kv_cache_usage_perc"] == pytest.approx(0.3)


async def test_fetch_capacity_and_scrape_failures():
    async with mock_client({"/metrics": httpx.Response(503, text="starting")}) as c:
        st = BackendState(url="http://v")
        assert await fetch_capacity(c, st) is None and st.capacity is None
        assert not await scrape(c, st) and st.last_error == "HTTP 503"
    async with mock_client({"/metrics": httpx.Response(200, text="vllm:x{a=b} garbage\n")}) as c:
        st = BackendState(url="http://v")
        assert await fetch_capacity(c, st) is None
        assert not await scrape(c, st) and "MetricsParseError" in st.last_error
    async with mock_client({"/metrics": httpx.Response(200, text=IDLE)}) as c:
        st = BackendState(url="http://v")
        for _ in range(14):
            assert await scrape(c, st)
        assert len(st.history) == 12 and st.metrics_json()["requests_completed"] == 46.0
