"""mini-swe-agent (2.4.6) end to end through the real ThunderAgent proxy, on the toy fixtures.

Same scenario as the OpenHands test: three instances concurrently, one program id each; two solved by the
scripted model (the patch is mini-swe-agent's own submission, `git diff` after
COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT), one failing mid-way with HTTP 400. Checked at the proxy: every call
carried its instance's program id; exactly one release per instance after its last call; then predictions
and swebench-graded resolution. The proxy runs the tr router here (capacity from the model's /metrics),
the OpenHands test the default one.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from harness.agents.base import Endpoint
from harness.fixtures.make_toy import toy_by_instance_id
from tests.e2e.agents_e2e import (Proxy, check_predictions, check_program_ids, check_releases, require,
                                  run_agent, start_proxy, toy_instances)
from tests.fakes.scripted_llm import Action, ScriptedLLM, chatty_script, toy_scripts

pytestmark = [pytest.mark.real, pytest.mark.agents, pytest.mark.slow, pytest.mark.timeout(600)]

INSTANCES = toy_instances()
FAILING = INSTANCES[1]["instance_id"]  # errors at its 3rd model call, after the fix was applied
CHATTY = INSTANCES[0]["instance_id"]  # answers once with text only (mini's format-error path)


@pytest.fixture(scope="module")
def model() -> Iterator[ScriptedLLM]:
    require("minisweagent", "miniswe")
    scripts = toy_scripts({FAILING: 2})
    scripts[CHATTY] = chatty_script(toy_by_instance_id(CHATTY))
    with ScriptedLLM(scripts, INSTANCES) as m:
        yield m


@pytest.fixture(scope="module")
def proxy(model: ScriptedLLM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    yield from start_proxy(model.url, tmp_path_factory.mktemp("mini-proxy"), router="tr")


@pytest.fixture(autouse=True)
def _one_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    # mini-swe-agent retries every non-abort error 10x with >= 4 s back-off; the scripted 400 is final
    monkeypatch.setenv("MSWEA_MODEL_RETRY_STOP_AFTER_ATTEMPT", "1")


def _agent(tmp: Path, **kw: Any) -> Any:
    from harness.agents.miniswe import MiniSweAgent

    kw.setdefault("predictions_path", tmp / "predictions.jsonl")
    return MiniSweAgent(step_limit=10, work_root=tmp, trajectories_dir=tmp / "traj", **kw)


def test_miniswe_through_thunderagent(model: ScriptedLLM, proxy: Proxy, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.evaluate import evaluate

    since = len(model.requests)
    endpoint = Endpoint(base_url=proxy.base_url, model="scripted", thunderagent=True)
    agent = _agent(tmp_path)
    run = run_agent(agent, INSTANCES, endpoint, "mini", monkeypatch)

    by_pid = check_program_ids(run, proxy, model, since)
    check_releases(run, proxy, by_pid)
    for inst in INSTANCES:
        iid = inst["instance_id"]
        r = run.results[iid]
        if iid == FAILING:
            assert r.status == "error" and "scripted failure" in (r.error or ""), r
            assert r.steps == 3
            assert r.patch == "", "mini-swe-agent submits nothing when it fails"
        else:
            assert r.status == "ok" and r.extra["exit_status"] == "Submitted", r
            assert r.steps == len(model.scripts[iid])
            assert r.patch == inst["patch"], "the submission is the gold fix, byte for byte"
        assert (tmp_path / "traj" / iid / f"{iid}.traj.json").exists()
    # the base config is never mutated: program ids live only in the per-instance deep copies
    assert "extra_body" not in agent.base_config().get("model", {}).get("model_kwargs", {})
    check_predictions(run, INSTANCES, "mini-swe-agent/scripted")
    assert run.loop_lag_max_s < 2.0, f"the event loop was blocked for {run.loop_lag_max_s:.2f} s"

    report = evaluate(run.predictions, "toy")
    status = {g.instance_id: g.status for g in report.grades}
    assert status == {i["instance_id"]: ("empty_patch" if i["instance_id"] == FAILING else "RESOLVED_FULL")
                      for i in INSTANCES}


def test_miniswe_cancel_mid_command_releases_once(model: ScriptedLLM, proxy: Proxy, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancelled while a shell command runs: no further LLM call, one release after the last call."""
    from harness.agents import threaded

    inst = INSTANCES[2]
    iid = inst["instance_id"]
    original = model.scripts[iid]
    model.scripts[iid] = [Action("bash", "sleep 8")] + original  # wide margin on a loaded machine
    releases: list[tuple[str, float, object]] = []
    real_release = threaded.release_program

    async def recording_release(ep: Endpoint, pid: str, *a: object, **kw: object) -> object:
        ok = await real_release(ep, pid, *a, **kw)
        releases.append((pid, time.time(), ok))
        return ok

    monkeypatch.setattr(threaded, "release_program", recording_release)
    endpoint = Endpoint(base_url=proxy.base_url, model="scripted", thunderagent=True)
    pid = f"mini-cancel-{iid}"
    since = len(model.requests)

    async def main() -> None:
        task = asyncio.create_task(_agent(tmp_path).run_instance(inst, pid, endpoint, lambda r: None))
        deadline = time.monotonic() + 120
        while not any(q.instance_id == iid for q in model.requests[since:]):
            assert time.monotonic() < deadline, "the agent never called the model"
            assert not task.done(), task
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
    finally:
        model.scripts[iid] = original
    assert len([q for q in model.requests[since:] if q.instance_id == iid]) == 1
    assert [p for p, _, _ in releases] == [pid] and releases[0][2] is True
    recs = [r for r in proxy.wait_records(1) if r.program_id == pid]
    assert len(recs) == 1 and recs[0].end <= releases[0][1]
    assert proxy.released_in_log()[pid] == 1
    assert pid not in proxy.programs()


def test_miniswe_under_the_runner(model: ScriptedLLM, proxy: Proxy, tmp_path: Path) -> None:
    """The real path of `thunderbench run`: the runner keeps 2 programs in flight over the toy dataset;
    the run dir gets steps.jsonl (agent-side records) and predictions.jsonl, and evaluate infers the
    dataset from the run manifest."""
    from collections import Counter

    from harness.datasets import load_instances
    from harness.evaluate import evaluate
    from harness.runner import RunConfig, run
    from ThunderAgent.records import read_step_records

    run_dir = tmp_path / "run"
    endpoint = Endpoint(base_url=proxy.base_url, model="scripted", thunderagent=True)
    cfg = RunConfig(run_dir=run_dir, arm="thunderagent", programs=2, endpoint=endpoint,
                    instances=load_instances("toy"), agent_name="miniswe", dataset="toy", progress=False,
                    handle_signals=False)
    agent = _agent(tmp_path, predictions_path=None)
    agent.predictions_path = run_dir / "predictions.jsonl"
    result = asyncio.run(run(cfg, agent))
    assert (result.started, result.ok, result.errors) == (3, 2, 1)

    steps = read_step_records(run_dir / "steps.jsonl")
    per_pid = Counter(s.program_id for s in steps)
    proxy_recs = Counter(r.program_id for r in proxy.wait_records(len(steps)) if r.program_id in per_pid)
    assert per_pid == proxy_recs and len(per_pid) == 3
    assert sorted(per_pid.values()) == [3, 4, 5]
    assert not set(per_pid) & set(proxy.programs()), "every program released"

    report = evaluate(run_dir / "predictions.jsonl")
    assert report.dataset == "toy" and report.resolved == 2
