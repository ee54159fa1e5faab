"""Servers that are already running: the engine the "vllm" arm talks to (`--endpoint URL`), an already running
ThunderAgent for the "thunderagent" arm (`--proxy URL`), or, with neither, the ones `thunderbench up` recorded
in its state file. Nothing here starts a process: it finds the URLs, checks they answer, and reads what the
engine says about itself (its model name; the simulator server also says it is simulated, its profile and its
time scale, which `run` needs to label and time the run).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import httpx

from harness.launch.process import LaunchError


@dataclass(frozen=True)
class Targets:
    engine: str  # engine root URL (no /v1): agents of the vllm arm talk to it; its /metrics is scraped
    proxy: str | None  # ThunderAgent root URL, or None (the thunderagent arm then starts its own proxy)
    source: str  # where the URLs came from: "--endpoint/--proxy" or the `up` state file
    models: tuple[str, ...] = ()  # what the engine's /v1/models lists
    simulated: bool = False  # the engine is the simulator server (it says so in /v1/models)
    profile: str | None = None
    time_scale: float | None = None

    def model_for(self, wanted: str) -> str:
        """The model name to request: the recipe's when the engine serves it, else the engine's only model."""
        if not self.models or wanted in self.models:
            return wanted
        if len(self.models) == 1:
            return self.models[0]
        raise LaunchError(f"the engine at {self.engine} serves {', '.join(self.models)}, not the recipe's model "
                          f"{wanted!r}: set the recipe's served_model_name to one of them")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def root_url(url: str, flag: str) -> str:
    """'http://h:8100/v1/' -> 'http://h:8100' (both spellings are accepted); anything but http(s) is an error."""
    u = url.strip().rstrip("/")
    if not u.startswith(("http://", "https://")) or len(u.split("://", 1)[1]) == 0:
        raise LaunchError(f"{flag} {url!r}: give an http(s) URL, e.g. http://127.0.0.1:8100")
    return u[:-3] if u.endswith("/v1") else u


def _get_json(url: str, what: str, fix: str) -> Any:
    try:
        r = httpx.get(url, timeout=10.0)
    except httpx.HTTPError as e:
        raise LaunchError(f"{what} at {url} does not answer ({type(e).__name__}): {fix}") from None
    if r.status_code != 200:
        raise LaunchError(f"{what} at {url} answered HTTP {r.status_code}: {fix}")
    try:
        return r.json()
    except ValueError:
        raise LaunchError(f"{what} at {url} did not answer JSON: {fix}") from None


def probe(engine: str | None, proxy: str | None, source: str) -> Targets:
    """Check the servers answer and read the engine's self-description. With only a proxy, the engine is the
    proxy's single backend (its /health lists them)."""
    if proxy is not None:
        health = _get_json(proxy + "/health", "ThunderAgent", "start it or fix --proxy")
        if not isinstance(health, dict) or "router_mode" not in health:
            raise LaunchError(f"{proxy}/health does not look like ThunderAgent's (no router_mode): fix --proxy")
        if engine is None:
            backends = [str(b) for b in health.get("backends") or []]
            if len(backends) != 1:
                raise LaunchError(f"ThunderAgent at {proxy} has {len(backends)} backends: name the engine whose "
                                  "/metrics to scrape with --endpoint URL")
            engine = root_url(backends[0], "the proxy's backend")
    if engine is None:
        raise LaunchError("no engine URL: pass --endpoint URL")
    data = _get_json(engine + "/v1/models", "the engine", "start it or fix --endpoint")
    models = [m for m in (data.get("data") if isinstance(data, dict) else None) or [] if isinstance(m, dict)]
    first = models[0] if models else {}
    simulated = bool(first.get("simulated"))
    ts = first.get("time_scale") if simulated else None
    return Targets(engine=engine, proxy=proxy, source=source, models=tuple(str(m.get("id")) for m in models),
                   simulated=simulated, profile=first.get("profile") if simulated else None,
                   time_scale=float(ts) if ts else (1.0 if simulated else None))


def from_up_state() -> tuple[str, str | None, str] | None:
    """(engine URL, proxy URL or None, source) of what `thunderbench up` started, None when nothing is up.
    A state file whose processes died is an error (not a silent fallback to another engine)."""
    from harness.launch import process

    state = process.load_state()
    if not state:
        return None
    path = process.state_dir() / "state.json"
    dead = [p.name for p in state["processes"] if not p.alive()]
    if dead:
        raise LaunchError(f"`thunderbench up` recorded servers in {path} but {', '.join(dead)} is not running: "
                          "run `thunderbench down`, then `up` again (or pass --endpoint/--proxy)")
    ends = state.get("endpoints") or {}
    if not ends.get("engine"):
        raise LaunchError(f"{path} records no endpoints (written by an older `up`): run `thunderbench down` "
                          "and `up` again, or pass --endpoint/--proxy")
    return ends["engine"], ends.get("proxy"), f"thunderbench up ({path})"


def resolve(endpoint: str | None, proxy: str | None, *, use_up_state: bool) -> Targets | None:
    """The running servers to measure, or None when the run starts its own engine."""
    if endpoint is not None or proxy is not None:
        eng = root_url(endpoint, "--endpoint") if endpoint is not None else None
        px = root_url(proxy, "--proxy") if proxy is not None else None
        return probe(eng, px, "--endpoint/--proxy")
    if not use_up_state:
        return None
    up = from_up_state()
    if up is None:
        return None
    return probe(up[0], up[1], up[2])


__all__ = ["Targets", "resolve", "probe", "root_url", "from_up_state"]
