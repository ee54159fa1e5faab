"""The runner: exactly N in flight, closed loop, resume without duplicates (also after a real SIGKILL),
graceful stop with release; the synthetic agent's requests against a mock OpenAI endpoint."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from harness.agents.base import Endpoint, InstanceResult
from harness.agents.synthetic import SyntheticAgent, filler
from harness.datasets import program_id_for
from harness.records import RunManifest, read_instance_events, read_step_records
from harness.runner import RunConfig, Runner, RunnerError
from harness.workload import Trajectory, Turn
from ThunderAgent.records import StepRecord

REPO = Path(__file__).resolve().parents[2]


class FakeAgent:
    """Emits `steps` step records per instance, `delay` seconds apart; tracks concurrency and releases."""

    name = "synthetic"

    def __init__(self, steps: int = 3, delay: float = 0.002, fail: set[str] | None = None) -> None:
        self.steps, self.delay, self.fail = steps, delay, fail or set()
        self.running = 0
        self.max_running = 0
        self.released: list[str] = []
        self.seen_ids: list[str] = []

    async def run_instance(self, instance, program_id, endpoint, sink):
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        self.seen_ids.append(program_id)
        try:
            for k in range(1, self.steps + 1):
                t = time.time()
                await asyncio.sleep(self.delay)
                sink(StepRecord(program_id, k, arrival=t, start=t, end=time.time(),
                                instance_id=instance["instance_id"], prompt_tokens=100 * k, completion_tokens=10))
            status = "error" if instance["instance_id"] in self.fail else "ok"
            return InstanceResult(instance["instance_id"], program_id, status, steps=self.steps)
        finally:
            self.running -= 1
            self.released.append(program_id)


def _instances(n: int) -> list[dict]:
    return [{"instance_id": f"inst-{i:03d}"} for i in range(n)]


def _cfg(tmp_path, n=10, programs=3, **kw) -> RunConfig:
    ep = Endpoint("http://127.0.0.1:9/v1", "m", thunderagent=False)
    return RunConfig(run_dir=tmp_path / "run", arm="vllm", programs=programs, endpoint=ep,
                     instances=_instances(n), progress=False, handle_signals=False, **kw)


def _check_no_duplicates(run_dir: Path) -> list[StepRecord]:
    recs = read_step_records(run_dir / "steps.jsonl")
    keys = Counter((r.program_id, r.step) for r in recs)
    assert all(c == 1 for c in keys.values()), "duplicate (program_id, step)"
    return recs


async def test_closed_loop_keeps_exactly_n_in_flight(tmp_path):
    agent = FakeAgent(steps=4)
    res = await Runner(_cfg(tmp_path, n=12, programs=3), agent).run()
    assert agent.max_running == 3 and res.ok == 12 and res.steps == 48 and res.started == 12
    recs = _check_no_duplicates(tmp_path / "run")
    assert {r.run_id for r in recs} == {res.run_id} and {r.arm for r in recs} == {"vllm"}
    ids = {r.program_id for r in recs}
    assert ids == {program_id_for(f"inst-{i:03d}", 0, res.run_id) for i in range(12)}
    m = RunManifest.read(tmp_path / "run" / "manifest.json")
    assert m.programs == 3 and m.end_time and m.git_revision and m.versions["python"]


async def test_resume_skips_finished_and_retries_errors(tmp_path):
    first = await Runner(_cfg(tmp_path, n=6), FakeAgent(fail={"inst-002"})).run()
    assert first.ok == 5 and first.errors == 1
    agent = FakeAgent()
    second = await Runner(_cfg(tmp_path, n=6), agent).run()
    assert second.skipped == 5 and second.started == 1 and second.ok == 1
    assert agent.seen_ids == [program_id_for("inst-002", 1, first.run_id)]  # fresh attempt, fresh program
    _check_no_duplicates(tmp_path / "run")
    third = await Runner(_cfg(tmp_path, n=6), FakeAgent()).run()
    assert third.started == 0 and third.skipped == 6


async def test_dir_of_another_experiment_is_refused(tmp_path):
    await Runner(_cfg(tmp_path, n=1), FakeAgent()).run()
    cfg = _cfg(tmp_path, n=1, programs=5)
    with pytest.raises(RunnerError, match="use another output directory"):
        await Runner(cfg, FakeAgent()).run()


async def test_duration_mode_cycles_instances_and_stops_at_the_deadline(tmp_path):
    agent = FakeAgent(steps=2, delay=0.01)
    cfg = _cfg(tmp_path, n=2, programs=4, duration_s=1.5)  # ~20 ms instances: dozens of rounds even on a loaded machine
    t = time.monotonic()
    res = await Runner(cfg, agent).run()
    assert time.monotonic() - t < 1.5 + 5.0  # stopped at the deadline, not after the list ran out (it never does)
    assert res.ok > 4  # the 2-instance list was cycled (rounds), 4 in flight
    events = read_instance_events(tmp_path / "run" / "instances.jsonl")
    assert max(e.round for e in events) >= 2
    assert agent.max_running == 4


async def test_stop_cancels_and_releases_live_programs(tmp_path):
    released: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/programs/release":
            released.append(json.loads(request.content)["program_id"])
            return httpx.Response(200, json={"released": True})
        return httpx.Response(404)

    class Hanging(FakeAgent):
        async def run_instance(self, instance, program_id, endpoint, sink):
            self.seen_ids.append(program_id)
            await asyncio.sleep(3600)

    ep = Endpoint("http://proxy.test/v1", "m", thunderagent=True)
    cfg = RunConfig(run_dir=tmp_path / "run", arm="thunderagent", programs=2, endpoint=ep, instances=_instances(5),
                    progress=False, handle_signals=False)
    runner = Runner(cfg, Hanging())
    orig = httpx.AsyncClient.__init__

    def patched(self, *a, **k):
        k.setdefault("transport", httpx.MockTransport(handler))
        orig(self, *a, **k)

    httpx.AsyncClient.__init__ = patched
    try:
        task = asyncio.create_task(runner.run())
        deadline = time.monotonic() + 5
        while len(runner.live) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        runner.stop()
        res = await asyncio.wait_for(task, 5)
    finally:
        httpx.AsyncClient.__init__ = orig
    assert res.interrupted and res.cancelled == 2
    assert sorted(released) == sorted(runner.agent.seen_ids)  # backstop release of both live programs
    ends = [e for e in read_instance_events(tmp_path / "run" / "instances.jsonl") if e.event == "end"]
    assert {e.status for e in ends} == {"cancelled"}


_CHILD = """
import asyncio, sys
sys.path.insert(0, {repo!r})
from tests.unit.test_runner import FakeAgent, _cfg
from pathlib import Path
from harness.runner import Runner
cfg = _cfg(Path({tmp!r}), n=40, programs=4)
asyncio.run(Runner(cfg, FakeAgent(steps=5, delay=0.02)).run())
"""


@pytest.mark.timeout(60)
async def test_resume_after_sigkill_never_duplicates_a_step(tmp_path):
    steps_file = tmp_path / "run" / "steps.jsonl"
    child = subprocess.Popen([sys.executable, "-c", _CHILD.format(repo=str(REPO), tmp=str(tmp_path))],
                             cwd=REPO, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # poll until the run is well under way
        if steps_file.exists() and sum(1 for _ in open(steps_file)) >= 30:
            break
        if child.poll() is not None:
            pytest.fail(f"child exited early: {child.stderr.read().decode()[-2000:]}")
        await asyncio.sleep(0.02)
    else:
        child.kill()
        pytest.fail("the child run produced no steps in 30 s")
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stderr.close()
    before = read_step_records(steps_file)
    events = read_instance_events(tmp_path / "run" / "instances.jsonl")
    finished = {e.instance_id for e in events if e.event == "end" and e.status == "ok"}
    assert 0 < len(finished) < 40
    interrupted = {e.instance_id for e in events if e.event == "start"} - finished

    res = await Runner(_cfg(tmp_path, n=40, programs=4), FakeAgent(steps=5, delay=0.001)).run()
    assert res.skipped == len(finished) and res.ok == 40 - len(finished)
    recs = _check_no_duplicates(tmp_path / "run")
    assert recs[: len(before)] == before  # nothing rewritten
    events = read_instance_events(tmp_path / "run" / "instances.jsonl")
    ok = Counter(e.instance_id for e in events if e.event == "end" and e.status == "ok")
    assert set(ok) == {f"inst-{i:03d}" for i in range(40)} and set(ok.values()) == {1}
    # interrupted instances restarted under a new program id, from step 1, with all 5 steps
    for iid in interrupted:
        pids = {e.program_id for e in events if e.instance_id == iid and e.event == "end" and e.status == "ok"}
        (pid,) = pids
        assert sorted(r.step for r in recs if r.program_id == pid) == [1, 2, 3, 4, 5]


# ------------------------------------------------------------------ the synthetic agent over HTTP (mocked)

class MockEngine:
    """An OpenAI-compatible endpoint counting prompt tokens as words + 3 per message (like a chat
    template), streaming `max_tokens` one-word chunks, honouring ThunderAgent's release route."""

    def __init__(self, tokens_per_word: int = 1) -> None:
        self.tpw = tokens_per_word
        self.bodies: list[dict] = []
        self.released: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/programs/release":
            self.released.append(json.loads(request.content)["program_id"])
            return httpx.Response(200, json={"program_id": self.released[-1], "released": True})
        body = json.loads(request.content)
        self.bodies.append(body)
        prompt = sum(self.tpw * len(m["content"].split()) + 3 for m in body["messages"])
        n = body["max_tokens"]
        usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n,
                 "prompt_tokens_details": {"cached_tokens": 0}}
        if not body.get("stream"):
            return httpx.Response(200, json={"choices": [{"message": {"content": filler(n, "out")}}], "usage": usage})
        chunks = [{"choices": [{"delta": {"content": w + " "}}]} for w in filler(n, "out").split()]
        chunks.append({"choices": [], "usage": usage})
        text = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})


