"""Telemetry: Prometheus exposition of the proxy's own state (the --profile step records are written by
records.py's ProfileWriter).

* `/metrics` (Prometheus text) comes from a per-app CollectorRegistry: a custom collector reads the
  policy's views at scrape time (programs by phase/state, queue length, per-backend used/capacity tokens,
  pause/resume counters — exact, and nothing to keep in sync), plus request counters and latency
  histograms observed per request.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ThunderAgent.logsafe import redact_url
from ThunderAgent.policy.base import Phase, State

if TYPE_CHECKING:
    from ThunderAgent.backends import BackendState
    from ThunderAgent.policy.base import Policy
    from ThunderAgent.programs import ProgramRegistry

log = logging.getLogger("thunderagent.telemetry")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class _StateCollector(Collector):
    """Reads the policy and registry at scrape time."""

    def __init__(
        self,
        policy: "Policy",
        programs: "ProgramRegistry",
        backends: Callable[[], dict[str, "BackendState"]],
    ) -> None:
        self._policy = policy
        self._programs = programs
        self._backends = backends

    def collect(self) -> Iterator[Metric]:
        views = self._policy.programs()
        by = GaugeMetricFamily(
            "thunderagent_programs", "Tracked programs by phase and state", labels=["phase", "state"]
        )
        counts: dict[tuple[str, str], int] = {
            (p.value, s.value): 0 for p in Phase for s in (State.ACTIVE, State.PAUSED)
        }
        for v in views:
            key = (str(v.phase), str(v.state))
            counts[key] = counts.get(key, 0) + 1
        for (phase, state), n in counts.items():
            by.add_metric([phase, state], n)
        yield by

        stats = self._policy.stats()
        yield GaugeMetricFamily(
            "thunderagent_queue_length", "Programs in the global waiting queue", value=stats.queue_length
        )
        for name, help_, value in (
            ("thunderagent_pauses", "Programs paused by the scheduler", stats.pauses),
            ("thunderagent_resumes", "Programs resumed by the scheduler", stats.resumes),
            ("thunderagent_forced_resumes", "Resumes forced by the queue timeout", stats.forced_resumes),
            (
                "thunderagent_marks",
                "REASONING programs marked to pause at the end of their request",
                stats.marks,
            ),
            ("thunderagent_rejects", "Held requests failed by the scheduler", stats.rejects),
        ):
            yield CounterMetricFamily(name, help_, value=value)

        recs = self._programs.records()
        yield GaugeMetricFamily(
            "thunderagent_requests_inflight",
            "Requests forwarded and not finished",
            value=sum(r.inflight for r in recs),
        )
        yield GaugeMetricFamily(
            "thunderagent_requests_held", "Requests held by the scheduler", value=sum(r.held for r in recs)
        )

        used = GaugeMetricFamily(
            "thunderagent_backend_used_tokens", "Tokens the policy charges to the backend", labels=["backend"]
        )
        cap = GaugeMetricFamily(
            "thunderagent_backend_capacity_tokens",
            "KV-cache capacity of the backend (tokens)",
            labels=["backend"],
        )
        progs = GaugeMetricFamily(
            "thunderagent_backend_programs", "Programs placed on the backend", labels=["backend", "phase"]
        )
        healthy = GaugeMetricFamily(
            "thunderagent_backend_healthy", "1 if the backend is considered healthy", labels=["backend"]
        )
        for b in self._policy.backends():
            used.add_metric([redact_url(b.url)], b.used)
            if b.capacity is not None:
                cap.add_metric([redact_url(b.url)], b.capacity)
            progs.add_metric([redact_url(b.url), "reasoning"], b.reasoning_count)
            progs.add_metric([redact_url(b.url), "acting"], b.acting_count)
            healthy.add_metric([redact_url(b.url)], 1.0 if b.healthy else 0.0)
        yield used
        yield cap
        yield progs
        yield healthy

        reports = {b.url: self._policy.report(b.url) for b in self._policy.backends()}
        if any(reports.values()):  # a policy that learns (tr --tr-mode cost-aware) says what it believes
            cost = GaugeMetricFamily(
                "thunderagent_cost_aware",
                "What the cost-aware tr believes per backend: overcommit (limits = fixed limits x it), share "
                "(full-thrash recompute share of the engine's time), prefill_seconds_per_token (learned or given)",
                labels=["backend", "name"],
            )
            for url, report in reports.items():
                for name, value in report.items():
                    cost.add_metric([redact_url(url), name], value)
            yield cost

        engine = GaugeMetricFamily(
            "thunderagent_engine_metric",
            "Latest scraped engine value (--metrics)",
            labels=["backend", "name"],
        )
        for url, st in self._backends().items():
            for name in (
                "vllm:num_requests_running",
                "vllm:num_requests_waiting",
                "vllm:kv_cache_usage_perc",
            ):
                if name in st.latest:
                    engine.add_metric([redact_url(url), name], st.latest[name])
        yield engine


class Telemetry:
    """The app's Prometheus registry and the per-request instruments."""

    def __init__(
        self, policy: "Policy", programs: "ProgramRegistry", backends: Callable[[], dict[str, "BackendState"]]
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_StateCollector(policy, programs, backends))
        self.requests = Counter(
            "thunderagent_requests",
            "Chat completion requests by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "thunderagent_request_duration_seconds",
            "Arrival to last byte of chat completion requests (queue wait included)",
            ["stream"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.wait = Histogram(
            "thunderagent_queue_wait_seconds",
            "Time requests were held by the scheduler before forwarding",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.expired = Counter(
            "thunderagent_programs_expired",
            "Programs expired by --idle-ttl or --max-programs",
            registry=self.registry,
        )
        self.released = Counter(
            "thunderagent_programs_released", "Programs released by clients", registry=self.registry
        )
