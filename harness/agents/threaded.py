"""The asyncio side shared by the real agents, whose libraries are synchronous.

`ThreadedAgent.run_instance` (the runner's Agent contract) runs the library in a worker thread of its
own (one per instance, see run_in_own_thread) so the runner's event loop stays free, and guarantees, in
this order:
  1. on timeout or cancellation the worker is asked to stop (it stops at its next LLM call or step) and
     is awaited (bounded by `stop_grace_s`), so no LLM call of the program follows its release;
  2. `POST /programs/release` exactly once, in `finally` (also on error, timeout and cancellation);
  3. the swebench prediction is appended (when `predictions_path` is set; not for cancelled instances).
Step records reach the runner's sink on the event loop before `run_instance` returns (steps.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.agents.base import Endpoint, Instance, InstanceResult, StepSink, release_program
from harness.agents.predictions import append_prediction, prediction
from harness.agents.steps import StepRecorder

log = logging.getLogger(__name__)


@dataclass
class StopSignal:
    """Set from the event loop; polled by the worker (and forwarded to the library where it can be)."""

    event: threading.Event = field(default_factory=threading.Event)
    hooks: list[Any] = field(default_factory=list)  # callables run once on stop (e.g. conversation.pause)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def is_set(self) -> bool:
        return self.event.is_set()

    def on_stop(self, fn: Any) -> None:
        """Run `fn` when stopped (now, on this thread, if already stopped)."""
        with self._lock:
            fired = self.event.is_set()
            if not fired:
                self.hooks.append(fn)
        if fired:
            _call_quietly(fn)

    def set(self) -> None:
        """Set the flag and run the hooks on a helper thread: a library's pause() may block on its own
        lock until the current step ends, and this is called from the event loop."""
        with self._lock:
            self.event.set()
            hooks, self.hooks = self.hooks, []
        if hooks:
            threading.Thread(target=lambda: [_call_quietly(fn) for fn in hooks], name="agent-stop",
                             daemon=True).start()


class StopRequested(RuntimeError):
    """Raised instead of sending an LLM call once the instance was asked to stop (timeout/cancel)."""


def _call_quietly(fn: Any) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - stopping is best effort; the worker is awaited regardless
        log.debug("stop hook failed", exc_info=True)


def run_in_own_thread(name: str, fn: Any, *args: Any) -> asyncio.Future[Any]:
    """Like `asyncio.to_thread`, but on a dedicated thread: to_thread's default executor has at most
    min(32, cores + 4) workers, so with more programs in flight than that, the extra instances would sit
    in its queue while the runner counts them as running. The result is delivered with
    `call_soon_threadsafe`, after any step records the thread queued before it (FIFO)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any] = loop.create_future()

    def deliver(ok: bool, value: Any) -> None:
        if not fut.done():
            fut.set_result(value) if ok else fut.set_exception(value)

    def target() -> None:
        try:
            value, ok = fn(*args), True
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine
            value, ok = e, False
        try:
            loop.call_soon_threadsafe(deliver, ok, value)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    threading.Thread(target=target, name=name, daemon=True).start()
    return fut


@dataclass
class ThreadedAgent:
    """Base class: subclasses implement `_run_sync` (runs in a worker thread, never raises)."""

    timeout_s: float | None = None  # per-instance wall-clock limit
    stop_grace_s: float = 120.0  # after a stop request, how long to wait for the worker thread
    predictions_path: Path | None = None  # append swebench predictions here when set
    model_name_or_path: str | None = None  # defaults to "<agent name>/<served model>"

    name = "threaded"

    def model_name(self, endpoint: Endpoint) -> str:
        return self.model_name_or_path or f"{self.name}/{endpoint.model}"

    async def run_instance(self, instance: Instance, program_id: str, endpoint: Endpoint,
                           sink: StepSink) -> InstanceResult:
        loop = asyncio.get_running_loop()
        iid = instance["instance_id"]
        recorder = StepRecorder(program_id, iid, sink, loop)
        stop = StopSignal()
        result = InstanceResult(instance_id=iid, program_id=program_id, status="error")
        task = run_in_own_thread(f"{self.name}:{iid}", self._run_sync, instance, program_id, endpoint,
                                 recorder, stop, result)
        try:
            done, _ = await asyncio.wait({task}, timeout=self.timeout_s)
            if not done:
                result.extra["timed_out"] = True
                stop.set()
                await asyncio.wait({task}, timeout=self.stop_grace_s)
            if task.done():
                task.result()  # _run_sync reports failures in `result`; this re-raises only bugs
            else:
                result.error = f"worker still running {self.stop_grace_s:.0f} s after the stop request"
            if result.extra.get("timed_out"):
                result.status = "timeout"
                result.error = result.error or f"instance exceeded {self.timeout_s} s"
        except asyncio.CancelledError:
            stop.set()
            try:
                await asyncio.wait({task}, timeout=self.stop_grace_s)
            except BaseException:  # noqa: BLE001 - cancelled again: release anyway, below
                pass
            result.status = "cancelled"
            raise
        finally:
            result.steps = recorder.calls
            released = await release_program(endpoint, program_id)
            result.extra["released"] = released
            if endpoint.thunderagent and released is None:
                log.warning("release of program %r failed", program_id)  # %r: ids come from datasets; one line
            if self.predictions_path is not None and result.status != "cancelled":
                append_prediction(self.predictions_path, prediction(
                    iid, self.model_name(endpoint), result.patch, program_id=program_id, status=result.status))
        return result

    def _run_sync(self, instance: Instance, program_id: str, endpoint: Endpoint, recorder: StepRecorder,
                  stop: StopSignal, result: InstanceResult) -> None:  # pragma: no cover - abstract
        raise NotImplementedError
