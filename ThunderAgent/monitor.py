"""The backend monitor: health, KV capacity discovery and engine metrics of every backend, told to the
policy through the scheduler.

  * capacity: until every backend's KV capacity is known, /metrics (vLLM's cache_config_info) is asked
    again with a growing delay (0.5 s doubling to 10 s);
  * health: a request that reaches a backend or fails to is one observation; /health of backends marked
    unhealthy is probed every --health-interval, so one comes back when it recovers;
  * metrics: with --metrics (or a policy that learns from the engine) /metrics is scraped every
    --metrics-interval; a failed scrape is followed by a /health probe.

The loops never die: a failing round is logged and the next one runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import httpx

from ThunderAgent.backends import BackendState, fetch_capacity, probe_health, scrape
from ThunderAgent.config import Config
from ThunderAgent.logsafe import redact_url
from ThunderAgent.scheduling import ProxyScheduler

log = logging.getLogger("thunderagent")


async def every(interval: float, what: str, fn: Callable[[], Awaitable[None] | None]) -> None:
    """Call `fn` (awaiting it when it is a coroutine) every `interval` seconds, forever; failures are
    logged, never raised."""
    while True:
        await asyncio.sleep(interval)
        try:
            r = fn()
            if asyncio.iscoroutine(r):
                await r
        except Exception:  # noqa: BLE001 - a loop never dies
            log.exception("%s failed", what)


class BackendMonitor:
    """Watches `backends` (the proxy's own BackendState objects) and tells `scheduler` what changed."""

    def __init__(self, config: Config, scheduler: ProxyScheduler, backends: dict[str, BackendState]) -> None:
        self.config = config
        self.scheduler = scheduler
        self.backends = backends
        probe = config.probe_timeout
        self.probe_client = httpx.AsyncClient(
            timeout=httpx.Timeout(probe, connect=min(probe, config.proxy_connect_timeout))
        )

    def observe_health(self, url: str, ok: bool) -> None:
        st = self.backends.get(url)
        if st is None:
            return
        changed = st.health.record(ok)
        if changed is not None:
            log.warning("backend %s is now %s", redact_url(url), "healthy" if changed else "UNHEALTHY")
            self.scheduler.set_healthy(url, changed)

    async def discover_capacity_once(self) -> bool:
        """One capacity attempt for every backend still unknown; True when all are known."""
        pending = [st for st in self.backends.values() if st.capacity is None]
        cfg = self.config
        results = await asyncio.gather(
            *(fetch_capacity(self.probe_client, st, cfg.probe_timeout, cfg.max_metrics_bytes) for st in pending)
        )
        for st, cap in zip(pending, results):
            if cap is not None:
                log.info("backend %s: KV capacity %d tokens", redact_url(st.url), cap)
                self.scheduler.set_capacity(st.url, cap)
        return all(st.capacity is not None for st in self.backends.values())

    async def scrape_or_probe(self, st: BackendState) -> tuple[bool, bool]:
        """(scraped, alive): a failed scrape is followed by a /health probe, so a backend whose /metrics
        answers 404, 500 or garbage while it serves is not marked unhealthy."""
        cfg = self.config
        if await scrape(self.probe_client, st, cfg.probe_timeout, cfg.max_metrics_bytes):
            return True, True
        return False, await probe_health(self.probe_client, st, cfg.probe_timeout)

    async def scrape_once(self) -> None:
        sts = list(self.backends.values())
        results = await asyncio.gather(*(self.scrape_or_probe(st) for st in sts))
        for st, (ok, alive) in zip(sts, results):
            self.observe_health(st.url, alive)
            if ok and self.scheduler.learns_from_engine:  # e.g. a cost-aware tr learns prefill cost and load
                self.scheduler.observe_engine(st.url, st.latest)

    async def probe_unhealthy_once(self) -> None:
        """Probe /health of every backend marked unhealthy, so it comes back when it recovers, in every mode
        (without --metrics nothing else would ever reach a backend no program is placed on)."""
        sts = [st for st in self.backends.values() if not st.health.healthy]
        oks = await asyncio.gather(*(probe_health(self.probe_client, st, self.config.probe_timeout) for st in sts))
        for st, ok in zip(sts, oks):
            self.observe_health(st.url, ok)

    def any_healthy(self) -> bool:
        """Whether the policy counts any backend healthy."""
        return any(b.healthy for b in self.scheduler.policy.backends())

    def largest_capacity(self) -> int | None:
        """With tr: the largest backend KV capacity once every backend's is known, else None."""
        if not self.config.scheduling_enabled:
            return None
        caps = [st.capacity for st in self.backends.values()]
        if not caps or any(c is None for c in caps):
            return None
        return max(c for c in caps if c is not None)

    # --- loops -------------------------------------------------------------------------------------
    async def capacity_loop(self) -> None:
        delay = 0.5
        while not await self.discover_capacity_once():
            await asyncio.sleep(delay)
            delay = min(10.0, delay * 2)

    def loops(self) -> list[tuple[str, Awaitable[None]]]:
        """The monitor's background loops for this configuration, named."""
        cfg = self.config
        out: list[tuple[str, Awaitable[None]]] = [
            ("capacity", self.capacity_loop()),
            ("health", every(cfg.health_interval, "health probe", self.probe_unhealthy_once)),
        ]
        if (cfg.metrics or self.scheduler.learns_from_engine) and cfg.metrics_interval > 0:
            out.append(("metrics", every(cfg.metrics_interval, "metrics scrape", self.scrape_once)))
        return out

    async def aclose(self) -> None:
        await self.probe_client.aclose()
