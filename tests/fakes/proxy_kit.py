"""Helpers for proxy tests: run the app in-process (lifespan included) and policy test doubles.

    async with running_proxy(Config(backends=(fake.url,), router="default")) as (client, proxy):
        r = await client.post("/v1/chat/completions", json=...)

`SpyPolicy` wraps any policy and counts calls per program, so a test can assert the driving contract:
`on_request_end` exactly once per forwarded (or resumed) request. `HoldingPolicy` answers Wait for chosen
program ids so tests can drive held requests with explicit Resume/Reject actions.
"""

from __future__ import annotations

from collections import Counter
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import httpx

from ThunderAgent.app import create_app
from ThunderAgent.proxy import Proxy
from ThunderAgent.config import Config
from ThunderAgent.policy.base import Action, Admission, Wait
from ThunderAgent.policy.passthrough import PassthroughPolicy


@asynccontextmanager
async def running_proxy(config: Config, **kw: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Proxy]]:
    app = create_app(config, **kw)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy", timeout=30) as client:
            yield client, app.state.proxy


class SpyPolicy:
    """Delegates to `inner`, counting arrivals/ends/progress per program and recording end totals."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.arrivals: Counter[str] = Counter()
        self.arrival_tokens: list[tuple[str, int]] = []
        self.ends: Counter[str] = Counter()
        self.end_totals: list[tuple[str, int | None]] = []
        self.progress: Counter[str] = Counter()
        self.capacities: dict[str, int | None] = {}
        self.health: list[tuple[str, bool]] = []
        self.ticks = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def on_arrival(self, program_id: str, tokens: int, now: float) -> Admission:
        self.arrivals[program_id] += 1
        self.arrival_tokens.append((program_id, tokens))
        return self.inner.on_arrival(program_id, tokens, now)

    def on_request_end(self, program_id: str, now: float, total_tokens: int | None) -> list[Action]:
        self.ends[program_id] += 1
        self.end_totals.append((program_id, total_tokens))
        return self.inner.on_request_end(program_id, now, total_tokens)

    def on_progress(self, program_id: str, tokens: int) -> None:
        self.progress[program_id] += tokens
        self.inner.on_progress(program_id, tokens)

    def set_capacity(self, url: str, tokens: int | None, now: float) -> list[Action]:
        self.capacities[url] = tokens
        return self.inner.set_capacity(url, tokens, now)

    def set_healthy(self, url: str, healthy: bool, now: float) -> list[Action]:
        self.health.append((url, healthy))
        return self.inner.set_healthy(url, healthy, now)

    def tick(self, now: float) -> list[Action]:
        self.ticks += 1
        return self.inner.tick(now)

    def balanced(self) -> bool:
        return self.arrivals == self.ends


class HoldingPolicy(PassthroughPolicy):
    """The pass-through policy, except that programs in `hold` get Wait (their request is held)."""

    def __init__(self, config: Config, hold: set[str]) -> None:
        super().__init__(config)
        self.hold = hold

    def on_arrival(self, program_id: str, tokens: int, now: float) -> Admission:
        admission = super().on_arrival(program_id, tokens, now)
        return Wait() if program_id in self.hold else admission


def chat(content: str = "hello", **extra: Any) -> dict[str, Any]:
    """A minimal chat completion body."""
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 8, **extra}
