"""The asyncio side of the real agents (harness/agents/threaded.py, steps.py) with a fake library:
release exactly once and only after the worker stopped, on every path; step records on the loop."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.agents.base import Endpoint, InstanceResult
from harness.agents.predictions import read_predictions
from harness.agents.steps import StepRecorder
from harness.agents.threaded import StopSignal, ThreadedAgent
from ThunderAgent.records import StepRecord
from tests.fakes.scripted_llm import ScriptedLLM


@dataclass
class FakeLibAgent(ThreadedAgent):
    """Makes `calls` fake LLM calls (each `call_s` long) unless stopped; `fail` raises inside."""

    calls: int = 3
    call_s: float = 0.01
    fail: bool = False
    name = "fake"

    def _run_sync(self, instance: dict, program_id: str, endpoint: Endpoint, recorder: StepRecorder,
                  stop: StopSignal, result: InstanceResult) -> None:
        self.thread = threading.current_thread()
        self.log: list[tuple[str, float]] = []
        try:
            for k in range(self.calls):
                if stop.is_set():
                    result.status, result.error = "error", "stopped"
                    return
                with recorder.call() as c:
                    time.sleep(self.call_s)
                    if self.fail and k == 1:
                        raise RuntimeError("model exploded")
                    c.usage_from({"usage": {"prompt_tokens": 10 + k, "completion_tokens": 2,
                                            "prompt_tokens_details": {"cached_tokens": 5}}})
                self.log.append(("call", time.time()))
            result.status, result.patch = "ok", "diff --git a/x b/x\n"
        except RuntimeError as e:
            result.status, result.error = "error", str(e)
        finally:
            self.log.append(("worker-exit", time.time()))


@pytest.fixture
def server() -> Any:
    with ScriptedLLM({}, []) as s:  # serves POST /programs/release and records it
        yield s


def _run(agent: FakeLibAgent, server: ScriptedLLM, thunderagent: bool = True,
         cancel_after: float | None = None) -> tuple[InstanceResult | None, list[StepRecord], list[str]]:
    ep = Endpoint(base_url=server.base_url, model="m", thunderagent=thunderagent)
    records: list[StepRecord] = []
    sink_threads: list[str] = []

    def sink(r: StepRecord) -> None:
        sink_threads.append(threading.current_thread().name)
        records.append(r)

    async def main() -> InstanceResult | None:
        task = asyncio.create_task(agent.run_instance({"instance_id": "i-1"}, "pid-1", ep, sink))
        if cancel_after is None:
            return await task
        await asyncio.sleep(cancel_after)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return None

    return asyncio.run(main()), records, sink_threads


def test_ok_path_records_and_releases_once(server: ScriptedLLM, tmp_path: Path) -> None:
    agent = FakeLibAgent(predictions_path=tmp_path / "p.jsonl")
    r, recs, threads = _run(agent, server)
    assert r is not None and r.status == "ok" and r.steps == 3 and r.extra["released"] is True
    assert [x.step for x in recs] == [1, 2, 3] and all(x.program_id == "pid-1" for x in recs)
    assert recs[0].prompt_tokens == 10 and recs[0].cached_tokens == 5 and recs[0].http_status == 200
    assert set(threads) == {"MainThread"}, "the sink runs on the event loop, never on the library thread"
    assert [p for p, _ in server.releases] == ["pid-1"]
    assert server.releases[0][1] >= agent.log[-1][1], "released after the worker exited"
    pred = read_predictions(tmp_path / "p.jsonl")["i-1"]
    assert pred == {"instance_id": "i-1", "model_name_or_path": "fake/m", "model_patch": "diff --git a/x b/x\n",
                    "program_id": "pid-1", "status": "ok"}


def test_error_inside_a_call_is_recorded_and_released(server: ScriptedLLM) -> None:
    r, recs, _ = _run(FakeLibAgent(fail=True), server)
    assert r is not None and r.status == "error" and "exploded" in (r.error or "")
    assert [x.status for x in recs] == ["ok", "error"] and "RuntimeError" in (recs[1].error or "")
    assert len(server.releases) == 1


def test_timeout_stops_the_worker_before_releasing(server: ScriptedLLM, tmp_path: Path) -> None:
    agent = FakeLibAgent(calls=100, call_s=0.05, timeout_s=0.3, predictions_path=tmp_path / "p.jsonl")
    r, recs, _ = _run(agent, server)
    assert r is not None and r.status == "timeout" and r.extra["timed_out"]
    assert 1 <= len(recs) < 100
    assert len(server.releases) == 1 and server.releases[0][1] >= agent.log[-1][1]
    assert max(x.end for x in recs) <= server.releases[0][1]
    assert read_predictions(tmp_path / "p.jsonl")["i-1"]["status"] == "timeout"


def test_cancel_propagates_after_stop_and_release(server: ScriptedLLM, tmp_path: Path) -> None:
    agent = FakeLibAgent(calls=100, call_s=0.05, predictions_path=tmp_path / "p.jsonl")
    r, recs, _ = _run(agent, server, cancel_after=0.3)
    assert r is None
    assert len(server.releases) == 1 and server.releases[0][1] >= agent.log[-1][1]
    assert not agent.thread.is_alive()
    assert not (tmp_path / "p.jsonl").exists(), "no prediction for a cancelled instance"


def test_raw_engine_arm_never_releases(server: ScriptedLLM) -> None:
    r, recs, _ = _run(FakeLibAgent(), server, thunderagent=False)
    assert r is not None and r.status == "ok" and r.extra["released"] is None and len(recs) == 3
    assert server.releases == []


def test_failed_release_is_reported_not_raised() -> None:
    ep_dead = Endpoint(base_url="http://127.0.0.1:9/v1", model="m", thunderagent=True)  # nothing listens

    async def main() -> InstanceResult:
        return await FakeLibAgent(calls=1).run_instance({"instance_id": "i"}, "p", ep_dead, lambda r: None)

    r = asyncio.run(main())
    assert r.status == "ok" and r.extra["released"] is None


def test_stop_hooks_run_off_the_calling_thread() -> None:
    stop = StopSignal()
    seen: list[str] = []
    done = threading.Event()
    stop.on_stop(lambda: (seen.append(threading.current_thread().name), done.set()))
    stop.set()
    assert done.wait(5) and seen == ["agent-stop"]
    stop.on_stop(lambda: seen.append("late"))  # registered after the stop: runs at once
    assert seen[-1] == "late" and stop.is_set()


def test_step_recorder_without_a_loop_calls_the_sink_directly() -> None:
    out: list[StepRecord] = []
    rec = StepRecorder("p", "i", out.append)
    with rec.call() as c:
        c.usage_from(type("R", (), {"usage": type("U", (), {"prompt_tokens": 7, "completion_tokens": 1,
                                                            "prompt_tokens_details": None})()})())
    assert out[0].prompt_tokens == 7 and out[0].cached_tokens is None and json.loads(out[0].to_json())["step"] == 1


def test_more_programs_than_the_default_executor_run_at_once(server: ScriptedLLM) -> None:
    """asyncio.to_thread's executor caps at min(32, cores + 4) threads; every instance must really run."""
    n = 48
    active, peak, lock = [0], [0], threading.Lock()

    @dataclass
    class Blocking(ThreadedAgent):
        name = "blocking"

        def _run_sync(self, instance: dict, program_id: str, endpoint: Endpoint, recorder: StepRecorder,
                      stop: StopSignal, result: InstanceResult) -> None:
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            deadline = time.monotonic() + 10
            while peak[0] < n and time.monotonic() < deadline:  # hold until all are in (bounded)
                time.sleep(0.01)
            with lock:
                active[0] -= 1
            result.status = "ok"

    ep = Endpoint(base_url=server.base_url, model="m", thunderagent=False)

    async def main() -> list[InstanceResult]:
        agent = Blocking()
        return await asyncio.gather(*[agent.run_instance({"instance_id": f"i{k}"}, f"p{k}", ep, lambda r: None)
                                      for k in range(n)])

    results = asyncio.run(main())
    assert peak[0] == n and all(r.status == "ok" for r in results)
