"""OpenHands (openhands-sdk / openhands-tools 1.58.2) on SWE-bench instances, one program_id per instance.

Per instance:
  * a copy of the base LLM with `litellm_extra_body={"program_id": ...}` (only when the endpoint is
    ThunderAgent), `api_mode="chat"`, model `openai/<served name>`, `base_url` = proxy or engine;
  * configured as the paper ran OpenHands (its vendored V0 CodeActAgent, shared spec workload-and-hardware §D6):
    the same five tools (terminal = execute_bash, file_editor = str_replace_editor, task_tracker, and the
    built-in think and finish; no browser), no condenser, text-mode tool calling (`native_tool_calling=False`:
    the SDK describes the tools in the system prompt and puts an in-context example before the first user
    message, as V0's fn_call_converter does; the model answers `<function=...>` text), at most
    `max_iterations` (50) LLM calls per instance, fake-user nudges included;
  * our own instance prompt (INSTANCE_PROMPT);
  * patch = `git diff` of the work tree against base_commit (new files included);
  * the conversation is closed and `POST /programs/release` sent in `finally` — also on error, timeout
    and cancellation, and only after the worker thread has stopped making LLM calls.

The SDK is synchronous (blocking HTTP, subprocess tools), so each instance runs in a worker thread
(one per instance, harness/agents/threaded.py) and the runner's event loop stays free. Workspaces:
  * "local": a temp checkout of the instance repo at base_commit (toy fixtures, CI, or --repos-dir);
  * "docker": the swebench instance image wrapped by OpenHands' agent-server (`DockerDevWorkspace`),
    for users with a Docker engine and the images. There the SDK serialises the whole agent, LLM
    included, into the container, so the LLM calls come from the container: the endpoint must be
    reachable from it (host network), and client-side step records are not available (use the proxy's
    --profile records); program_id still travels with the per-instance LLM copy.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.agents.base import Endpoint, Instance, InstanceResult
from harness.agents.checkout import diff_against, prepare_checkout
from harness.agents.predictions import append_line
from harness.agents.steps import StepRecorder
from harness.agents.threaded import StopRequested, StopSignal, ThreadedAgent

log = logging.getLogger(__name__)

# Quiet, offline-friendly library start-up (no remote model-cost map fetch, no banner).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("OPENHANDS_SUPPRESS_BANNER", "1")
# litellm has no price for a self-hosted model; the SDK warns on every call. Cost is not our metric.
warnings.filterwarnings("ignore", message="Cost calculation failed")

# The agent's tools beyond the default ones (terminal, file_editor, task_tracker): the SDK's built-ins, named
# explicitly so the five-tool set cannot drift with an SDK default. No condenser: the whole history is re-sent.
BUILT_IN_TOOLS = ("FinishTool", "ThinkTool")

SDK_VERSION = "1.58.2"  # the pinned, verified openhands-sdk/openhands-tools version (pyproject extra)

INSTANCE_PROMPT = """\
The repository {repo} is checked out in {workdir}. A user reported this issue:

<issue>
{problem_statement}
</issue>

Change the non-test source files under {workdir} so that the issue is resolved. The tests that check
the fix already exist elsewhere; do not add or modify tests. Work in small steps:
1. find and read the code involved;
2. reproduce the problem with a short command if that helps;
3. make the smallest change that fixes it, keeping the codebase's style;
4. re-run your reproduction, then call the finish tool with a one-line summary.
Do not commit; your changes are collected from the working tree.
"""


FAKE_USER_REPLY = (
    "Please continue working on the task with the tools you have. If you have solved it, call the finish "
    "tool; if you cannot solve it, call the finish tool and say why."
)


def _status(conversation: Any) -> str:
    s = conversation.state.execution_status
    return str(getattr(s, "value", s))


def _called_finish(conversation: Any) -> bool:
    """True when the agent's latest action was the `finish` tool (not a text answer)."""
    for ev in reversed(list(conversation.state.events)):
        if getattr(ev, "source", None) != "agent":
            continue
        return getattr(ev, "tool_name", None) == "finish"
    return False


