"""Our OpenHands runner is configured as the paper ran OpenHands (its V0 CodeActAgent; shared spec
workload-and-hardware §D6), checked on what reaches the model: text-mode tool calling (no `tools` field; the five
tools described in the system prompt; an in-context example before the task), no condenser (every call re-sends
the whole history), and the iteration cap bounding all LLM calls of an instance, fake-user nudges included.

Topology as tests/e2e/test_agents_openhands.py: the runner -> the real ThunderAgent proxy -> the scripted model.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import pytest

from harness.agents.base import Endpoint
from harness.fixtures.make_toy import toy_by_instance_id
from tests.e2e.agents_e2e import Proxy, require, run_agent, start_proxy, toy_instances
from tests.fakes.scripted_llm import Action, ScriptedLLM, solve_script

pytestmark = [pytest.mark.real, pytest.mark.agents, pytest.mark.slow, pytest.mark.timeout(600),
              pytest.mark.filterwarnings("ignore:Cost calculation failed")]

SOLVED, CHATTY = toy_instances()[:2]
FIVE_TOOLS = {"terminal", "file_editor", "task_tracker", "think", "finish"}


@pytest.fixture(scope="module")
def model() -> Iterator[ScriptedLLM]:
    require("openhands.sdk", "openhands")
    scripts = {SOLVED["instance_id"]: solve_script(toy_by_instance_id(SOLVED["instance_id"])),
               # works, answers in text once (-> a fake-user nudge), then works on and on
               CHATTY["instance_id"]: [Action("bash", "ls")] * 3 + [Action("say", thought="Still thinking.")]
               + [Action("bash", "ls")] * 20 + [Action("finish")]}
    with ScriptedLLM(scripts, [SOLVED, CHATTY]) as m:
        yield m


@pytest.fixture(scope="module")
def proxy(model: ScriptedLLM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    yield from start_proxy(model.url, tmp_path_factory.mktemp("oh-paper-proxy"))


def _agent(tmp: Path, **kw: Any) -> Any:
    from harness.agents.openhands import OpenHandsAgent

    return OpenHandsAgent(num_retries=0, terminal_type="subprocess", work_root=tmp, **kw)


def test_text_mode_five_tools_no_condenser(model: ScriptedLLM, proxy: Proxy, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    agent = _agent(tmp_path)
    assert agent.max_iterations == 50 and agent.native_tool_calling is False  # the paper's defaults
    run = run_agent(agent, [SOLVED], Endpoint(base_url=proxy.base_url, model="scripted", thunderagent=True),
                    "paper", monkeypatch)
    assert run.results[SOLVED["instance_id"]].status == "ok", run.results
    bodies = [r.body for r in model.completions(SOLVED["instance_id"])]
    assert len(bodies) == 4
    for b in bodies:
        assert not b.get("tools") and "tool_choice" not in b  # tools travel as text, not as a `tools` field
        system = b["messages"][0]
        assert system["role"] == "system"
        text = system["content"] if isinstance(system["content"], str) else " ".join(
            p.get("text", "") for p in system["content"])
        assert set(re.findall(r"BEGIN FUNCTION #\d+: (\w+)", text)) == FIVE_TOOLS
    first_user = next(m for m in bodies[0]["messages"] if m["role"] == "user")
    user_text = first_user["content"] if isinstance(first_user["content"], str) else " ".join(
        p.get("text", "") for p in first_user["content"])
    assert user_text.index("START OF EXAMPLE") < user_text.index(SOLVED["problem_statement"].splitlines()[0])
    # no condenser: each call re-sends the previous call's whole conversation, then the new turn
    for prev, cur in zip(bodies, bodies[1:]):
        assert cur["messages"][: len(prev["messages"])] == prev["messages"]
        assert len(cur["messages"]) == len(prev["messages"]) + 2  # the model's call + the tool's result


def test_iteration_cap_bounds_all_calls_nudges_included(model: ScriptedLLM, proxy: Proxy, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # 3 tool calls, a text answer (the run ends "finished" without the finish tool: one fake-user nudge), then
    # tool calls without end: the SDK's cap counts per run(), so the nudged run must get only what is left
    # of the instance's budget (the cap is 6 here, 50 in the paper)
    since = len(model.completions(CHATTY["instance_id"]))
    agent = _agent(tmp_path, max_iterations=6, fake_user_replies=10)
    run = run_agent(agent, [CHATTY], Endpoint(base_url=proxy.base_url, model="scripted", thunderagent=True),
                    "cap", monkeypatch)
    r = run.results[CHATTY["instance_id"]]
    calls = len(model.completions(CHATTY["instance_id"])) - since
    assert calls == r.steps == 6, (calls, r)
    assert r.extra["fake_user_replies"] == 1
    assert r.status == "error" and r.extra["execution_status"] == "error"  # stopped by the cap, not finished
