"""Shared machinery of the real-agent end-to-end tests (test_agents_openhands.py, test_agents_miniswe.py).

Topology: agent library -> the REAL ThunderAgent proxy (`python -m ThunderAgent --router default
--profile`, a subprocess) -> the scripted OpenAI-compatible model (tests/fakes/scripted_llm.py).

What is observable where: the proxy strips `program_id` before forwarding, so the scripted model never sees
it; the proxy's own per-call records (`--profile` -> step_records.jsonl, one StepRecord per forwarded call
with its program_id) and its log ("program <id> released") are where program ids are checked. The
scripted model tells which instance each call belonged to (by its problem statement), so
"every call carried its instance's program_id" = for every instance, the proxy recorded exactly as many
calls under that instance's program id as the model received for that instance, and nothing else.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest

from harness.agents import threaded
from harness.agents.base import Endpoint, InstanceResult
from harness.agents.predictions import read_predictions
from ThunderAgent.records import StepRecord, read_step_records
from tests.fakes.scripted_llm import ScriptedLLM

# before anything imports litellm: no remote model-cost-map fetch (no network here), quiet start-up
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("OPENHANDS_SUPPRESS_BANNER", "1")
os.environ.setdefault("MSWEA_SILENT_STARTUP", "1")

REPO = Path(__file__).resolve().parents[2]
TOY = REPO / "harness" / "fixtures" / "toy" / "instances.jsonl"


def require(module: str, extra: str) -> None:
    """Import `module` or fail (CI) / skip (elsewhere) with the command that installs it."""
    if sys.version_info < (3, 12):
        msg = f"the real agents need Python >= 3.12 (this is {sys.version.split()[0]})"
    else:
        try:
            __import__(module)
            return
        except ImportError as e:
            msg = (f"{module} is not installed ({e}); install the agent extras: "
                   f"THUNDERBENCH_EXTRAS='{extra}' bash scripts/setup/setup.sh")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(msg)
    pytest.skip(msg)


def toy_instances() -> list[dict[str, Any]]:
    return [json.loads(line) for line in TOY.read_text().splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proxy:
    url: str
    profile_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes]

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def records(self) -> list[StepRecord]:
        path = self.profile_dir / "step_records.jsonl"
        return read_step_records(path) if path.exists() else []

    def wait_records(self, n: int, deadline_s: float = 15.0) -> list[StepRecord]:
        """The profile writer is asynchronous: poll (bounded) until `n` records are on disk."""
        end = time.monotonic() + deadline_s
        while True:
            recs = self.records()
            if len(recs) >= n or time.monotonic() > end:
                return recs
            time.sleep(0.05)

    def released_in_log(self) -> Counter[str]:
        text = self.log_path.read_text(errors="replace")
        return Counter(re.findall(r"program (\S+) released", text))

    def programs(self) -> dict[str, Any]:
        return httpx.get(self.url + "/programs", timeout=5).json()


def start_proxy(backend_url: str, tmp: Path, router: str = "default") -> Iterator[Proxy]:
    """Generator for a fixture: the real proxy as a subprocess, ready when /health answers."""
    port = free_port()
    profile_dir = tmp / "proxy-profile"
    log_path = tmp / "proxy.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ThunderAgent", "--router", router, "--backends", backend_url,
         "--port", str(port), "--profile", "--profile-dir", str(profile_dir), "--log-level", "info"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"proxy exited {proc.returncode}: {log_path.read_text()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > end:
                raise RuntimeError(f"proxy not healthy within 60 s: {log_path.read_text()[-2000:]}")
            time.sleep(0.1)
        yield Proxy(url, profile_dir, log_path, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@dataclass
class Run:
    results: dict[str, InstanceResult]
    pids: dict[str, str]  # instance_id -> program_id
    client_steps: list[StepRecord]
    releases: list[tuple[str, float, bool | None]]  # (program_id, wall time, released)
    wall_s: float
    loop_lag_max_s: float
    predictions: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


async def _lag_probe(stop: asyncio.Event, out: list[float]) -> None:
    """Measures how long the event loop is blocked (the agents must keep it free)."""
    while not stop.is_set():
        t = time.monotonic()
        await asyncio.sleep(0.05)
        out.append(time.monotonic() - t - 0.05)


def run_agent(agent: Any, instances: list[dict[str, Any]], endpoint: Endpoint, tag: str,
              monkeypatch: pytest.MonkeyPatch) -> Run:
    """Run `agent` on `instances` concurrently (one program id each), recording releases as the client
    made them (the proxy's answer included)."""
    releases: list[tuple[str, float, bool | None]] = []
    real_release = threaded.release_program

    async def recording_release(ep: Endpoint, program_id: str, *a: Any, **kw: Any) -> bool | None:
        released = await real_release(ep, program_id, *a, **kw)
        releases.append((program_id, time.time(), released))
        return released

    monkeypatch.setattr(threaded, "release_program", recording_release)
    steps: list[StepRecord] = []
    pids = {i["instance_id"]: f"{tag}-{i['instance_id']}" for i in instances}

    async def main() -> tuple[list[InstanceResult], float]:
        stop, lags = asyncio.Event(), []
        probe = asyncio.create_task(_lag_probe(stop, lags))
        try:
            res = await asyncio.gather(*[agent.run_instance(i, pids[i["instance_id"]], endpoint, steps.append)
                                         for i in instances])
        finally:
            stop.set()
            await probe
        return res, max(lags, default=0.0)

    t0 = time.time()
    results, lag = asyncio.run(main())
    return Run({r.instance_id: r for r in results}, pids, steps, releases, time.time() - t0, lag,
               predictions=getattr(agent, "predictions_path", None))


def check_program_ids(run: Run, proxy: Proxy, model: ScriptedLLM, since: int = 0) -> dict[str, list[StepRecord]]:
    """Every call the model received for instance X (from request `since` on) was recorded by the proxy
    under X's program id, numbered 1..n, and the agent's own step records agree."""
    calls = [r for r in model.requests[since:] if r.path.endswith("/chat/completions")]
    received = Counter(r.instance_id for r in calls)
    assert None not in received, "the scripted model got a call it could not attribute to an instance"
    expected = sum(received[iid] for iid in run.pids)
    recs = [r for r in proxy.wait_records(expected) if r.program_id in run.pids.values()]
    by_pid: dict[str, list[StepRecord]] = {}
    for r in recs:
        by_pid.setdefault(r.program_id, []).append(r)
    for iid, pid in run.pids.items():
        assert len(by_pid.get(pid, [])) == received[iid] > 0, (
            f"{iid}: model got {received[iid]} calls, proxy recorded {len(by_pid.get(pid, []))} for {pid}")
        assert sorted(r.step for r in by_pid[pid]) == list(range(1, received[iid] + 1))
    for r in calls:
        assert "program_id" not in r.body, "the proxy forwarded program_id to the engine"
    # the agent's own step records (client side): one per call, same count as the proxy saw
    client = Counter(r.program_id for r in run.client_steps)
    for pid, rs in by_pid.items():
        assert client[pid] == len(rs), f"{pid}: client recorded {client[pid]} calls, proxy {len(rs)}"
    return by_pid


def check_releases(run: Run, proxy: Proxy, by_pid: dict[str, list[StepRecord]]) -> None:
    """Exactly one release per program, accepted by the proxy, after the program's last call."""
    counts = Counter(pid for pid, _, _ in run.releases)
    logged = proxy.released_in_log()
    for iid, pid in run.pids.items():
        assert counts[pid] == 1, f"{pid}: {counts[pid]} release calls"
        assert logged[pid] == 1, f"{pid}: proxy logged {logged[pid]} releases"
        t_rel = next(t for p, t, _ in run.releases if p == pid)
        released = next(ok for p, _, ok in run.releases if p == pid)
        assert released is True, f"{pid}: proxy answered released={released}"
        assert run.results[iid].extra.get("released") is True
        last_end = max(r.end for r in by_pid[pid])
        assert last_end <= t_rel, f"{pid}: a call ended {last_end - t_rel:.3f} s after the release"
    live = proxy.programs()
    assert not set(live) & set(run.pids.values()), f"programs still live after release: {sorted(live)}"


def check_predictions(run: Run, instances: list[dict[str, Any]], model_name: str) -> dict[str, dict[str, Any]]:
    assert run.predictions is not None and Path(run.predictions).exists()
    preds = read_predictions(run.predictions)
    assert set(preds) == {i["instance_id"] for i in instances}
    lines = Path(run.predictions).read_text().splitlines()
    assert len(lines) == len(instances), "one prediction line per instance"
    for p in preds.values():
        assert p["model_name_or_path"] == model_name
        assert isinstance(p["model_patch"], str)
        assert p["program_id"] == run.pids[p["instance_id"]]
    return preds


Expect = Callable[[str], str]  # instance_id -> "ok" | "error" | "timeout"
