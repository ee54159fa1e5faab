"""The proxy feeds every successful /metrics scrape to the policy's observe_engine, and a cost-aware tr
learns from it: the engine's prompt-token counter moves the limits."""

from __future__ import annotations

from tests.fakes.fake_vllm import FakeVLLM
from tests.fakes.proxy_kit import running_proxy
from ThunderAgent.config import Config
from ThunderAgent.policy.capacity import CapacityPolicy


async def test_scrapes_reach_the_cost_aware_limits(fake_vllm: FakeVLLM):
    config = Config(backends=(fake_vllm.url,), router="tr", tr_mode="cost-aware", metrics_interval=3600,
                    cost_prefill_seconds_per_token=1e-9)
    policy = CapacityPolicy(config.policy_settings())
    async with running_proxy(config, policy=policy) as (_c, proxy):
        await proxy.monitor.scrape_once()
        await proxy.monitor.scrape_once()
        learned = policy.limits.engines[fake_vllm.url]  # type: ignore[attr-defined]
        assert learned.last is not None and "vllm:prompt_tokens_total" in learned.last
        assert learned.last_t is not None
        fake_vllm.metrics_status = 500  # a failed scrape teaches nothing
        before = learned.last_t
        await proxy.monitor.scrape_once()
        assert learned.last_t == before


async def test_fixed_mode_does_not_scrape_unless_asked(fake_vllm: FakeVLLM):
    config = Config(backends=(fake_vllm.url,), router="tr", tr_mode="fixed", metrics=False, metrics_interval=0.01)
    async with running_proxy(config) as (_c, proxy):
        assert not any(t.get_name() == "metrics" for t in proxy._tasks)
    config = Config(backends=(fake_vllm.url,), router="tr", tr_mode="cost-aware", metrics=False,
                    metrics_interval=0.01)
    async with running_proxy(config) as (_c, proxy):
        assert any(t.get_name() == "metrics" for t in proxy._tasks)


async def test_the_proxy_metrics_say_what_the_cost_aware_mode_believes(fake_vllm: FakeVLLM):
    from prometheus_client.parser import text_string_to_metric_families

    config = Config(backends=(fake_vllm.url,), router="tr", tr_mode="cost-aware", metrics_interval=3600,
                    cost_prefill_seconds_per_token=2e-5)
    async with running_proxy(config) as (client, proxy):
        await proxy.monitor.scrape_once()
        text = (await client.get("/metrics")).text
        seen = {s.labels["name"]: s.value for f in text_string_to_metric_families(text)
                if f.name == "thunderagent_cost_aware" for s in f.samples if s.labels["backend"] == fake_vllm.url}
        assert seen["overcommit"] == 1.0  # one scrape: nothing learned yet, the fixed rule
        assert seen["prefill_seconds_per_token"] == 2e-5
    config = Config(backends=(fake_vllm.url,), router="tr", tr_mode="fixed")
    async with running_proxy(config) as (client, _proxy):
        assert "thunderagent_cost_aware" not in (await client.get("/metrics")).text
