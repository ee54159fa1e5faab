"""OpenHands (openhands-sdk 1.58.2) end to end through the real ThunderAgent proxy, on the toy fixtures.

Three instances run concurrently, one program id each: two are solved by the scripted model, the third
fails mid-way (HTTP 400 from the model at its 2nd call). Checked: every LLM call carried its instance's
program id (observed at the proxy), exactly one release per instance after its last call (also for the
failing one), the agent's step records, correct patches, valid predictions, and swebench-graded
resolution. A second test times an instance out while a tool runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from harness.agents.base import Endpoint
from tests.e2e.agents_e2e import (Proxy, check_predictions, check_program_ids, check_releases, require,
                                  run_agent, start_proxy, toy_instances)
from tests.fakes.scripted_llm import Action, ScriptedLLM, chatty_script, toy_scripts
from harness.fixtures.make_toy import toy_by_instance_id

pytestmark = [pytest.mark.real, pytest.mark.agents, pytest.mark.slow, pytest.mark.timeout(600),
              pytest.mark.filterwarnings("ignore:Cost calculation failed")]

INSTANCES = toy_instances()
FAILING = INSTANCES[2]["instance_id"]  # errors at its 2nd model call
CHATTY = INSTANCES[1]["instance_id"]  # answers once with text instead of a tool call (fake-user nudge)


@pytest.fixture(scope="module")
def model() -> Iterator[ScriptedLLM]:
    require("openhands.sdk", "openhands")
    scripts = toy_scripts({FAILING: 1})
    scripts[CHATTY] = chatty_script(toy_by_instance_id(CHATTY))
    with ScriptedLLM(scripts, INSTANCES) as m:
        yield m


@pytest.fixture(scope="module")
def proxy(model: ScriptedLLM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    yield from start_proxy(model.url, tmp_path_factory.mktemp("oh-proxy"))


def _agent(tmp: Path, **kw: Any) -> Any:
    from harness.agents.openhands import OpenHandsAgent

    # terminal_type=subprocess: no tmux server needed; num_retries=0: the scripted 400 is final
    return OpenHandsAgent(max_iterations=10, num_retries=0, terminal_type="subprocess",
                          predictions_path=tmp / "predictions.jsonl", work_root=tmp, **kw)


def test_openhands_through_thunderagent(model: ScriptedLLM, proxy: Proxy, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.evaluate import evaluate

    since = len(model.requests)
    endpoint = Endpoint(base_url=proxy.base_url, model="scripted", thunderagent=True)
    run = run_agent(_agent(tmp_path, conversations_path=tmp_path / "conversations.jsonl"), INSTANCES, endpoint,
                    "oh", monkeypatch)

    by_pid = check_program_ids(run, proxy, model, since)
    check_releases(run, proxy, by_pid)
    for inst in INSTANCES:
        r = run.results[inst["instance_id"]]
        if inst["instance_id"] == FAILING:
            assert r.status == "error" and "scripted failure" in (r.error or ""), r
            assert r.steps == 2  # one good call, then the failing one (no retries)
            assert r.patch == "", "the failing instance made no change before the error"
        else:
            assert r.status == "ok", r
            assert r.extra["execution_status"] == "finished"
            assert r.steps == len(model.scripts[inst["instance_id"]])
            assert r.extra["fake_user_replies"] == (1 if inst["instance_id"] == CHATTY else 0)
            assert r.patch == inst["patch"], "the patch is the gold fix, byte for byte"
        ok = [s for s in run.client_steps if s.program_id == run.pids[inst["instance_id"]]]
        assert [s.step for s in ok] == list(range(1, r.steps + 1))
        assert all(s.prompt_tokens for s in ok if s.status == "ok")
    check_predictions(run, INSTANCES, "openhands/scripted")
    # each instance's conversation is kept (the failing one too), and the trace importer reads our own runs
    # back: one turn per answered call (the failing instance's 2nd call got no answer)
    from harness.traces import import_traces

    trajs, how = import_traces(tmp_path / "conversations.jsonl")
    assert "openhands-sdk" in how, how
    calls = {t.instance_id: len(t.turns) for t in trajs}
    assert calls == {i["instance_id"]: run.results[i["instance_id"]].steps - (i["instance_id"] == FAILING)
                     for i in INSTANCES}, (calls, how)
    assert run.loop_lag_max_s < 2.0, f"the event loop was blocked for {run.loop_lag_max_s:.2f} s"

    report = evaluate(run.predictions, "toy")
    status = {g.instance_id: g.status for g in report.grades}
    assert status == {i["instance_id"]: ("empty_patch" if i["instance_id"] == FAILING else "RESOLVED_FULL")
                      for i in INSTANCES}
    assert report.resolved == 2


def test_openhands_timeout_releases_after_last_call(model: ScriptedLLM, proxy: Proxy, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A tool outlives the instance's time limit: no LLM call follows the stop, the program is released
    once, after its last call, and the instance is reported as a timeout with a prediction."""
    inst = INSTANCES[0]
    iid = inst["instance_id"]
    endpoint = Endpoint(base_url=proxy.base_url, model="scripted", thunderagent=True)
    # warm-up (imports, litellm's first-call set-up) so the 1.5 s limit below falls inside the sleep
    run_agent(_agent(tmp_path / "warm"), [inst], endpoint, "oh-warm", monkeypatch)
    original = model.scripts[iid]
    model.scripts[iid] = [Action("bash", "sleep 4", thought="wait")] + original
    try:
        since = len(model.requests)
        run = run_agent(_agent(tmp_path, timeout_s=1.5, stop_grace_s=60), [inst], endpoint, "oh-timeout",
                        monkeypatch)
    finally:
        model.scripts[iid] = original
    r = run.results[iid]
    assert r.status == "timeout" and r.extra.get("timed_out"), r
    calls = [q for q in model.requests[since:] if q.instance_id == iid]
    pid = run.pids[iid]
    assert [p for p, _, _ in run.releases] == [pid], "one release, also on timeout"
    check_predictions(run, [inst], "openhands/scripted")
    if r.steps == 0:
        # a loaded machine: the limit fell before the first LLM call. Then nothing reached the model and
        # the proxy never knew the program (released=False), but the release was still sent once.
        assert calls == [] and run.releases[0][2] is False
        return
    assert r.steps == len(calls) == 1, "the sleep call only: no LLM call after the stop"
    by_pid = check_program_ids(run, proxy, model, since)
    check_releases(run, proxy, by_pid)


