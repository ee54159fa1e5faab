"""The scheduling decision core: pure objects, no I/O, no asyncio, time passed in as `now`.

The HTTP proxy (ThunderAgent/app.py) and the discrete-event simulator (harness/sim/des.py) drive the same
policy objects through the interface in `base.py`. `make_policy(config)` picks one by `config.router`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ThunderAgent.config import Config
    from ThunderAgent.policy.base import Policy

ROUTERS = ("tr", "default")


def make_policy(config: "Config") -> "Policy":
    """The policy for `config.router`: "default" -> PassthroughPolicy, "tr" -> CapacityPolicy; every backend
    of `config.backends` is added."""
    if config.router == "default":
        from ThunderAgent.policy.passthrough import PassthroughPolicy

        return PassthroughPolicy(config)
    if config.router == "tr":
        from ThunderAgent.policy.capacity import CapacityPolicy

        return CapacityPolicy(config)
    raise ValueError(f"unknown router {config.router!r}: choose one of {', '.join(ROUTERS)}")