def swebench_image(instance: Instance) -> str:
    """The official swebench instance image name (same rule as swebench / mini-swe-agent / OpenHands)."""
    if instance.get("image_name") or instance.get("docker_image"):
        return str(instance.get("image_name") or instance.get("docker_image"))
    iid = instance["instance_id"].replace("__", "_1776_")
    return f"docker.io/swebench/sweb.eval.x86_64.{iid}:latest".lower()


def _import_sdk() -> Any:
    try:
        import openhands.sdk as sdk
        from openhands.tools.preset.default import get_default_tools
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise RuntimeError("the OpenHands agent needs the `openhands` extra: "
                           "THUNDERBENCH_EXTRAS=openhands bash scripts/setup/setup.sh") from e
    return sdk, get_default_tools


_RECORDING_LLM: Any = None


def recording_llm_class() -> Any:
    """`openhands.sdk.LLM` whose every HTTP attempt (`_transport_call`, retries included) is recorded.

    `_transport_call` is the SDK's single synchronous chat-completions call site (llm.py), below its
    retry loop, so one record = one request the endpoint saw."""
    global _RECORDING_LLM
    if _RECORDING_LLM is None:
        sdk, _ = _import_sdk()
        from pydantic import PrivateAttr

        class RecordingLLM(sdk.LLM):  # type: ignore[misc, valid-type]
            _recorder: StepRecorder | None = PrivateAttr(default=None)
            _stop: StopSignal | None = PrivateAttr(default=None)

            def _transport_call(self, **kwargs: Any) -> Any:
                # Conversation.pause() is lost when it lands before run() starts (run() resets PAUSED to
                # RUNNING, sdk 1.58.2), so the stop flag is also enforced here: no call after a stop.
                if self._stop is not None and self._stop.is_set():
                    raise StopRequested("instance stopped (timeout or cancellation) before this LLM call")
                rec = self._recorder
                if rec is None:
                    return super()._transport_call(**kwargs)
                with rec.call() as c:
                    resp = super()._transport_call(**kwargs)
                    c.usage_from(resp)
                    return resp

        _RECORDING_LLM = RecordingLLM
    return _RECORDING_LLM


