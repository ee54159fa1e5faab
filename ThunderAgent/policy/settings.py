"""What a scheduling policy reads, and nothing else: the policy core's own settings.

The proxy's `Config` holds every knob of the running server (ports, timeouts, auth, ...); a policy needs a
dozen of them. `Config.policy_settings()` copies those into a `PolicySettings`, which checks every value
when it is built and names a bad one by its field (`InvalidSetting.field`): the proxy's command line
translates the field into its flag (ThunderAgent/cli.py), the simulator builds its settings the same way,
and the policy itself trusts what it is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ROUTERS = ("tr", "default")
TR_MODES = ("fixed", "cost-aware")
DECAYS = ("off", "exp", "geometric")
PLACEMENTS = ("best_fit", "worst_fit")
QUEUE_ORDERS = ("arrival", "smallest")


class InvalidSetting(ValueError):
    """A policy setting out of its range. `field` is the setting's name; the message says what is wrong
    without naming it, so each front end can prefix its own name for it (a flag, a recipe key)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """Every input of the "tr" and "default" policies. Defaults are the proxy's flag defaults (Config)."""

    router: str = "tr"
    backends: tuple[str, ...] = ()
    # limits (limits.py): pause above high x capacity, admit up to low x capacity
    high_watermark: float = 1.0
    low_watermark: float = 0.95
    tr_mode: str = "cost-aware"
    cost_recompute_budget: float = 1.0
    cost_max_overcommit: float = 8.0
    cost_prefill_seconds_per_token: float = 0.0
    cost_half_life: float = 10.0
    # accounting (ledger.py)
    acting_token_weight: float = 1.0
    acting_decay: str = "off"  # resolved: Config's use_acting_token_decay is folded in
    acting_decay_half_life: float = 1.0
    acting_decay_base: float = 2.0
    buffer_per_program: int = 100
    shared_prefix_credit: bool = False
    shared_prefix_tokens: int = 0
    kv_offload_tokens: int = 0
    kv_offload_credit: float = 0.0
    unknown_capacity_programs: int = 16
    # queue and placement (capacity.py)
    aging_bound: float = 300.0
    resume_timeout: float = 1800.0
    tr_queue_order: str = "arrival"
    tr_placement: str = "best_fit"
    # how often the driver ticks the policy (seconds)
    scheduler_interval: float = 5.0

    def __post_init__(self) -> None:
        for name, allowed in (("router", ROUTERS), ("tr_mode", TR_MODES), ("acting_decay", DECAYS),
                              ("tr_placement", PLACEMENTS), ("tr_queue_order", QUEUE_ORDERS)):
            value = getattr(self, name)
            if value not in allowed:
                raise InvalidSetting(name, f"{value!r} is unknown: choose one of {', '.join(allowed)}")
        if not 0.0 < self.low_watermark <= self.high_watermark:
            raise InvalidSetting(
                "low_watermark",
                f"must be > 0 and <= high_watermark, got low={self.low_watermark} high={self.high_watermark}",
            )
        checks = (
            ("acting_token_weight", self.acting_token_weight >= 0, "must be >= 0"),
            ("buffer_per_program", self.buffer_per_program >= 0, "must be >= 0"),
            ("aging_bound", self.aging_bound >= 0, "must be >= 0"),
            ("resume_timeout", self.resume_timeout > 0, "must be > 0"),
            ("kv_offload_tokens", self.kv_offload_tokens >= 0, "must be >= 0"),
            ("kv_offload_credit", 0.0 <= self.kv_offload_credit <= 1.0, "must be within 0..1"),
            ("shared_prefix_tokens", self.shared_prefix_tokens >= 0, "must be >= 0"),
            ("unknown_capacity_programs", self.unknown_capacity_programs >= 0, "must be >= 0"),
            ("cost_recompute_budget", self.cost_recompute_budget > 0, "must be > 0"),
            ("cost_max_overcommit", self.cost_max_overcommit >= 1, "must be >= 1"),
            ("cost_prefill_seconds_per_token", self.cost_prefill_seconds_per_token >= 0,
             "must be >= 0 (0 = learn from the engine)"),
            ("cost_half_life", self.cost_half_life > 0, "must be > 0"),
            ("scheduler_interval", self.scheduler_interval > 0 and math.isfinite(self.scheduler_interval),
             "must be > 0"),
        )
        for name, ok, problem in checks:
            if not ok:
                raise InvalidSetting(name, f"{problem}, got {getattr(self, name)}")
        if self.acting_decay == "exp" and not self.acting_decay_half_life > 0:
            raise InvalidSetting("acting_decay_half_life", f"must be > 0 seconds, got {self.acting_decay_half_life}")
        if self.acting_decay == "geometric" and not self.acting_decay_base > 1:
            raise InvalidSetting("acting_decay_base", f"must be > 1, got {self.acting_decay_base}")

    @property
    def learns_from_engine(self) -> bool:
        """Whether the policy wants engine metrics (a cost-aware tr learns its limits from them)."""
        return self.router == "tr" and self.tr_mode == "cost-aware"
