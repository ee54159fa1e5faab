"""KV capacity as vLLM sizes it (Worker.determine_available_memory), with its low/central/high range: a
worked example, a cross-check against a real vLLM log, and one-line errors for bad [memory] tables."""

from __future__ import annotations

import tomllib

import pytest

from harness.sim.timing import GIB, ProfileError, derive, kv_capacity, load_profile, profile_path, report


def _doc(name: str) -> dict:
    return tomllib.loads(profile_path(name).read_text(encoding="utf-8"))


def test_glm_worked_example() -> None:
    # 0.9 x 79.18 GiB requested - 362e9/8 B of weights (42.14 GiB) - 7.38 activation - 1.2 non-torch - 0 graphs
    # = 20.54 GiB per GPU; / 23,552 B per token (92 layers x 1 KV head x 128 x 2 x fp8) = 936,4xx tokens
    glm = load_profile("glm4.6-8xh100")
    cap = glm.derivation.capacity
    assert cap is not None
    assert cap.available_gib(1) == pytest.approx(0.9 * 79.18 - 362e9 / 8 / GIB - 7.38 - 1.2, abs=1e-9)
    assert cap.central == glm.engine.kv_tokens == 936_400
    assert cap.central == int(cap.available_gib(1) * GIB // 23_552) // 16 * 16
    # the range: every cost term at its high end / its low end
    assert cap.available_gib(0) == pytest.approx(0.9 * 79.18 - 362e9 / 8 / GIB * 1.02 - 8.0 - 2.0 - 1.03)
    assert cap.available_gib(2) == pytest.approx(0.9 * 79.18 - 362e9 / 8 / GIB * 0.98 - 5.6 - 0.55 - 0.0)
    assert cap.low == 786_272 and cap.high == 1_085_616
    assert glm.kv_blocks_range() == (786_272 // 16, 936_400 // 16, 1_085_616 // 16)
    text = report(glm)
    assert "Worker.determine_available_memory" in text and "786,272 / 936,400 / 1,085,616 KV tokens" in text


def test_range_contains_a_real_vllm_log() -> None:
    # vLLM issue #21348: Qwen3-235B-A22B-FP8, TP4 on H100, bf16 KV -> "Available KV cache memory: 8.11 GiB"
    doc = _doc("qwen3-235b-8xh100")
    kv_per_token = 2 * 94 * (4 // 4) * 128 * 2  # one KV head per GPU at TP4, bf16
    cap = kv_capacity(doc, kv_per_token, 237e9 / 4)
    assert cap.available_gib(0) < 8.11 < cap.available_gib(2)
    assert cap.available_gib(1) == pytest.approx(8.11, rel=0.10)


def test_overridden_capacity_has_no_range() -> None:
    p = load_profile("glm4.6-8xh100", num_gpu_blocks=1000)
    assert p.kv_blocks_range() == (1000, 1000, 1000)
    tiny = load_profile("tiny-cpu")
    assert tiny.kv_blocks_range() == (24, 24, 24)


@pytest.mark.parametrize("term, value, message", [
    ("activation_peak_gib", {"central": 7.0, "low": 8.0}, r"\[memory\].activation_peak_gib: needs low <= central <= high"),
    ("non_torch_gib", "lots", r"\[memory\].non_torch_gib: give a number of GiB"),
    ("cuda_graph_gib", {"central": "x"}, r"\[memory\].cuda_graph_gib: low/central/high must be numbers"),
    ("activation_peak_gib", None, r"\[memory\]: missing field 'activation_peak_gib'"),
])
def test_bad_memory_terms_are_one_line_errors(term, value, message) -> None:
    doc = _doc("glm4.6-8xh100")
    if value is None:
        del doc["memory"][term]
    else:
        doc["memory"][term] = value
    with pytest.raises(ProfileError, match=message) as e:
        derive(doc, "glm.toml")
    assert "\n" not in str(e.value) and str(e.value).startswith("glm.toml")


def test_weights_that_leave_no_room_are_an_error() -> None:
    doc = _doc("glm4.6-8xh100")
    doc["model"]["weight_bytes"] = 560e9  # 65 GiB per GPU
    with pytest.raises(ProfileError, match="leave no room for KV cache"):
        derive(doc, "glm.toml")
