"""The proxy's JSON views: /programs, /health and /metrics?format=json.

Read-only: each reads the policy's views (programs, backends, stats), the program registry and the
backends' scraped state, and redacts credentials from backend URLs. The field names follow upstream
ThunderAgent's, so its clients read them unchanged.
"""

from __future__ import annotations

from typing import Any, Callable

from ThunderAgent import __version__
from ThunderAgent.backends import BackendState
from ThunderAgent.config import Config
from ThunderAgent.logsafe import redact_url
from ThunderAgent.policy.base import Phase, Policy, State
from ThunderAgent.programs import ProgramRegistry


class ProxyViews:
    def __init__(
        self,
        config: Config,
        policy: Policy,
        registry: ProgramRegistry,
        backends: dict[str, BackendState],
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.policy = policy
        self.registry = registry
        self.backends = backends
        self.clock = clock

    def programs_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for rec in self.registry.records():
            v = self.policy.program(rec.program_id)
            entry: dict[str, Any] = {
                "backend": redact_url(v.backend) if v and v.backend else None,
                "context_len": rec.context_len,
                "total_tokens": v.tokens if v else 0,
                "step_count": rec.step_count,
                "status": str(v.phase) if v else str(Phase.ACTING),
                "state": str(v.state) if v else str(State.ACTIVE),
                "inflight": rec.inflight,
                "waiting": rec.held,
                "idle_s": round(max(0.0, self.clock() - rec.last_activity), 3) if not rec.busy else 0.0,
            }
            if self.config.profile:
                entry["profile"] = rec.profile.averages()
            out[rec.program_id] = entry
        return out

    def health_json(self) -> dict[str, Any]:
        views = self.policy.programs()
        stats = self.policy.stats()
        per_backend = {}
        for b in self.policy.backends():
            per_backend[redact_url(b.url)] = {
                "total": b.program_count,
                "reasoning": b.reasoning_count,
                "acting": b.acting_count,
                "paused": b.paused_count,
                "marked_for_pause": b.marked_count,
                "future_paused_tokens": b.marked_tokens,
                "healthy": b.healthy,
                "capacity": b.capacity,
            }
        healthy = sum(1 for b in self.policy.backends() if b.healthy)
        return {
            # upstream's /health answers "ok" whatever the backends' state (clients poll for it): kept, and
            # `ready` says whether any backend can take a request now
            "status": "ok",
            "ready": healthy > 0,
            "healthy_backends": healthy,
            "version": __version__,
            "router_mode": self.config.router,
            "scheduling_enabled": self.config.scheduling_enabled,
            "backends": [redact_url(u) for u in self.config.backends],
            "programs_count": len(views),
            "reasoning_count": sum(
                1 for v in views if v.phase == Phase.REASONING and v.state == State.ACTIVE
            ),
            "acting_count": sum(1 for v in views if v.phase == Phase.ACTING and v.state == State.ACTIVE),
            "paused_count": stats.queue_length,
            "per_backend": per_backend,
            "profile_enabled": self.config.profile,
        }

    def metrics_json(self) -> dict[str, Any]:
        w = self.config.acting_token_weight
        out: dict[str, Any] = {}
        for b in self.policy.backends():
            st = self.backends.get(b.url) or BackendState(url=b.url)
            active = int(b.reasoning_tokens + w * b.acting_tokens)
            entry: dict[str, Any] = {
                "url": redact_url(b.url),
                "active_program_tokens": active,
                "reasoning_program_tokens": b.reasoning_tokens,
                "acting_program_tokens": b.acting_tokens,
                "active_program_count": b.program_count,
                "reasoning_program_count": b.reasoning_count,
                "acting_program_count": b.acting_count,
                "active_program_tokens_ratio": round(active / b.capacity, 4) if b.capacity else None,
                "total_program_tokens": b.reasoning_tokens + b.acting_tokens,
                "paused_program_count": b.paused_count,
                "future_paused_tokens": b.marked_tokens,
                "shared_tokens": 0,
                "buffer_per_program": self.config.buffer_per_program,
                "capacity_overflow": max(0, b.used - b.capacity) if b.capacity else 0,
                "healthy": b.healthy,
                "monitoring": self.config.metrics,
                "cache_config": st.cache_config_json(),
            }
            m = st.metrics_json()
            if m is not None:
                entry["metrics"] = m
            out[redact_url(b.url)] = entry
        return {
            "metrics_enabled": self.config.metrics,
            "metrics_interval": self.config.metrics_interval if self.config.metrics else None,
            "backends": out,
        }