TRAJ = Trajectory("inst-a", system_tokens=500, first_user_tokens=300, prep_time_s=0.0,
                  turns=(Turn(20, 150, 0.0), Turn(30, 400, 0.0), Turn(25, 10, 0.0), Turn(10, 0, 0.0)))


@pytest.mark.parametrize("stream", [True, False])
async def test_synthetic_agent_plays_the_trajectory(stream):
    engine = MockEngine()
    client = httpx.AsyncClient(transport=httpx.MockTransport(engine))
    agent = SyntheticAgent(traces=[TRAJ], client=client, stream=stream)
    recs: list[StepRecord] = []
    ep = Endpoint("http://ta.test/v1", "served", thunderagent=True)
    res = await agent.run_instance({"instance_id": "inst-a"}, "swe-abc", ep, recs.append)
    await client.aclose()
    assert res.status == "ok" and res.steps == 4 and engine.released == ["swe-abc"]
    assert [r.step for r in recs] == [1, 2, 3, 4] and all(r.status == "ok" for r in recs)
    assert [b["max_tokens"] for b in engine.bodies] == [20, 30, 25, 10]
    assert all(b["ignore_eos"] and b["min_tokens"] == b["max_tokens"] for b in engine.bodies)
    assert all(b["program_id"] == "swe-abc" and b["model"] == "served" for b in engine.bodies)
    # the conversation grows and re-sends the same prefix (byte-identical: prefix caching works)
    msgs = [b["messages"] for b in engine.bodies]
    assert all(msgs[i + 1][: len(msgs[i])] == msgs[i] for i in range(3))
    # prompts track the plan: exact after the overhead is learnt, within a few tokens before
    plan = [TRAJ.prompt_tokens(k) for k in range(4)]
    got = [r.prompt_tokens for r in recs]
    assert all(abs(g - p) <= 6 for g, p in zip(got, plan)), (got, plan)
    assert all(abs(g - p) <= 3 for g, p in zip(got[2:], plan[2:])), (got, plan)
    if stream:
        assert all(r.first_token is not None and r.arrival <= r.first_token <= r.end for r in recs)