@dataclass
class OpenHandsAgent(ThreadedAgent):
    """The runner's Agent for OpenHands. One object serves a whole run (instances run concurrently)."""

    max_iterations: int = 50
    workspace: str = "local"  # "local" | "docker"
    repos_dir: Path | None = None  # local mirrors of real repos (see harness/agents/checkout.py)
    work_root: Path | None = None  # where temp checkouts go (default: system temp)
    keep_workspaces: bool = False
    terminal_type: str | None = None  # None: the SDK's choice (tmux if present); or "subprocess"/"tmux"
    native_tool_calling: bool = False  # the paper's V0 config.toml: tools described as text, not a `tools` field
    temperature: float | None = 0.0
    num_retries: int = 5  # the SDK's retry count for transient LLM errors
    llm_timeout_s: int = 600
    docker_network: str | None = "host"
    llm_overrides: dict[str, Any] = field(default_factory=dict)  # extra openhands.sdk.LLM fields
    fake_user_replies: int = 10  # nudges when the model answers with text instead of calling finish
    # append each instance's conversation events here as {"instance_id", "program_id", "history": [events]}
    # (the layout of OpenHands' own benchmarks output.jsonl, which `thunderbench workload import` reads)
    conversations_path: Path | None = None

    name = "openhands"

    def __post_init__(self) -> None:
        if self.workspace not in ("local", "docker"):
            raise ValueError(f"workspace must be 'local' or 'docker', not {self.workspace!r}")
        self._base_llms: dict[tuple[str, str, str], Any] = {}
        self._base_lock = threading.Lock()

    def base_llm(self, endpoint: Endpoint) -> Any:
        """The run's LLM (built once per endpoint); instances get copies of it."""
        key = (endpoint.base_url, endpoint.model, endpoint.api_key)
        with self._base_lock:
            llm = self._base_llms.get(key)
            if llm is None:
                from pydantic import SecretStr

                cls = recording_llm_class()
                fields: dict[str, Any] = dict(
                    model=f"openai/{endpoint.model}", base_url=endpoint.base_url,
                    api_key=SecretStr(endpoint.api_key), api_mode="chat", reasoning_effort=None,
                    usage_id="agent", native_tool_calling=self.native_tool_calling,
                    temperature=self.temperature, num_retries=self.num_retries, timeout=self.llm_timeout_s,
                )
                fields.update(self.llm_overrides)
                llm = self._base_llms[key] = cls(**fields)
        return llm

    def instance_llm(self, endpoint: Endpoint, program_id: str, recorder: StepRecorder | None,
                     stop: StopSignal | None = None) -> Any:
        base = self.base_llm(endpoint)
        extra = dict(base.litellm_extra_body or {})
        if endpoint.thunderagent:
            extra["program_id"] = program_id
        llm = base.model_copy(deep=True, update={"litellm_extra_body": extra})
        llm._recorder = recorder
        llm._stop = stop
        return llm

    def tools(self) -> list[Any]:
        sdk, get_default_tools = _import_sdk()
        tools = get_default_tools(enable_browser=False)
        if self.terminal_type:
            tools = [sdk.Tool(name=t.name, params={**(t.params or {}), "terminal_type": self.terminal_type})
                     if t.name == "terminal" else t for t in tools]
        return tools

    def _run_sync(self, instance: Instance, program_id: str, endpoint: Endpoint, recorder: StepRecorder,
                  stop: StopSignal, result: InstanceResult) -> None:
        """Runs in a worker thread. Never raises: failures are reported in `result`."""
        t0 = time.time()
        if self.work_root is not None:
            Path(self.work_root).mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="oh-", dir=self.work_root))
        conversation = None
        workspace = None
        try:
            sdk, _ = _import_sdk()
            llm = self.instance_llm(endpoint, program_id, recorder, stop)
            agent = sdk.Agent(llm=llm, tools=self.tools(), system_prompt_kwargs={"cli_mode": True},
                              include_default_tools=list(BUILT_IN_TOOLS), condenser=None)
            if self.workspace == "local":
                workdir = str(prepare_checkout(instance, tmp / instance["repo"].split("/")[-1],
                                               self.repos_dir))
                workspace = sdk.LocalWorkspace(working_dir=workdir)
            else:
                workdir = "/testbed"
                workspace = self._docker_workspace(instance)
            if stop.is_set():
                raise TimeoutError("stopped before the agent started")
            conversation = sdk.Conversation(
                agent=agent, workspace=workspace, max_iteration_per_run=self.max_iterations,
                visualizer=None, delete_on_close=True,
                **({"persistence_dir": str(tmp / "conversation")} if self.workspace == "local" else {}))
            stop.on_stop(conversation.pause)  # takes effect after the in-flight LLM call or tool
            conversation.send_message(INSTANCE_PROMPT.format(
                repo=instance["repo"], workdir=workdir, problem_statement=instance["problem_statement"]))
            try:
                conversation.run()
                # A model that answers with text instead of calling `finish` ends the run "finished" while
                # the task is not: nudge it like OpenHands' benchmarks' fake user does, a bounded number
                # of times.
                replies = 0
                while (_status(conversation) == "finished" and not _called_finish(conversation)
                       and replies < self.fake_user_replies and recorder.calls < self.max_iterations
                       and not stop.is_set()):  # max_iterations bounds the instance, nudges included
                    replies += 1
                    # the SDK's iteration cap counts per run(): the nudged run gets what is left of the
                    # instance's budget, so the cap bounds all LLM calls (as V0's --max-iterations does)
                    conversation.max_iteration_per_run = self.max_iterations - recorder.calls
                    conversation.send_message(FAKE_USER_REPLY)
                    conversation.run()
                result.extra["fake_user_replies"] = replies
            finally:
                status = _status(conversation)
                result.extra["execution_status"] = status
            result.patch = self._patch(instance, workdir, workspace)
            result.status = "ok" if status == "finished" else "error"
            if result.status == "error" and result.error is None:
                result.error = f"conversation ended {status}"
        except BaseException as e:  # noqa: BLE001 - the contract: report, never raise
            result.status = "error"
            result.error = f"{type(e).__name__}: {e}"[:2000]
            checkout = tmp / str(instance.get("repo", "")).split("/")[-1]
            if result.patch is None and self.workspace == "local" and (checkout / ".git").exists():
                try:  # keep whatever the agent changed before failing
                    result.patch = diff_against(checkout, instance["base_commit"])
                except Exception:  # noqa: BLE001
                    pass
        finally:
            if conversation is not None and self.conversations_path is not None:
                try:
                    append_conversation(self.conversations_path, instance["instance_id"], program_id,
                                        conversation.state.events)
                except Exception:  # noqa: BLE001 - a trace is a by-product: never fail the instance for it
                    log.warning("saving the conversation of %r failed", instance["instance_id"], exc_info=True)
            if conversation is not None:
                try:
                    conversation.close()
                except Exception:  # noqa: BLE001
                    log.debug("conversation.close failed", exc_info=True)
            if workspace is not None and self.workspace == "docker":
                try:
                    workspace.cleanup()
                except Exception:  # noqa: BLE001
                    log.debug("workspace cleanup failed", exc_info=True)
            if not self.keep_workspaces:
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                result.extra["workspace"] = str(tmp)
            result.extra["wall_s"] = round(time.time() - t0, 3)

    def _patch(self, instance: Instance, workdir: str, workspace: Any) -> str:
        if self.workspace == "local":
            return diff_against(workdir, instance["base_commit"])
        cmd = (f"cd {workdir} && git add -A && git diff --cached --no-color --no-ext-diff "
               f"{instance['base_commit']}")
        out = workspace.execute_command(cmd, timeout=120)
        if getattr(out, "exit_code", 0) != 0:
            raise RuntimeError(f"git diff in the container failed: {getattr(out, 'stderr', '')[:500]}")
        return str(out.stdout)

    def _docker_workspace(self, instance: Instance) -> Any:
        try:
            from openhands.workspace import DockerDevWorkspace
        except ImportError as e:  # pragma: no cover
            raise RuntimeError("the docker workspace needs openhands-workspace (the `openhands` extra)") from e
        return DockerDevWorkspace(base_image=swebench_image(instance), working_dir="/testbed",
                                  network=self.docker_network)


def append_conversation(path: Path, instance_id: str, program_id: str, events: Any) -> None:
    """One JSON line per instance: its events as the SDK persists them (model_dump_json, None fields left out)."""
    history = [json.loads(ev.model_dump_json(exclude_none=True)) for ev in events]
    append_line(path, {"instance_id": instance_id, "program_id": program_id, "history": history})


def make_agent(max_iterations: int = 50, **kwargs: Any) -> OpenHandsAgent:
    """The factory the CLI uses (harness/points.py). Environment defaults, so a recipe run can choose
    without new flags: THUNDERBENCH_WORKSPACE=local|docker, THUNDERBENCH_REPOS_DIR=<mirrors>.
    Pass `predictions_path=<run dir>/predictions.jsonl` to get swebench predictions."""
    kwargs.setdefault("workspace", os.environ.get("THUNDERBENCH_WORKSPACE", "local"))
    if os.environ.get("THUNDERBENCH_REPOS_DIR"):
        kwargs.setdefault("repos_dir", Path(os.environ["THUNDERBENCH_REPOS_DIR"]))
    return OpenHandsAgent(max_iterations=max_iterations, **kwargs)
