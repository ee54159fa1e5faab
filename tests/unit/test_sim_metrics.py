"""The simulator's /metrics exposition against a real vLLM 0.32 capture: same family names, types and labels."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from harness.sim.engine import Engine, Request, SegmentSeq, render_metrics
from harness.sim.timing import StepTimeModel
from ThunderAgent.backends import parse_cache_config, parse_vllm_metrics

# the real vLLM 0.32 capture, committed with the fake vLLM (copied from the shared samples)
SAMPLE = Path(__file__).resolve().parents[1] / "fakes" / "data" / "vllm-metrics-sample-kv-pressure.txt"


def exposition() -> str:
    e = Engine(block_size=16, num_gpu_blocks=64, max_num_batched_tokens=64, max_num_seqs=8,
               timing=StepTimeModel(0.01, 1e-4, 1e-3, 0.0))
    for i in range(3):
        e.add_request(Request(f"r{i}", SegmentSeq(16, [(0, 40), (10 + i, 30)]), 40, 30, 0.0))
    t = 0.0
    while e.has_work():
        t += e.step(t, 1.0).duration
    return render_metrics(e.stats, model_name="tiny", num_running=e.num_running, num_waiting=e.num_waiting,
                          kv_cache_usage=e.kv_usage(), block_size=16, num_gpu_blocks=64,
                          num_gpu_blocks_override=64, max_num_seqs=8, created=1.0, profile="test")


def test_parses_with_thunderagent_and_counts_match_the_engine() -> None:
    text = exposition()
    m = parse_vllm_metrics(text)
    assert parse_cache_config(text) == (16, 64)
    assert m["vllm:request_success_total"] == 3
    assert m["vllm:generation_tokens_total"] == 90
    assert m["vllm:prompt_tokens_total"] == 120
    assert m["vllm:prefix_cache_queries_total"] == 120
    assert m["vllm:prefix_cache_hits_total"] == 2 * 32  # two full 16-token system blocks, for 2 of 3 requests
    assert m["vllm:kv_cache_usage_perc"] == 0.0


def test_families_types_and_labels_match_a_real_capture() -> None:
    assert SAMPLE.exists(), f"the real vLLM capture is missing: {SAMPLE}"
    real = {f.name: f for f in text_string_to_metric_families(SAMPLE.read_text())}
    ours = {f.name: f for f in text_string_to_metric_families(exposition())}
    vllm_ours = {n for n in ours if n.startswith("vllm:")}
    missing = vllm_ours - set(real)
    assert not missing, f"families vLLM does not export: {sorted(missing)}"
    for name in vllm_ours:
        assert ours[name].type == real[name].type, name
        r_labels = {k for s in real[name].samples for k in s.labels if k != "le"}
        o_labels = {k for s in ours[name].samples for k in s.labels if k != "le"}
        assert o_labels <= r_labels, (name, o_labels - r_labels)
    for must in ("vllm:num_preemptions", "vllm:request_success", "vllm:cache_config_info",
                 "vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds"):
        assert must in ours
