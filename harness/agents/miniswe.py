"""mini-swe-agent (2.4.6) on SWE-bench instances, one program_id per instance.

Mirrors `minisweagent.run.benchmarks.swebench.process_instance`, with what a per-program proxy needs:
  * the run's config (mini-swe-agent's own `swebench.yaml` by default) is deep-copied per instance, and
    the copy gets `model.model_kwargs.extra_body.program_id` (only when the endpoint is ThunderAgent),
    `api_base`/`api_key` of the endpoint and model `openai/<served name>` (litellm's OpenAI-compatible
    provider; `cost_tracking: ignore_errors` since a self-hosted model has no price);
  * environments: "docker" (the swebench instance image, cwd /testbed, as upstream) or "local" (a temp
    checkout of the repo at base_commit; commands run on the host — toy fixtures and CI);
  * the patch is the agent's submission (the output after `COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT`), as in
    upstream's preds.json;
  * release in `finally` after the worker thread stopped (harness/agents/threaded.py).
LLM calls always leave from this process (only commands run in the sandbox), so step records are exact
for both environments.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.agents.base import Endpoint, Instance, InstanceResult
from harness.agents.checkout import prepare_checkout
from harness.agents.steps import StepRecorder
from harness.agents.threaded import StopSignal, ThreadedAgent
from harness.records import safe_join, safe_name

log = logging.getLogger(__name__)

os.environ.setdefault("MSWEA_SILENT_STARTUP", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

MINI_VERSION = "2.4.6"  # the pinned, verified mini-swe-agent version (pyproject extra `miniswe`)


def _import_mini() -> Any:
    try:
        import minisweagent  # noqa: F401
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise RuntimeError("the mini-swe-agent runner needs the `miniswe` extra: "
                           "THUNDERBENCH_EXTRAS=miniswe bash scripts/setup/setup.sh") from e
    return minisweagent


_RECORDING_MODEL: Any = None


def recording_model_class() -> Any:
    """mini-swe-agent's LitellmModel with every HTTP attempt (`_query`, below its retry loop) recorded,
    and a stop check before each call (a stopped instance ends with exit status TimeExceeded)."""
    global _RECORDING_MODEL
    if _RECORDING_MODEL is None:
        _import_mini()
        from minisweagent.exceptions import TimeExceeded
        from minisweagent.models.litellm_model import LitellmModel

        class RecordingLitellmModel(LitellmModel):
            recorder: StepRecorder | None = None
            stop: StopSignal | None = None

            def query(self, messages: list[dict[str, str]], **kwargs: Any) -> dict:
                if self.stop is not None and self.stop.is_set():
                    raise TimeExceeded({"role": "exit", "content": "TimeExceeded",
                                        "extra": {"exit_status": "TimeExceeded", "submission": ""}})
                return super().query(messages, **kwargs)

            def _query(self, messages: list[dict[str, str]], **kwargs: Any) -> Any:
                if self.recorder is None:
                    return super()._query(messages, **kwargs)
                with self.recorder.call() as c:
                    resp = super()._query(messages, **kwargs)
                    c.usage_from(resp)
                    return resp

        _RECORDING_MODEL = RecordingLitellmModel
    return _RECORDING_MODEL


def swebench_image(instance: Instance) -> str:
    _import_mini()
    from minisweagent.run.benchmarks.swebench import get_swebench_docker_image_name

    return get_swebench_docker_image_name(instance)


@dataclass
class MiniSweAgent(ThreadedAgent):
    """The runner's Agent for mini-swe-agent. One object serves a whole run."""

    config_spec: str = "swebench.yaml"  # mini-swe-agent config name or path (its builtin SWE-bench config)
    config_overrides: dict[str, Any] = field(default_factory=dict)  # recursively merged over the config
    environment: str = "local"  # "local" | "docker"
    step_limit: int = 50  # the recipe's max iterations (agent.step_limit)
    command_timeout_s: int = 60  # per shell command
    repos_dir: Path | None = None
    work_root: Path | None = None
    keep_workspaces: bool = False
    trajectories_dir: Path | None = None  # save <dir>/<id>/<id>.traj.json like upstream when set

    name = "mini-swe-agent"

    def __post_init__(self) -> None:
        if self.environment not in ("local", "docker"):
            raise ValueError(f"environment must be 'local' or 'docker', not {self.environment!r}")
        self._base_config: dict[str, Any] | None = None

    def base_config(self) -> dict[str, Any]:
        if self._base_config is None:
            _import_mini()
            from minisweagent.config import get_config_from_spec
            from minisweagent.utils.serialize import recursive_merge

            self._base_config = recursive_merge(get_config_from_spec(self.config_spec), self.config_overrides)
        return self._base_config

    def instance_config(self, instance: Instance, program_id: str, endpoint: Endpoint,
                        workdir: str | None) -> dict[str, Any]:
        """A deep copy of the run's config for one instance (nothing is shared between instances)."""
        c = copy.deepcopy(self.base_config())
        model = c.setdefault("model", {})
        model["model_name"] = f"openai/{endpoint.model}"
        model["cost_tracking"] = "ignore_errors"
        kwargs = model.setdefault("model_kwargs", {})
        kwargs["api_base"] = endpoint.base_url
        kwargs["api_key"] = endpoint.api_key
        if endpoint.thunderagent:
            kwargs["extra_body"] = {**(kwargs.get("extra_body") or {}), "program_id": program_id}
        agent = c.setdefault("agent", {})
        agent["step_limit"] = self.step_limit
        agent["cost_limit"] = 0  # no price for a self-hosted model; step_limit bounds the run
        if self.timeout_s:
            agent["wall_time_limit_seconds"] = int(self.timeout_s)
        env = c.setdefault("environment", {})
        env["timeout"] = self.command_timeout_s
        if self.environment == "local":
            env["environment_class"] = "local"
            env["cwd"] = workdir
            env["env"] = {k: v for k, v in (env.get("env") or {}).items() if k != "BASH_ENV"}  # host shell
        else:
            env["environment_class"] = "docker"
            env["image"] = swebench_image(instance)
        return c

    def _run_sync(self, instance: Instance, program_id: str, endpoint: Endpoint, recorder: StepRecorder,
                  stop: StopSignal, result: InstanceResult) -> None:
        """Runs in a worker thread. Never raises: failures are reported in `result`."""
        t0 = time.time()
        iid = instance["instance_id"]
        if self.work_root is not None:
            Path(self.work_root).mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="mini-", dir=self.work_root))
        env = None
        agent = None
        exit_status: str | None = None
        try:
            _import_mini()
            from minisweagent.agents.default import DefaultAgent
            from minisweagent.environments import get_environment

            workdir = None
            if self.environment == "local":
                workdir = str(prepare_checkout(instance, tmp / instance["repo"].split("/")[-1], self.repos_dir))
            cfg = self.instance_config(instance, program_id, endpoint, workdir)
            model_cfg = dict(cfg["model"])
            model_cfg.pop("model_class", None)
            model = recording_model_class()(**model_cfg)
            model.recorder, model.stop = recorder, stop
            env = get_environment(cfg["environment"])
            agent = DefaultAgent(model, env, **cfg.get("agent", {}))
            info = agent.run(instance["problem_statement"])
            exit_status = info.get("exit_status")
            result.patch = info.get("submission") or ""
            result.status = "ok" if exit_status == "Submitted" else "error"
            if result.status == "error":
                result.error = f"exit status {exit_status}"
        except BaseException as e:  # noqa: BLE001 - the contract: report, never raise
            exit_status = type(e).__name__
            result.status, result.patch = "error", ""
            result.error = f"{type(e).__name__}: {e}"[:2000]
        finally:
            result.extra["exit_status"] = exit_status
            if agent is not None and self.trajectories_dir is not None:
                try:
                    name = safe_name(str(iid))  # ids come from datasets: never a path out of the directory
                    agent.save(safe_join(self.trajectories_dir, name, f"{name}.traj.json"),
                               {"info": {"exit_status": exit_status, "submission": result.patch},
                                "instance_id": iid, "program_id": program_id})
                except Exception:  # noqa: BLE001
                    log.warning("saving the trajectory of %s failed", iid, exc_info=True)
            cleanup = getattr(env, "cleanup", None)
            if callable(cleanup):
                try:
                    cleanup()
                except Exception:  # noqa: BLE001
                    log.debug("environment cleanup failed", exc_info=True)
            if not self.keep_workspaces:
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                result.extra["workspace"] = str(tmp)
            result.extra["wall_s"] = round(time.time() - t0, 3)


def make_agent(max_iterations: int = 50, **kwargs: Any) -> MiniSweAgent:
    """The factory the CLI uses (harness/sweep/points.py): `max_iterations` is mini's step_limit. Environment
    defaults: THUNDERBENCH_WORKSPACE=local|docker, THUNDERBENCH_REPOS_DIR=<mirrors>.
    Pass `predictions_path=<run dir>/predictions.jsonl` to get swebench predictions."""
    kwargs.setdefault("environment", os.environ.get("THUNDERBENCH_WORKSPACE", "local"))
    if os.environ.get("THUNDERBENCH_REPOS_DIR"):
        kwargs.setdefault("repos_dir", Path(os.environ["THUNDERBENCH_REPOS_DIR"]))
    return MiniSweAgent(step_limit=max_iterations, **kwargs)
