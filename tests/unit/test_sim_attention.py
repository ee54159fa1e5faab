"""The prefill-attention term of the step-time model (beta4): derived from first principles for the GPU
profiles, and charged by the engine per chunk as n*p + n(n+1)/2 attended tokens."""

from __future__ import annotations

import tomllib

import pytest

from harness.sim.engine import Engine, Request, SegmentSeq
from harness.sim.timing import PROFILES_DIR, StepTimeModel, load_profile

TM = StepTimeModel(0.01, 1e-4, 1e-3, 1e-6, beta4=1e-7)


def test_glm_beta4_is_attention_flops_over_bf16_peak() -> None:
    doc = tomllib.loads((PROFILES_DIR / "glm4.6-8xh100.toml").read_text())
    m, hw, eff = doc["model"], doc["hardware"], doc["efficiency"]
    expect = 4 * m["num_layers"] * m["num_attention_heads"] * m["head_dim"] / (
        hw["num_gpus"] * hw["peak_flops_bf16"] * eff["compute"])
    prof = load_profile("glm4.6-8xh100")
    assert prof.timing.beta4 == pytest.approx(expect)
    # at agent contexts attention dominates: a 30K re-prefill costs well over twice its GEMMs alone
    t = prof.timing
    gemm = t.beta1 * 30_000
    total = t.step_time(30_000, 0, 0, 30_000 * 30_001 // 2) - t.beta0
    assert total > 2.5 * gemm


def test_measured_profile_without_beta4_keeps_zero() -> None:
    assert load_profile("tiny-cpu").timing.beta4 == 0.0


def test_engine_charges_chunk_attention_by_position() -> None:
    e = Engine(block_size=4, num_gpu_blocks=40, max_num_batched_tokens=10, max_num_seqs=8, timing=TM)
    a = Request("a", SegmentSeq(4, [(1, 23), (2, 3)]), 23, 3, 0.0)
    e.add_request(a)
    r1 = e.step(0.0)  # tokens 0..9 attend to 1..10 earlier-or-same tokens: 10*0 + 55
    assert r1.duration == pytest.approx(TM.step_time(10, 0, 0, 55))
    r2 = e.step(0.0)  # tokens 10..19: 10*10 + 55
    assert r2.duration == pytest.approx(TM.step_time(10, 0, 0, 155))
