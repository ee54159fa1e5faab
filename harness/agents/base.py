"""The one contract every agent runner implements (synthetic, openhands, mini-swe-agent).

The runner (harness/runner.py) calls `await agent.run_instance(instance, program_id, endpoint, sink)` for
each SWE-bench instance, keeping N of them in flight. The agent:
  * sends every LLM call of the instance with `program_id` (when `endpoint.thunderagent` is true);
  * reports one StepRecord per LLM call to `sink` (the runner stamps run_id/arm and writes it);
  * calls `release_program(endpoint, program_id)` exactly once in a `finally` (also on error/cancel) when
    talking to ThunderAgent;
  * returns an InstanceResult (never raises for an agent-level failure; it reports it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import httpx

from ThunderAgent.records import StepRecord

Instance = dict[str, Any]  # a SWE-bench row (instance_id, repo, base_commit, problem_statement, ...)
StepSink = Callable[[StepRecord], None]


@dataclass(frozen=True)
class Endpoint:
    base_url: str  # OpenAI base URL including /v1, e.g. http://127.0.0.1:8300/v1
    model: str  # served model name
    thunderagent: bool  # True: send program_id and release programs; False: raw engine
    api_key: str = "dummy"

    @property
    def root(self) -> str:
        """Base URL without a trailing /v1 (where /programs/release lives)."""
        url = self.base_url.rstrip("/")
        return url[: -len("/v1")] if url.endswith("/v1") else url


@dataclass
class InstanceResult:
    instance_id: str
    program_id: str
    status: str  # "ok" | "error" | "timeout" | "cancelled"
    steps: int = 0
    patch: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Agent(Protocol):
    name: str

    async def run_instance(
        self, instance: Instance, program_id: str, endpoint: Endpoint, sink: StepSink
    ) -> InstanceResult: ...


async def release_program(endpoint: Endpoint, program_id: str, client: httpx.AsyncClient | None = None,
                          timeout: float = 5.0) -> bool | None:
    """POST /programs/release for `program_id`. Returns `released` from the proxy, or None when the
    call failed (logged by the caller; never raised) or the endpoint is not ThunderAgent."""
    if not endpoint.thunderagent:
        return None
    url = endpoint.root + "/programs/release"
    headers = {"Authorization": f"Bearer {endpoint.api_key}"}
    try:
        if client is None:
            async with httpx.AsyncClient(timeout=timeout) as c:
                r = await c.post(url, json={"program_id": program_id}, headers=headers)
        else:
            r = await client.post(url, json={"program_id": program_id}, headers=headers, timeout=timeout)
        if r.status_code != 200:
            return None
        return bool(r.json().get("released"))
    except (httpx.HTTPError, ValueError):
        return None
