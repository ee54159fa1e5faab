"""Backends: capacity discovery, metrics scraping, health with hysteresis.

Everything here is I/O at the edges plus small pure parsers (`parse_sglang_capacity`, `parse_skyrl_metrics`);
vLLM's /metrics text is read by ThunderAgent/promtext.py (`parse_vllm_metrics`, `parse_cache_config`).

* Capacity (KV tokens) is fetched at start and retried until known (upstream tries once and then treats
  the backend as unbounded forever): vLLM `vllm:cache_config_info` labels block_size × num_gpu_blocks
  (summed over engines), SGLang `/get_server_info` max_total_num_tokens, SkyRL engines × 200,000.
* Metrics (`--metrics`) are parsed by promtext.py (prometheus_client's text parser underneath): exponents,
  `+Inf`, several engines / models (counters summed, ratio gauges averaged), vLLM V0 names mapped to V1 names.
* Every fetch here has a total deadline and a size cap (`bounded_get`): a backend that trickles bytes or
  answers a huge /metrics costs one failed attempt, never a hung loop; large texts are parsed off the
  event loop.
* Health has hysteresis: unhealthy after `fail_threshold` consecutive failures, healthy again after
  `ok_threshold` consecutive successes (upstream flips on one failed scrape).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import httpx
# the parsers of /metrics text live in promtext.py; MetricsParseError and bucket_key stay importable from here
from ThunderAgent.policy.limits import bucket_key  # noqa: F401
from ThunderAgent.promtext import MetricsParseError, parse_cache_config, parse_vllm_metrics  # noqa: F401

log = logging.getLogger("thunderagent.backends")

SKYRL_TOKENS_PER_ENGINE = 200_000  # upstream's fixed guess: SkyRL exposes no KV capacity
HISTORY_SIZE = 12
PROBE_TIMEOUT = 5.0  # total seconds for one fetch (the proxy passes --probe-timeout)
MAX_FETCH_BYTES = 8 * 1024 * 1024  # largest answer read (the proxy passes --max-metrics-bytes)
PARSE_OFF_LOOP_BYTES = 64 * 1024  # texts larger than this are parsed in a worker thread


class FetchTooLarge(ValueError):
    pass


async def bounded_get(
    client: httpx.AsyncClient, url: str, timeout: float = PROBE_TIMEOUT, max_bytes: int = MAX_FETCH_BYTES
) -> tuple[int, bytes]:
    """GET `url` -> (status, body) within `timeout` seconds in total (connect, headers and every byte) and
    at most `max_bytes` of body. Raises TimeoutError, FetchTooLarge or httpx.HTTPError."""
    async with asyncio.timeout(timeout):
        async with client.stream("GET", url) as r:
            declared = r.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise FetchTooLarge(f"answer of {declared} bytes exceeds {max_bytes}")
            chunks: list[bytes] = []
            n = 0
            async for chunk in r.aiter_bytes():  # decoded: the cap bounds what is held
                n += len(chunk)
                if n > max_bytes:
                    raise FetchTooLarge(f"answer exceeds {max_bytes} bytes")
                chunks.append(chunk)
            return r.status_code, b"".join(chunks)


def _text(body: bytes) -> str:
    return body.decode("utf-8", "replace")


async def _off_loop(fn: Any, text: str) -> Any:
    return await asyncio.to_thread(fn, text) if len(text) > PARSE_OFF_LOOP_BYTES else fn(text)


FETCH_ERRORS = (httpx.HTTPError, ValueError, TimeoutError, OSError)

# The series the proxy (and the engine-metrics JSONL) cares about.
VLLM_SERIES = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:num_preemptions_total",
    "vllm:request_success_total",
)


def parse_sglang_capacity(info: Any) -> int | None:
    """KV capacity from SGLang's /get_server_info JSON (top-level or nested `server_info`, then
    internal_states[].memory_usage.token_capacity)."""
    if not isinstance(info, dict):
        return None
    for obj in (info, info.get("server_info")):
        if isinstance(obj, dict):
            v = _positive_int(obj.get("max_total_num_tokens"))
            if v:
                return v
    best = None
    states = info.get("internal_states")
    if isinstance(states, list):
        for st in states:
            mu = st.get("memory_usage") if isinstance(st, dict) else None
            v = _positive_int(mu.get("token_capacity")) if isinstance(mu, dict) else None
            if v and (best is None or v > best):
                best = v
    return best


def parse_skyrl_metrics(obj: Any) -> dict[str, float] | None:
    """SkyRL's JSON /metrics: running/waiting/preemptions summed, KV usage averaged (0-100 -> 0-1).
    None when no healthy engine reports."""
    engines = obj.get("engines") if isinstance(obj, dict) else None
    if not isinstance(engines, list):
        return None
    ok = [e for e in engines if isinstance(e, dict) and "error" not in e]
    if not ok:
        return None
    return {
        "vllm:num_requests_running": float(sum(e.get("num_running_reqs", 0) or 0 for e in ok)),
        "vllm:num_requests_waiting": float(sum(e.get("num_waiting_reqs", 0) or 0 for e in ok)),
        "vllm:num_preemptions_total": float(sum(e.get("num_cumulative_preemption", 0) or 0 for e in ok)),
        "vllm:kv_cache_usage_perc": sum(float(e.get("kv_cache_usage_pct", 0) or 0) for e in ok)
        / len(ok)
        / 100.0,
        "num_engines": float(len(engines)),
    }


def _positive_int(v: Any) -> int | None:
    try:
        n = int(float(v))
    except (TypeError, ValueError):
        return None
    return n if n > 0 else None


@dataclass
class HealthTracker:
    """Healthy/unhealthy with hysteresis over consecutive probe results."""

    fail_threshold: int = 3
    ok_threshold: int = 2
    healthy: bool = True
    _fails: int = 0
    _oks: int = 0

    def record(self, ok: bool) -> bool | None:
        """Feed one result; returns the new state when it changed, else None."""
        if ok:
            self._fails = 0
            self._oks += 1
            if not self.healthy and self._oks >= self.ok_threshold:
                self.healthy = True
                return True
        else:
            self._oks = 0
            self._fails += 1
            if self.healthy and self._fails >= self.fail_threshold:
                self.healthy = False
                return False
        return None


@dataclass
class BackendState:
    """What the proxy knows about one backend beyond the policy: cache config, scraped metrics, health."""

    url: str
    backend_type: str = "vllm"
    block_size: int | None = None
    num_gpu_blocks: int | None = None
    capacity: int | None = None
    num_engines: int | None = None
    health: HealthTracker = field(default_factory=HealthTracker)
    latest: dict[str, float] = field(default_factory=dict)
    last_updated: float | None = None  # Unix time of the last successful scrape
    history: deque[dict[str, float]] = field(default_factory=lambda: deque(maxlen=HISTORY_SIZE))
    last_error: str | None = None

    def cache_config_json(self) -> dict[str, Any] | None:
        if self.capacity is None:
            return None
        if self.backend_type == "sglang":
            return {"total_tokens_capacity": self.capacity}
        if self.backend_type == "skyrl":
            return {
                "total_tokens_capacity": self.capacity,
                "num_engines": self.num_engines,
                "backend_type": "skyrl",
            }
        return {
            "block_size": self.block_size,
            "num_gpu_blocks": self.num_gpu_blocks,
            "total_tokens_capacity": self.capacity,
        }

    def metrics_json(self) -> dict[str, Any] | None:
        """Upstream ThunderAgent's `metrics` block of /metrics?format=json, from the latest scrape."""
        if not self.latest:
            return None
        m = self.latest
        q = m.get("vllm:prefix_cache_queries_total", 0.0)
        h = m.get("vllm:prefix_cache_hits_total", 0.0)
        return {
            "num_requests_running": m.get("vllm:num_requests_running", 0.0),
            "num_requests_waiting": m.get("vllm:num_requests_waiting", 0.0),
            "kv_cache_usage_perc": round(m.get("vllm:kv_cache_usage_perc", 0.0), 4),
            "prefix_cache_hit_rate": round(h / q, 4) if q else 0.0,
            "prefix_cache_queries": q,
            "prefix_cache_hits": h,
            "prompt_tokens_total": m.get("vllm:prompt_tokens_total", 0.0),
            "generation_tokens_total": m.get("vllm:generation_tokens_total", 0.0),
            "num_preemptions": m.get("vllm:num_preemptions_total", 0.0),
            "requests_completed": m.get("vllm:request_success_total", 0.0),
            "last_updated": self.last_updated,
            "history_size": len(self.history),
        }


