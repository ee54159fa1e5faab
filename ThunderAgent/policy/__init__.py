"""The scheduling decision core: pure objects, no I/O, no asyncio, time passed in as `now`.

`base.py` declares the interface and its actions, `settings.py` what a policy reads, `driver.py` the one
loop that drives a policy (the proxy and the discrete-event simulator are thin adapters around it);
`passthrough.py` ("default") and `capacity.py` ("tr", with `ledger.py`'s accounting and `limits.py`'s
lines) implement it. `make_policy(settings)` picks one by `settings.router`.
"""

from __future__ import annotations

from ThunderAgent.policy.base import Policy
from ThunderAgent.policy.capacity import CapacityPolicy
from ThunderAgent.policy.passthrough import PassthroughPolicy
from ThunderAgent.policy.settings import ROUTERS, PolicySettings

__all__ = ["ROUTERS", "Policy", "PolicySettings", "make_policy"]


def make_policy(settings: PolicySettings) -> Policy:
    """The policy for `settings.router`: "default" -> PassthroughPolicy, "tr" -> CapacityPolicy; every backend
    of `settings.backends` is added."""
    if settings.router == "default":
        return PassthroughPolicy(settings)
    return CapacityPolicy(settings)
