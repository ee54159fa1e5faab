"""Every knob of the proxy in one frozen dataclass. CLI flags map 1:1 onto fields (see ThunderAgent/cli.py).

Upstream-compatible flags keep upstream's names and defaults (shared spec §9), except `host`, which
defaults to 127.0.0.1 here (pass --host 0.0.0.0 to expose the proxy on all interfaces).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Config:
    # --- upstream flags (same names, same defaults unless noted) -------------------------------------
    host: str = "127.0.0.1"  # upstream: 0.0.0.0
    port: int = 8300
    log_level: str = "info"
    backends: tuple[str, ...] = ("http://localhost:8000",)
    router: str = "tr"  # "tr" (program-aware capacity scheduling) | "default" (pass-through)
    backend_type: str = "vllm"  # "vllm" | "sglang" | "skyrl"
    profile: bool = False
    profile_dir: str = "/tmp/thunderagent_profiles"
    metrics: bool = False
    metrics_interval: float = 5.0
    scheduler_interval: float = 5.0
    acting_token_weight: float = 1.0
    use_acting_token_decay: bool = False

    # --- proxy additions -------------------------------------------------------------------------------
    proxy_connect_timeout: float = 10.0  # seconds to open a connection to a backend
    proxy_read_timeout: float = 900.0  # seconds between bytes from a backend (not a total deadline)
    idle_ttl: float = 1800.0  # seconds without a request after which a program expires (0 = never)
    admin_token: str | None = None  # when set, /programs/release and admin routes need it
    max_body_bytes: int = 32 * 1024 * 1024  # larger request bodies get 413
    max_programs: int = 100_000  # hard cap on tracked programs (oldest idle expire first beyond it)

    # --- tr scheduler (see ThunderAgent/policy/capacity.py for the meaning of each) ----------------------
    buffer_per_program: int = 100  # decode headroom tokens charged per registered program (upstream: 100)
    high_watermark: float = 1.0  # pause when projected usage > high_watermark * capacity
    low_watermark: float = 0.9  # pause down to / resume up to low_watermark * capacity
    acting_decay: str = "off"  # "off" | "exp" | "geometric"; --use-acting-token-decay selects "exp"
    acting_decay_half_life: float = 1.0  # seconds (exp); upstream's fixed 2^-t has half-life 1 s
    acting_decay_base: float = 2.0  # geometric decay base x: weight = x^-k after k ticks
    resume_timeout: float = 1800.0  # forced resume after this long in the queue (capacity-aware)
    aging_bound: float = 120.0  # a paused program with a pending request waits at most about this long
    shared_prefix_credit: bool = False  # count a prefix shared by several programs on a backend once
    extra: dict[str, str] = field(default_factory=dict)  # free-form, for experiments; not a flag

    @property
    def scheduling_enabled(self) -> bool:
        return self.router == "tr"