async def fetch_capacity(
    client: httpx.AsyncClient, st: BackendState, timeout: float = PROBE_TIMEOUT, max_bytes: int = MAX_FETCH_BYTES
) -> int | None:
    """Ask the backend for its KV capacity in tokens; fills `st`. None if not (yet) available."""
    try:
        if st.backend_type == "sglang":
            status, body = await bounded_get(client, f"{st.url}/get_server_info", timeout, max_bytes)
            cap = parse_sglang_capacity(json.loads(body)) if status == 200 else None
        elif st.backend_type == "skyrl":
            status, body = await bounded_get(client, f"{st.url}/metrics", timeout, max_bytes)
            parsed = parse_skyrl_metrics(json.loads(body)) if status == 200 else None
            if parsed:
                st.num_engines = int(parsed["num_engines"])
            cap = st.num_engines * SKYRL_TOKENS_PER_ENGINE if parsed and st.num_engines else None
        else:
            status, body = await bounded_get(client, f"{st.url}/metrics", timeout, max_bytes)
            cc = await _off_loop(parse_cache_config, _text(body)) if status == 200 else None
            cap = None
            if cc:
                st.block_size, st.num_gpu_blocks = cc
                cap = cc[0] * cc[1]
    except FETCH_ERRORS as e:
        st.last_error = f"{type(e).__name__}: {e}"
        return None
    if cap:
        st.capacity = cap
    return cap


async def scrape(
    client: httpx.AsyncClient, st: BackendState, timeout: float = PROBE_TIMEOUT, max_bytes: int = MAX_FETCH_BYTES
) -> bool:
    """One metrics scrape; stores the values and returns whether it succeeded."""
    try:
        status, body = await bounded_get(client, f"{st.url}/metrics", timeout, max_bytes)
        if status != 200:
            st.last_error = f"HTTP {status}"
            return False
        if st.backend_type == "skyrl":
            values = parse_skyrl_metrics(json.loads(body))
            if values is None:
                st.last_error = "no healthy SkyRL engine"
                return False
        else:
            values = await _off_loop(parse_vllm_metrics, _text(body))
    except FETCH_ERRORS as e:
        st.last_error = f"{type(e).__name__}: {e}"
        return False
    st.latest = values
    st.last_updated = time.time()
    st.history.append(values)
    st.last_error = None
    return True


async def probe_health(client: httpx.AsyncClient, st: BackendState, timeout: float = PROBE_TIMEOUT) -> bool:
    """Liveness: GET /health answers 200 within `timeout` (vLLM and SGLang serve it)."""
    try:
        status, _ = await bounded_get(client, f"{st.url}/health", timeout, 64 * 1024)
    except FETCH_ERRORS as e:
        st.last_error = f"health: {type(e).__name__}: {e}"
        return False
    return status == 200
