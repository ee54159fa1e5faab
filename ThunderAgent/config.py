"""Every knob of the proxy in one frozen dataclass. CLI flags map 1:1 onto fields (see ThunderAgent/cli.py).

Upstream-compatible flags keep upstream ThunderAgent's names and defaults, except `host`, which
defaults to 127.0.0.1 here (pass --host 0.0.0.0 to expose the proxy on all interfaces).

Adding a field adds a flag: `foo_bar` becomes `--foo-bar`, typed from the annotation (str, int, float,
bool -> store_true flag, `str | None`, `tuple[str, ...]` -> comma-separated list). Declare fields with
`opt(default, "help text", choices=...)` so `--help` explains them; `metadata={"flag": False}` keeps a
field off the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from ThunderAgent.policy.settings import PolicySettings

_POLICY = PolicySettings()  # the policy's own defaults are the flags' defaults


def opt(default: Any, help: str, *, choices: tuple[str, ...] | None = None) -> Any:
    """A Config field with the help text (and optional choices) its CLI flag shows."""
    meta: dict[str, Any] = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Config:
    # --- upstream flags (same names, same defaults unless noted) -------------------------------------
    host: str = opt(
        "127.0.0.1",
        "bind address. Default 127.0.0.1 (loopback only; upstream binds 0.0.0.0). To expose the proxy to "
        "other hosts pass --host 0.0.0.0 and set --admin-token",
    )
    port: int = opt(8300, "bind port")
    log_level: str = opt(
        "info", "log level (uvicorn and the proxy)", choices=("critical", "error", "warning", "info", "debug", "trace")
    )
    backends: tuple[str, ...] = opt(
        ("http://localhost:8000",), "comma-separated backend base URLs, e.g. http://localhost:8100,http://h2:8100"
    )
    router: str = opt(
        "tr", "'tr' = program-aware capacity scheduling, 'default' = sticky pass-through", choices=("tr", "default")
    )
    backend_type: str = opt("vllm", "engine type of every backend", choices=("vllm", "sglang", "skyrl"))
    profile: bool = opt(False, "per-step profiling: step_profiles.csv + step_records.jsonl in --profile-dir")
    profile_dir: str = opt("/tmp/thunderagent_profiles", "directory for the profiling files (created if missing)")
    metrics: bool = opt(False, "scrape each backend's /metrics periodically (engine metrics + health)")
    metrics_interval: float = opt(5.0, "seconds between backend metrics scrapes")
    scheduler_interval: float = opt(_POLICY.scheduler_interval, "seconds between scheduler ticks (router tr only)")
    acting_token_weight: float = opt(
        _POLICY.acting_token_weight, "weight of ACTING programs' tokens in capacity accounting (0.1 = aggressive, 0 = ignore)"
    )
    use_acting_token_decay: bool = opt(
        False, "decay ACTING programs' tokens with the time spent acting (selects --acting-decay exp)"
    )

    # --- proxy additions -------------------------------------------------------------------------------
    proxy_connect_timeout: float = opt(10.0, "seconds to open a connection to a backend")
    proxy_read_timeout: float = opt(
        900.0, "seconds allowed between two reads from a backend (not a total deadline; 0 = no limit)"
    )
    idle_ttl: float = opt(1800.0, "seconds without a request after which a program expires (0 = never)")
    admin_token: str | None = opt(
        None,
        "when set, POST /programs/release needs 'Authorization: Bearer <token>' or 'X-Admin-Token'. A flag "
        "value is visible to other local users (ps): prefer --admin-token-file or $THUNDERAGENT_ADMIN_TOKEN",
    )
    admin_token_file: str | None = opt(
        None, "read the admin token from this file (first line, whitespace stripped); overrides --admin-token"
    )
    max_body_bytes: int = opt(32 * 1024 * 1024, "request bodies larger than this get HTTP 413")
    max_header_bytes: int = opt(
        64 * 1024, "a request head (request line + headers) larger than this gets HTTP 431, connection closed"
    )
    max_headers: int = opt(100, "a request with more header fields than this gets HTTP 431")
    header_timeout: float = opt(
        30.0,
        "seconds a client has to send a request head, from connecting (or from the first byte of the next "
        "request on a kept-alive connection), and the most seconds without a byte while it sends a body; "
        "then HTTP 408 and the connection is closed (slowloris)",
    )
    max_response_bytes: int = opt(
        16 * 1024 * 1024,
        "a backend answer the proxy reads whole (non-streamed) larger than this is cut off: HTTP 502 "
        "backend_response_too_large (streams pass through and are not limited); raise it for large "
        "embedding batches",
    )
    max_programs: int = opt(
        100_000,
        "hard cap on tracked programs: when full, a new program id gets HTTP 429 (with Retry-After); live "
        "programs are never evicted to make room (idle ones still expire after --idle-ttl)",
    )
    no_backend_grace: float = opt(
        10.0,
        "seconds a held request waits while no backend is healthy; then it gets HTTP 503 with Retry-After "
        "(0 = at once) instead of waiting for --resume-timeout",
    )
    health_interval: float = opt(
        2.0, "seconds between /health probes of a backend marked unhealthy (every router and mode)"
    )
    probe_timeout: float = opt(
        5.0,
        "total deadline in seconds (connect + every byte) of one capacity fetch, metrics scrape or health "
        "probe: a backend that trickles bytes cannot hang a background loop",
    )
    max_metrics_bytes: int = opt(
        8 * 1024 * 1024, "a backend /metrics answer larger than this is dropped (counts as a failed scrape)"
    )

    # --- tool-resource reclaim (see ThunderAgent/reclaim.py) -------------------------------------------
    reclaim: str = opt(
        "none",
        "what to do with a program's docker_ids/tool_ids on release or idle expiry: 'none' = drop them, "
        "'docker' = stop and remove the containers (Docker SDK, in the background)",
        choices=("none", "docker"),
    )
    reclaim_images: bool = opt(False, "with --reclaim docker: also remove images no container uses any more")
    reclaim_stop_timeout: int = opt(2, "seconds `docker stop` waits before killing a reclaimed container")
    reclaim_docker_host: str | None = opt(
        None, "Docker daemon URL for --reclaim docker (default: $DOCKER_HOST, else the local socket)"
    )
    reclaim_label: str | None = opt(
        None,
        "with --reclaim docker: only reclaim containers carrying this label (KEY or KEY=VALUE); a named "
        "container without it is left running and counted as refused",
    )

    # --- tr scheduler (see ThunderAgent/policy/capacity.py for the meaning of each) ----------------------
    buffer_per_program: int = opt(_POLICY.buffer_per_program, "decode headroom tokens charged per registered program (upstream: 100)")
    high_watermark: float = opt(_POLICY.high_watermark, "pause when a backend's charged usage > high_watermark * its KV capacity")
    low_watermark: float = opt(
        _POLICY.low_watermark, "pause down to (marked programs counted as gone), and admit/resume only up to, low_watermark * capacity"
    )
    acting_decay: str = opt(
        _POLICY.acting_decay,
        "decay of ACTING tokens: off | exp (half-life --acting-decay-half-life) | geometric (--acting-decay-base per tick)",
        choices=("off", "exp", "geometric"),
    )
    acting_decay_half_life: float = opt(_POLICY.acting_decay_half_life, "seconds (exp decay); upstream's fixed 2^-t has half-life 1 s")
    acting_decay_base: float = opt(_POLICY.acting_decay_base, "geometric decay base x: weight = x^-k after k ticks")
    resume_timeout: float = opt(
        _POLICY.resume_timeout, "seconds a held request waits before a forced resume (the pause pass then restores the watermark)"
    )
    aging_bound: float = opt(
        _POLICY.aging_bound,
        "seconds after which a held request goes first and reserves room, so large programs cannot starve; it then "
        "starts as running programs finish, or as programs idle this long are swapped out for it (programs in "
        "mid-trajectory are not rotated out: a re-prefill each); --resume-timeout is the hard bound on a wait",
    )
    shared_prefix_credit: bool = opt(_POLICY.shared_prefix_credit, "count a prefix shared by several programs on a backend once")
    shared_prefix_tokens: int = opt(
        _POLICY.shared_prefix_tokens, "size in tokens of the prefix all programs share (system prompt + tools), for --shared-prefix-credit"
    )
    tr_mode: str = opt(
        _POLICY.tr_mode,
        "how tr sets its limits: fixed = the watermarks times the KV capacity (upstream's rule, made explicit); "
        "cost-aware = the same limits times an overcommit factor that grows while losing the prefix cache would "
        "be cheap (see --cost-recompute-budget) and falls back to 1 when re-prefill is expensive",
        choices=("fixed", "cost-aware"),
    )
    cost_recompute_budget: float = opt(
        _POLICY.cost_recompute_budget,
        "cost-aware: the largest share of the engine's time that re-prefilling EVERY prompt from scratch at the "
        "current call rate may take (prompt tokens/s x prefill s/token) for tr to still admit past the KV "
        "capacity (1 = the break-even: above it a full loss of the prefix cache could not even sustain today's "
        "calls); above the budget tr pauses programs as the fixed rule does",
    )
    cost_max_overcommit: float = opt(
        _POLICY.cost_max_overcommit,
        "cost-aware: the most tr admits, as a multiple of the fixed limits, when re-prefill is cheap (past "
        "the KV capacity the engine itself evicts and preempts, as raw vLLM would)",
    )
    cost_prefill_seconds_per_token: float = opt(
        _POLICY.cost_prefill_seconds_per_token,
        "cost-aware: engine seconds to prefill one prompt token (e.g. 1e-5 for a 355B model on 8xH100: 30K "
        "tokens ~0.3 s); 0 = learn it from the engine's prefill-time histograms (needs --metrics)",
    )
    cost_half_life: float = opt(
        _POLICY.cost_half_life, "cost-aware: half-life, in metrics scrapes, of the rates and fits learned from the engine; also how "
        "many scrapes in a row, while the fixed limit binds, the share must stay under the budget before tr relaxes"
    )
    tr_queue_order: str = opt(
        _POLICY.tr_queue_order,
        "order of programs waiting for their FIRST response: arrival (first come, first served: a large program "
        "is never overtaken by a later one, so its size does not delay its start) | smallest (smallest context "
        "first, upstream: best packing, but large programs wait for every smaller one). Programs already "
        "started (paused in mid-trajectory) go first either way, smallest first",
        choices=("arrival", "smallest"),
    )
    tr_placement: str = opt(
        _POLICY.tr_placement,
        "where a resumed program goes when its origin backend has no room: best_fit (tightest backend that "
        "fits; keeps big holes for big programs) | worst_fit (roomiest; upstream, balances load)",
        choices=("best_fit", "worst_fit"),
    )
    kv_offload_tokens: int = opt(
        _POLICY.kv_offload_tokens,
        "KV tokens the engine keeps in host memory (vLLM --kv-offloading-size: GiB x 2^30 / KV bytes per token "
        "over all GPUs; vLLM does not publish it); 0 = no tier: tr counts the GPU KV cache only",
    )
    kv_offload_credit: float = opt(
        _POLICY.kv_offload_credit,
        "share of --kv-offload-tokens tr counts as capacity on top of the GPU KV cache (a prefix evicted to host "
        "memory comes back at PCIe cost, not a re-prefill); 0 = tier-blind, the default: in the simulator 0.5 "
        "paid only where the programs' contexts fit in GPU + host (1.17x steps/min at 48 GLM-4.6 programs, "
        "256 GiB) and cost dearly past that (0.58x at 96-192 programs)",
    )
    unknown_capacity_programs: int = opt(
        _POLICY.unknown_capacity_programs,
        "while a backend's KV capacity is unknown, admit at most this many programs to it (0 = none) and "
        "never pause there; the proxy warns until the capacity is known",
    )
    extra: dict[str, str] = field(default_factory=dict, metadata={"flag": False})  # free-form, for experiments

    @property
    def scheduling_enabled(self) -> bool:
        return self.router == "tr"

    def policy_settings(self) -> PolicySettings:
        """The policy's share of this Config (raises InvalidSetting naming the bad field)."""
        kw = {f.name: getattr(self, f.name) for f in fields(PolicySettings)}
        if self.acting_decay == "off" and self.use_acting_token_decay:  # upstream's switch selects exp decay
            kw["acting_decay"] = "exp"
        return PolicySettings(**kw)
