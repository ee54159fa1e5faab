"""tr with vLLM's KV offloading (fake clock): the host tier counts --kv-offload-credit x --kv-offload-tokens as
capacity on top of the GPU KV cache; without --kv-offload-tokens the policy is tier-blind. Capacities are small
round numbers (fixed limits: high 1.0, low 0.95 of capacity; 100 tokens of buffer per program)."""

from __future__ import annotations

import pytest

from ThunderAgent.cli import validate
from ThunderAgent.config import Config
from ThunderAgent.policy.base import Pause, Proceed, Wait
from ThunderAgent.policy.capacity import CapacityPolicy

B = "http://b1"


def mk(**kw) -> CapacityPolicy:
    pol = CapacityPolicy(Config(backends=(B,), router="tr", tr_mode="fixed", buffer_per_program=100, **kw).policy_settings())
    pol.set_capacity(B, 10_000, 0.0)
    return pol


def capacity(pol: CapacityPolicy) -> int | None:
    return next(b.capacity for b in pol.backends() if b.url == B)


def test_tier_blind_by_default() -> None:
    assert Config().kv_offload_credit == 0.0 and Config().kv_offload_tokens == 0
    assert capacity(mk(kv_offload_tokens=8_000)) == 10_000  # told the tier's size, still no credit


def test_without_a_declared_tier_the_policy_counts_the_gpu_cache_only() -> None:
    pol = mk(kv_offload_credit=0.5)
    assert capacity(pol) == 10_000
    assert pol.on_arrival("a", 9_000, 0.0) == Proceed(B)  # 9,100 <= 9,500 (low)
    assert pol.on_arrival("b", 1_000, 0.0) == Wait()


def test_half_of_the_host_tier_counts_as_capacity() -> None:
    pol = mk(kv_offload_tokens=8_000, kv_offload_credit=0.5)
    assert capacity(pol) == 14_000  # 10,000 GPU + 0.5 x 8,000 host
    assert pol.on_arrival("a", 9_000, 0.0) == Proceed(B)
    assert pol.on_arrival("b", 3_000, 1.0) == Proceed(B)  # 12,200 <= 13,300: fits only with the tier
    assert pol.on_arrival("c", 2_000, 2.0) == Wait()  # 14,300 > 13,300
    blind = mk(kv_offload_tokens=8_000, kv_offload_credit=0.0)
    assert capacity(blind) == 10_000


def test_the_credit_moves_the_pause_line_too() -> None:
    pol = mk(kv_offload_tokens=8_000, kv_offload_credit=0.5)
    for i, t in enumerate((6_000, 6_000)):
        assert pol.on_arrival(f"p{i}", t, float(i)) == Proceed(B)
        pol.on_request_end(f"p{i}", float(i), t)
    # both ACTING at 12,200 charged: under 14,000, nothing is paused; tier-blind, one of them would be
    assert not [a for a in pol.tick(10.0) if isinstance(a, Pause)]
    blind = mk(kv_offload_tokens=8_000, kv_offload_credit=0.0)
    for i, t in enumerate((6_000, 6_000)):
        blind.on_arrival(f"p{i}", t, float(i))
        blind.on_request_end(f"p{i}", float(i), t)
    assert sum(1 for p in ("p0", "p1") if blind.program(p).state.name == "PAUSED") == 1  # type: ignore[union-attr]


@pytest.mark.parametrize("kw", [dict(kv_offload_tokens=-1), dict(kv_offload_credit=1.5)])
def test_bad_offload_knobs(kw) -> None:
    with pytest.raises(ValueError, match="kv-offload"):
        validate(Config(backends=(B,), router="tr", **kw))