def test_openhands_cancel_mid_tool_releases_once(model: ScriptedLLM, proxy: Proxy, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner cancels an instance (its --instance-timeout / shutdown path) while a tool runs: the
    cancellation propagates, but only after the worker stopped and the program was released once."""
    import asyncio
    import time

    from harness.agents import threaded

    inst = INSTANCES[1]
    iid = inst["instance_id"]
    original = model.scripts[iid]
    model.scripts[iid] = [Action("bash", "sleep 10", thought="wait")] + original
    releases: list[tuple[str, float, object]] = []
    real_release = threaded.release_program

    async def recording_release(ep: Endpoint, pid: str, *a: object, **kw: object) -> object:
        ok = await real_release(ep, pid, *a, **kw)
        releases.append((pid, time.time(), ok))
        return ok

    monkeypatch.setattr(threaded, "release_program", recording_release)
    endpoint = Endpoint(base_url=proxy.base_url, model="scripted", thunderagent=True)
    pid = f"oh-cancel-{iid}"
    since = len(model.requests)

    async def main() -> None:
        task = asyncio.create_task(_agent(tmp_path).run_instance(inst, pid, endpoint, lambda r: None))
        deadline = time.monotonic() + 120
        while not any(q.instance_id == iid for q in model.requests[since:]):  # first call reached the model
            assert time.monotonic() < deadline, "the agent never called the model"
            assert not task.done(), task
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # now inside `sleep 10` (wide margin for a loaded machine)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
    finally:
        model.scripts[iid] = original
    calls = [q for q in model.requests[since:] if q.instance_id == iid]
    assert len(calls) == 1, "no LLM call after the cancellation"
    assert [p for p, _, _ in releases] == [pid] and releases[0][2] is True
    recs = [r for r in proxy.wait_records(1) if r.program_id == pid]
    assert len(recs) == 1 and recs[0].end <= releases[0][1]
    assert proxy.released_in_log()[pid] == 1
    assert pid not in proxy.programs()