async def test_synthetic_agent_reports_http_errors_and_still_releases():
    released = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/programs/release":
            released.append(1)
            return httpx.Response(200, json={"released": True})
        return httpx.Response(400, json={"error": {"message": "context too long", "type": "BadRequestError"}})

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    agent = SyntheticAgent(traces=[TRAJ], client=client)
    recs: list[StepRecord] = []
    res = await agent.run_instance({"instance_id": "inst-a"}, "p", Endpoint("http://x/v1", "m", True), recs.append)
    await client.aclose()
    assert res.status == "error" and "context too long" in res.error and released == [1]
    assert recs[0].status == "error" and recs[0].http_status == 400


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("error", [httpx.RemoteProtocolError, httpx.ReadError])
async def test_synthetic_agent_resends_once_after_a_stale_connection(stream, error):
    """The keep-alive race: the server closed the pooled connection as the request went out, and the request
    fails before any response byte. It is sent once more (the engine never saw it), so the step succeeds; a
    second failure in a row is reported, not retried forever."""
    engine = MockEngine()
    sent: list[int] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/chat/completions"):
            sent.append(1)
            if len(sent) % 2 == 1:  # every first attempt hits a connection the server just closed
                raise error("Server disconnected without sending a response.", request=request)
        return engine(request)

    client = httpx.AsyncClient(transport=httpx.MockTransport(flaky))
    agent = SyntheticAgent(traces=[TRAJ], client=client, stream=stream)
    recs: list[StepRecord] = []
    res = await agent.run_instance({"instance_id": "inst-a"}, "p", Endpoint("http://x/v1", "m", False), recs.append)
    assert res.status == "ok" and [r.status for r in recs] == ["ok"] * 4 and len(sent) == 8

    def dead(request: httpx.Request) -> httpx.Response:
        raise error("Server disconnected without sending a response.", request=request)

    agent = SyntheticAgent(traces=[TRAJ], client=httpx.AsyncClient(transport=httpx.MockTransport(dead)),
                           stream=stream)
    recs = []
    res = await agent.run_instance({"instance_id": "inst-a"}, "p", Endpoint("http://x/v1", "m", False), recs.append)
    assert res.status == "error" and recs[0].status == "error" and error.__name__ in recs[0].error
    await client.aclose()


