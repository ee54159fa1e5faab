"""mini-swe-agent's docker environment through the real ThunderAgent proxy, with a real Docker engine.

SWE-bench instance images cannot be pulled here, so the container is the local busybox image that
scripts/ci/services/dockerd.sh builds (no git, no python, no bash): the toy repo is checked out on the
host and mounted at /testbed, commands run with `sh -c`, and the scripted model fixes the bug with `sed`
and submits a `diff -u`. What is real: mini-swe-agent 2.4.6's DockerEnvironment (docker run / exec /
cleanup), our per-instance config (program id, image, cwd /testbed), the proxy, the release, grading.
In CI (CI=true or THUNDERBENCH_DOCKER_IMAGE set) a missing engine or image fails the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from harness.agents.base import Endpoint
from harness.agents.checkout import prepare_checkout
from tests.e2e.agents_e2e import (Proxy, check_predictions, check_program_ids, check_releases, require,
                                  run_agent, start_proxy, toy_instances)
from tests.fakes.scripted_llm import Action, ScriptedLLM

pytestmark = [pytest.mark.real, pytest.mark.agents, pytest.mark.docker, pytest.mark.slow,
              pytest.mark.timeout(600)]

IMAGE = os.environ.get("THUNDERBENCH_DOCKER_IMAGE", "thunderbench/busybox:test")
INST = toy_instances()[2]  # intervals: a one-character fix, doable with sed
FILE = "intervals/core.py"
SCRIPT = [
    Action("bash", f"cat {FILE}"),
    Action("bash", f"cp {FILE} /tmp/orig.py && sed -i 's/start < out/start <= out/' {FILE}"),
    # busybox has no git: submit a unified diff with git's a/ b/ names
    Action("bash", f"echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT && diff -u /tmp/orig.py {FILE} | "
                   f"sed -e '1s|.*|--- a/{FILE}|' -e '2s|.*|+++ b/{FILE}|'"),
]


def _docker_ready() -> None:
    in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes") or "THUNDERBENCH_DOCKER_IMAGE" in os.environ
    problem = None
    if shutil.which("docker") is None:
        problem = "the docker CLI is not installed"
    else:
        r = subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, text=True)
        if r.returncode != 0:
            problem = f"no Docker engine or no image {IMAGE}: {(r.stderr.strip() or 'inspect failed')[:200]}"
    if problem is not None:
        msg = f"{problem} (start one with: bash scripts/ci/services/dockerd.sh)"
        if in_ci:
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


@pytest.fixture(scope="module")
def model() -> Iterator[ScriptedLLM]:
    require("minisweagent", "miniswe")
    _docker_ready()
    with ScriptedLLM({INST["instance_id"]: SCRIPT}, [INST]) as m:
        yield m


@pytest.fixture(scope="module")
def proxy(model: ScriptedLLM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    yield from start_proxy(model.url, tmp_path_factory.mktemp("mini-docker-proxy"))


def test_miniswe_docker_environment(model: ScriptedLLM, proxy: Proxy, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.agents.miniswe import MiniSweAgent
    from harness.evaluate import evaluate

    monkeypatch.setenv("MSWEA_MODEL_RETRY_STOP_AFTER_ATTEMPT", "1")
    checkout = prepare_checkout(INST, tmp_path / "testbed")
    name = f"tb-mini-docker-{os.getpid()}"
    agent = MiniSweAgent(
        environment="docker", step_limit=10, predictions_path=tmp_path / "predictions.jsonl", work_root=tmp_path,
        config_overrides={"environment": {"interpreter": ["sh", "-c"], "env": {},
                                          "run_args": ["--rm", "--network", "none", "--label", name,
                                                       "-v", f"{checkout}:/testbed"]}})
    inst = {**INST, "image_name": IMAGE}
    cfg = agent.instance_config(inst, "p", Endpoint("http://x/v1", "m", True), None)
    assert cfg["environment"]["image"] == IMAGE and cfg["environment"]["cwd"] == "/testbed"
    since = len(model.requests)
    endpoint = Endpoint(base_url=proxy.base_url, model="scripted", thunderagent=True)
    run = run_agent(agent, [inst], endpoint, "mini-docker", monkeypatch)

    r = run.results[INST["instance_id"]]
    assert r.status == "ok" and r.extra["exit_status"] == "Submitted", r
    assert f"+++ b/{FILE}" in (r.patch or "") and "+        if out and start <= out[-1][1]:" in r.patch
    by_pid = check_program_ids(run, proxy, model, since)
    check_releases(run, proxy, by_pid)
    check_predictions(run, [INST], "mini-swe-agent/scripted")
    # the container is gone (mini-swe-agent's cleanup stops it; --rm removes it), polled with a deadline
    deadline = time.monotonic() + 90
    while True:
        ps = subprocess.run(["docker", "ps", "-a", "-q", "--filter", f"label={name}"],
                            capture_output=True, text=True)
        if not ps.stdout.strip():
            break
        assert time.monotonic() < deadline, f"container {name} still exists"
        time.sleep(0.5)
    report = evaluate(run.predictions, "toy")
    assert report.resolved == 1, report.grades
