"""Per-instance configuration of the real agents (the agent libraries are imported, nothing runs)."""

from __future__ import annotations

import os

import pytest

from harness.agents.base import Endpoint

pytestmark = [pytest.mark.real, pytest.mark.agents, pytest.mark.slow]

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
PROXY = Endpoint(base_url="http://127.0.0.1:8300/v1", model="glm-4.6", thunderagent=True, api_key="k")
RAW = Endpoint(base_url="http://127.0.0.1:8000/v1", model="glm-4.6", thunderagent=False)
INST = {"instance_id": "django__django-11099", "repo": "django/django", "problem_statement": "x"}


def _need(module: str) -> None:
    try:
        __import__(module)
    except ImportError as e:
        if os.environ.get("CI"):
            pytest.fail(f"{module} missing ({e}): bash scripts/setup/setup.sh installs the agent extras")
        pytest.skip(f"{module} missing")


def test_miniswe_config_is_a_deep_copy_per_instance() -> None:
    _need("minisweagent")
    from harness.agents.miniswe import MiniSweAgent

    agent = MiniSweAgent(step_limit=7, timeout_s=90)
    a = agent.instance_config(INST, "pid-a", PROXY, "/w/a")
    b = agent.instance_config(INST, "pid-b", PROXY, "/w/b")
    assert a["model"]["model_kwargs"]["extra_body"] == {"program_id": "pid-a"}
    assert b["model"]["model_kwargs"]["extra_body"] == {"program_id": "pid-b"}
    assert a["model"]["model_kwargs"]["api_base"] == PROXY.base_url and a["model"]["model_name"] == "openai/glm-4.6"
    assert a["model"]["cost_tracking"] == "ignore_errors"
    assert a["agent"]["step_limit"] == 7 and a["agent"]["wall_time_limit_seconds"] == 90
    assert a["environment"]["environment_class"] == "local" and a["environment"]["cwd"] == "/w/a"
    assert "BASH_ENV" not in a["environment"]["env"], "the image's bashrc is not sourced on the host"
    assert "extra_body" not in agent.base_config()["model"].get("model_kwargs", {})
    assert a["agent"]["instance_template"] == agent.base_config()["agent"]["instance_template"]
    raw = agent.instance_config(INST, "pid-c", RAW, "/w/c")
    assert "extra_body" not in raw["model"]["model_kwargs"], "raw vLLM gets no program_id"
    docker = MiniSweAgent(environment="docker").instance_config(INST, "pid-d", PROXY, None)
    assert docker["environment"]["environment_class"] == "docker"
    assert docker["environment"]["image"] == "docker.io/swebench/sweb.eval.x86_64.django_1776_django-11099:latest"
    assert docker["environment"]["cwd"] == "/testbed"
    with pytest.raises(ValueError):
        MiniSweAgent(environment="podman")


def test_openhands_llm_copy_per_instance() -> None:
    _need("openhands.sdk")
    from harness.agents.openhands import OpenHandsAgent, swebench_image

    agent = OpenHandsAgent(max_iterations=5)
    a = agent.instance_llm(PROXY, "pid-a", None)
    b = agent.instance_llm(PROXY, "pid-b", None)
    assert a.litellm_extra_body == {"program_id": "pid-a"} and b.litellm_extra_body == {"program_id": "pid-b"}
    base = agent.base_llm(PROXY)
    assert base.litellm_extra_body == {} and a is not base
    assert a.model == "openai/glm-4.6" and a.base_url == PROXY.base_url and a.api_mode == "chat"
    assert a.reasoning_effort is None and a.api_key.get_secret_value() == "k"
    assert agent.instance_llm(RAW, "pid-c", None).litellm_extra_body == {}
    names = [t.name for t in agent.tools()]
    assert names == ["terminal", "file_editor", "task_tracker"], "default tools, no browser"
    sub = OpenHandsAgent(terminal_type="subprocess").tools()
    assert sub[0].params["terminal_type"] == "subprocess"
    assert swebench_image(INST) == "docker.io/swebench/sweb.eval.x86_64.django_1776_django-11099:latest"
    with pytest.raises(ValueError):
        OpenHandsAgent(workspace="vm")