def test_synthetic_agent_pool_expires_connections_before_the_servers_keep_alive():
    from harness.agents.synthetic import KEEPALIVE_EXPIRY_S

    assert 0 < KEEPALIVE_EXPIRY_S < 5.0  # uvicorn (vLLM's and the proxy's server) closes idle ones after 5 s
    agent = SyntheticAgent(traces=[TRAJ])
    assert agent.client._transport._pool._keepalive_expiry == KEEPALIVE_EXPIRY_S


async def test_raw_engine_arm_sends_no_program_id_and_no_release():
    engine = MockEngine()
    client = httpx.AsyncClient(transport=httpx.MockTransport(engine))
    agent = SyntheticAgent(traces=[TRAJ], client=client, stream=False)
    await agent.run_instance({"instance_id": "inst-a"}, "p", Endpoint("http://x/v1", "m", False), lambda r: None)
    await client.aclose()
    assert engine.released == [] and all("program_id" not in b for b in engine.bodies)


_CHILD_SIGNAL = """
import asyncio, sys, dataclasses
sys.path.insert(0, {repo!r})
from tests.unit.test_runner import FakeAgent, _cfg
from pathlib import Path
from harness.runner import Runner
cfg = dataclasses.replace(_cfg(Path({tmp!r}), n=40, programs=4), handle_signals=True)
res = asyncio.run(Runner(cfg, FakeAgent(steps=50, delay=0.05)).run())
print("RESULT", res.interrupted, res.cancelled, flush=True)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_signal_stops_gracefully_and_flushes(tmp_path, sig):
    steps_file = tmp_path / "run" / "steps.jsonl"
    child = subprocess.Popen([sys.executable, "-c", _CHILD_SIGNAL.format(repo=str(REPO), tmp=str(tmp_path))],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (steps_file.exists() and steps_file.stat().st_size > 0):
        if time.monotonic() > deadline or child.poll() is not None:
            child.kill()
            pytest.fail(f"no steps from the child: {child.communicate()[1][-2000:]}")
        await asyncio.sleep(0.02)
    child.send_signal(sig)
    out, err = child.communicate(timeout=20)
    assert child.returncode == 0, err[-2000:]
    assert "RESULT True 4" in out
    ends = [e for e in read_instance_events(tmp_path / "run" / "instances.jsonl") if e.event == "end"]
    assert [e.status for e in ends] == ["cancelled"] * 4
    m = RunManifest.read(tmp_path / "run" / "manifest.json")
    assert m.end_time is not None and m.extra["last_result"]["interrupted"] is True
    _check_no_duplicates(tmp_path / "run")


async def test_instance_timeout_is_recorded_and_retried_on_resume(tmp_path):
    class Slow(FakeAgent):
        async def run_instance(self, instance, program_id, endpoint, sink):
            if instance["instance_id"] == "inst-001":
                await asyncio.sleep(3600)
            return await super().run_instance(instance, program_id, endpoint, sink)

    res = await Runner(_cfg(tmp_path, n=3, instance_timeout_s=0.2), Slow(steps=1)).run()
    assert res.ok == 2 and res.errors == 1
    ends = {e.instance_id: e for e in read_instance_events(tmp_path / "run" / "instances.jsonl") if e.event == "end"}
    assert ends["inst-001"].status == "timeout" and "Timeout" in ends["inst-001"].error
    again = await Runner(_cfg(tmp_path, n=3), FakeAgent(steps=1)).run()
    assert again.started == 1 and again.ok == 1


async def test_synthetic_agent_learns_the_tokenizer_ratio():
    """A tokenizer spending 2 tokens per filler word: the first program overshoots, later ones hit the plan."""
    engine = MockEngine(tokens_per_word=2)
    client = httpx.AsyncClient(transport=httpx.MockTransport(engine))
    agent = SyntheticAgent(traces=[TRAJ], client=client, stream=False)
    ep = Endpoint("http://x/v1", "m", False)
    first: list[StepRecord] = []
    second: list[StepRecord] = []
    await agent.run_instance({"instance_id": "inst-a"}, "p1", ep, first.append)
    await agent.run_instance({"instance_id": "inst-a"}, "p2", ep, second.append)
    await client.aclose()
    plan = [TRAJ.prompt_tokens(k) for k in range(4)]
    assert first[0].prompt_tokens > 1.8 * plan[0]  # before anything was learnt
    assert agent.tokens_per_word == pytest.approx(2.0, rel=0.02)
    assert filler(300, "s").startswith(filler(200, "s") + " ")  # prefix-stable: the system prompt stays shared
    assert all(abs(r.prompt_tokens - p) <= 0.02 * p + 6 for r, p in zip(second, plan)), ([r.prompt_tokens for r in second], plan)


async def test_duration_run_resumes_until_the_original_deadline(tmp_path):
    cfg = _cfg(tmp_path, n=3, programs=2, duration_s=2.0)
    agent = FakeAgent(steps=3, delay=0.01)
    runner = Runner(cfg, agent)
    task = asyncio.create_task(runner.run())
    deadline = time.monotonic() + 1.5
    while len(agent.seen_ids) < 3 and time.monotonic() < deadline:  # a third start: one instance has finished
        await asyncio.sleep(0.005)
    runner.stop()
    first = await task
    assert first.interrupted and first.ok >= 1
    second = await Runner(_cfg(tmp_path, n=3, programs=2, duration_s=2.0), FakeAgent(steps=3, delay=0.01)).run()
    m = RunManifest.read(tmp_path / "run" / "manifest.json")
    assert len(m.extra["resumed_at"]) == 1 and m.end_time >= m.start_time + 2.0
    assert second.started > 0 and not second.interrupted
    _check_no_duplicates(tmp_path / "run")
    # a third run after the deadline has nothing left to do
    third = await Runner(_cfg(tmp_path, n=3, programs=2, duration_s=2.0), FakeAgent()).run()
    assert third.started == 0
