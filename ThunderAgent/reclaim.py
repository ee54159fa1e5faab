"""Tool-resource reclaim: free a program's sandboxes when the program ends.

Agents may attach resource ids to any request (`docker_ids`, `tool_ids`, top level or inside `extra_body`).
The proxy accumulates them per program, strips them before forwarding, and when the program is released or
expires it hands them to a reclaimer: ``reclaimer.schedule(program_id, resources)``.

Why a background executor: Docker calls are blocking HTTP over a unix socket and `docker stop` waits up to
its timeout for the process to exit. The proxy's event loop serves every program's LLM traffic, so one slow
teardown must never stall it. ``schedule`` only enqueues and returns; a small bounded thread pool does the
work. Errors (unknown container, daemon down, timeouts) are logged and counted, never raised to the caller:
a release must succeed even when the sandbox is already gone or the daemon is down.

Resource kinds are pluggable: a *handler* is a callable ``(program_id, ids) -> None`` registered for a
resource key (``reclaimer.add_handler("tool_ids", fn)``). ``DockerReclaimer`` registers the built-in
handler for ``docker_ids``; generic ``tool_ids`` go to whatever hooks the embedding application registers
(for instance a hook that deletes scratch directories or frees ports). A handler raising counts one
``handler`` error.

Metrics: the reclaimer keeps plain counters and exposes them as a Prometheus collector, so it can be
registered on the proxy's own CollectorRegistry (``reclaimer.register_metrics(registry)``) without global
state. See docs/proxy.md, "Tool-resource reclaim".

The Docker SDK is imported inside the Docker handler's functions: the proxy without --reclaim docker never
needs it installed. The module is about 500 lines: the generic reclaimer (queue, pool, counters) and the
Docker one (ownership labels, stop/remove, images) share their error accounting.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from ThunderAgent.logsafe import escape_control

log = logging.getLogger("ThunderAgent.reclaim")

RECLAIM_KINDS = ("none", "docker")

Handler = Callable[[str, list[str]], None]
"""A reclaim hook: called in a worker thread with (program_id, ids) for one resource key."""

# A container id (hex) or name as Docker accepts it. Anything else is refused before it reaches the Docker
# API: the SDK puts the id into the URL path, so a value like "../images/x" must never get that far.
_CONTAINER_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class DockerAPI(Protocol):
    """The slice of ``docker.APIClient`` the reclaimer uses (a fake implements it in unit tests)."""

    def inspect_container(self, container: str) -> dict[str, Any]: ...
    def stop(self, container: str, timeout: int | None = None) -> None: ...
    def remove_container(
        self, container: str, v: bool = False, link: bool = False, force: bool = False
    ) -> None: ...
    def containers(
        self, quiet: bool = False, all: bool = False, filters: dict | None = None, **kw: Any
    ) -> list[dict[str, Any]]: ...
    def remove_image(self, image: str, force: bool = False, noprune: bool = False) -> None: ...


def escape_id(value: str, limit: int = 200) -> str:
    """A log-safe rendering of an untrusted id: repr() escapes control characters (no forged log lines)."""
    text = value if len(value) <= limit else value[:limit] + "..."
    return repr(text)


class Reclaimer(Collector):
    """Runs registered handlers for a program's resources on a bounded background thread pool.

    ``schedule`` never blocks and never raises. Jobs beyond ``max_pending`` are dropped and counted
    (``queue_full``) so that a flood of expiring programs cannot grow memory without bound.
    """

    def __init__(self, *, max_workers: int = 2, max_pending: int = 10_000) -> None:
        self._handlers: dict[str, list[Handler]] = {}
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="reclaim")
        self._max_pending = max_pending
        self._cond = threading.Condition()
        self._pending = 0  # jobs scheduled and not finished (queued + running)
        self._closed = False
        # Counters, all guarded by self._cond's lock.
        self.jobs: Counter[str] = Counter()  # outcome: "done"
        self.resources: Counter[tuple[str, str]] = Counter()  # (key, outcome) per resource id
        self.errors: Counter[str] = Counter()  # kind -> count
        self.images_removed = 0

    # --- registration ---------------------------------------------------------------------------------
    def add_handler(self, key: str, handler: Handler) -> None:
        """Register ``handler`` for resource key ``key`` (e.g. "tool_ids"); several handlers run in order."""
        self._handlers.setdefault(key, []).append(handler)

    # --- the non-blocking entry point -----------------------------------------------------------------
    def schedule(self, program_id: str, resources: Mapping[str, Iterable[str]]) -> None:
        """Queue reclaim of ``resources`` (key -> ids) for ``program_id``; returns immediately, never raises.

        Safe to call from the event loop or any thread. Keys without a handler are ignored (counted as
        ``unhandled`` resources so that a misconfiguration is visible in /metrics).
        """
        try:
            work = {k: list(dict.fromkeys(str(i) for i in ids)) for k, ids in resources.items()}
            work = {k: ids for k, ids in work.items() if ids}
            if not work:
                return
            with self._cond:
                if self._closed:
                    self.errors["closed"] += 1
                    log.warning("reclaim for program %s dropped: reclaimer closed", escape_id(program_id))
                    return
                if self._pending >= self._max_pending:
                    self.errors["queue_full"] += 1
                    log.warning(
                        "reclaim for program %s dropped: %d jobs pending",
                        escape_id(program_id),
                        self._pending,
                    )
                    return
                self._pending += 1
            try:
                future = self._executor.submit(self._run, program_id, work)
            except RuntimeError:  # the pool was shut down between the check above and here
                self._job_gone("closed")
                return
            future.add_done_callback(self._on_done)
        except Exception:  # noqa: BLE001 - a release must never fail because of reclaim
            log.exception("could not schedule reclaim for program %s", escape_id(program_id))
            with self._cond:
                self.errors["unexpected"] += 1

    def _job_gone(self, error_kind: str) -> None:
        """A job that was counted as pending but will never run."""
        with self._cond:
            self._pending -= 1
            self.errors[error_kind] += 1
            self._cond.notify_all()

    def _on_done(self, future: Future[None]) -> None:
        if future.cancelled():  # still queued when close() gave up waiting
            self._job_gone("cancelled")

    def _run(self, program_id: str, work: dict[str, list[str]]) -> None:
        try:
            for key, ids in work.items():
                handlers = self._handlers.get(key)
                if not handlers:
                    self._count_resources(key, "unhandled", len(ids))
                    continue
                for handler in handlers:
                    try:
                        handler(program_id, ids)
                    except Exception as exc:  # noqa: BLE001 - hooks are third-party code
                        self._count_error("handler")
                        log.warning(
                            "reclaim hook %s for program %s failed: %s",
                            getattr(handler, "__name__", handler),
                            escape_id(program_id),
                            escape_control(str(exc)),
                        )
        finally:
            with self._cond:
                self._pending -= 1
                self.jobs["done"] += 1
                self._cond.notify_all()

    # --- bookkeeping helpers for handlers -------------------------------------------------------------
    def _count_resources(self, key: str, outcome: str, n: int = 1) -> None:
        with self._cond:
            self.resources[(key, outcome)] += n

    def _count_error(self, kind: str, n: int = 1) -> None:
        with self._cond:
            self.errors[kind] += n

    # --- waiting and shutdown ---------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        with self._cond:
            return self._pending

    def wait_idle(self, timeout: float) -> bool:
        """Block until no job is pending or ``timeout`` seconds pass; True when idle."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout=timeout)

    def close(self, timeout: float = 10.0) -> bool:
        """Stop accepting jobs, wait up to ``timeout`` s for in-flight ones; True when all finished.

        Jobs still queued after the deadline are cancelled (and logged): shutdown is bounded.
        """
        with self._cond:
            self._closed = True
        idle = self.wait_idle(timeout)
        if not idle:
            log.warning(
                "reclaim shutdown: %d job(s) still pending after %.1f s; abandoning them",
                self.pending,
                timeout,
            )
        self._executor.shutdown(wait=False, cancel_futures=True)
        return idle

    async def aclose(self, timeout: float = 10.0) -> bool:
        """``close`` for an asyncio lifespan: waits in a thread so the event loop keeps running."""
        return await asyncio.to_thread(self.close, timeout)

    # --- metrics ------------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """A consistent copy of all counters (for tests, /programs-style JSON, logs)."""
        with self._cond:
            return {
                "pending": self._pending,
                "jobs": dict(self.jobs),
                "resources": {f"{k}:{o}": n for (k, o), n in self.resources.items()},
                "errors": dict(self.errors),
                "images_removed": self.images_removed,
            }

    def collect(self) -> Iterator[Any]:
        """prometheus_client Collector protocol: the reclaimer's counters as metric families."""
        with self._cond:
            jobs = sum(self.jobs.values())
            resources = dict(self.resources)
            errors = dict(self.errors)
            images = self.images_removed
            pending = self._pending
        fam = CounterMetricFamily(
            "thunderagent_reclaim_jobs",
            "Reclaim jobs (one per program release or " "expiry with resources) finished.",
        )
        fam.add_metric([], jobs)
        yield fam
        fam = GaugeMetricFamily("thunderagent_reclaim_pending", "Reclaim jobs queued or running.")
        fam.add_metric([], pending)
        yield fam
        fam = CounterMetricFamily(
            "thunderagent_reclaim_resources",
            "Resource ids handled, by resource key "
            "and outcome (removed, already_gone, refused, failed, unhandled).",
            labels=["key", "outcome"],
        )
        for (key, outcome), n in sorted(resources.items()):
            fam.add_metric([key, outcome], n)
        yield fam
        fam = CounterMetricFamily(
            "thunderagent_reclaim_errors",
            "Reclaim errors by kind (daemon_unavailable, "
            "timeout, api_error, invalid_id, label_mismatch, handler, queue_full, "
            "closed, cancelled, unexpected).",
            labels=["kind"],
        )
        for kind, n in sorted(errors.items()):
            fam.add_metric([kind], n)
        yield fam
        fam = CounterMetricFamily(
            "thunderagent_reclaim_images_removed",
            "Orphaned images removed after " "their containers were reclaimed.",
        )
        fam.add_metric([], images)
        yield fam

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Expose this reclaimer's counters on ``registry`` (the proxy's per-app registry)."""
        registry.register(self)

    def describe(self) -> list[Any]:
        # Lets CollectorRegistry check for duplicate names at registration without calling collect().
        return list(self.collect())


class DockerReclaimer(Reclaimer):
    """Stops and removes a program's containers (``docker_ids``) with the Docker SDK.

    For each container: inspect (remembers its image), stop with a short timeout, remove with its anonymous
    volumes. With ``remove_images`` it then removes each remembered image that no container (in any state)
    still uses; Docker itself refuses to remove an image a container uses, so a race cannot break a sandbox.
    A container that is already gone counts as ``already_gone``, not as an error. With ``require_label``
    only containers carrying that label are touched (others count as ``refused`` + a ``label_mismatch``
    error): a client can then only tear down sandboxes, never an unrelated container it names.

    The Docker client is created lazily in a worker thread; when the daemon is unreachable every id of the
    job counts one ``daemon_unavailable`` error and the next job tries to connect again (no retry of old
    jobs: the containers are left to an operator, as upstream ThunderAgent's reclaim leaves them).
    """

    def __init__(
        self,
        *,
        docker_host: str | None = None,
        stop_timeout: int = 2,
        remove_images: bool = False,
        require_label: str | None = None,
        api_timeout: float = 30.0,
        client_factory: Callable[[], DockerAPI] | None = None,
        max_workers: int = 2,
        max_pending: int = 10_000,
    ) -> None:
        if stop_timeout < 0:  # Docker reads a negative stop timeout as "wait forever"
            raise ValueError(f"reclaim stop timeout must be >= 0 seconds, got {stop_timeout}")
        super().__init__(max_workers=max_workers, max_pending=max_pending)
        self.docker_host = docker_host
        self.stop_timeout = stop_timeout
        self.remove_images = remove_images
        self.require_label = require_label
        self._api_timeout = api_timeout
        self._client_factory = client_factory or self._default_client
        self._client: DockerAPI | None = None
        self._client_lock = threading.Lock()
        self.add_handler("docker_ids", self._reclaim_containers)

    def _default_client(self) -> DockerAPI:
        import docker  # imported here: the proxy without --reclaim docker never needs the SDK

        if self.docker_host:
            return docker.APIClient(base_url=self.docker_host, version="auto", timeout=self._api_timeout)
        return docker.APIClient(version="auto", timeout=self._api_timeout, **docker.utils.kwargs_from_env())

    def _get_client(self) -> DockerAPI:
        with self._client_lock:
            if self._client is None:
                self._client = self._client_factory()
            return self._client

    def _drop_client(self) -> None:
        with self._client_lock:
            self._client = None

    def _reclaim_containers(self, program_id: str, ids: list[str]) -> None:
        valid = [i for i in ids if _CONTAINER_REF.fullmatch(i)]
        if len(valid) < len(ids):
            bad = [i for i in ids if not _CONTAINER_REF.fullmatch(i)]
            self._count_error("invalid_id", len(bad))
            self._count_resources("docker_ids", "failed", len(bad))
            log.warning(
                "program %s: ignoring %d invalid container id(s), e.g. %s",
                escape_id(program_id),
                len(bad),
                escape_id(bad[0], 80),
            )
        if not valid:
            return
        try:
            client = self._get_client()
        except Exception as exc:  # noqa: BLE001 - DockerException, connection errors
            kind = _classify(exc)
            self._count_error(kind, len(valid))
            self._count_resources("docker_ids", "failed", len(valid))
            log.warning(
                "program %s: cannot reach Docker to reclaim %d container(s) (%s): %s",
                escape_id(program_id),
                len(valid),
                kind,
                escape_control(str(exc)),
            )
            return
        images: set[str] = set()
        for cid in valid:
            outcome = self._reclaim_one(client, program_id, cid, images)
            self._count_resources("docker_ids", outcome)
        if self.remove_images and images:
            self._remove_orphaned_images(client, program_id, images)

    def _reclaim_one(self, client: DockerAPI, program_id: str, cid: str, images: set[str]) -> str:
        import docker.errors

        try:
            info = client.inspect_container(cid)
            if self.require_label and not _has_label(info, self.require_label):
                self._count_error("label_mismatch")
                log.warning(
                    "program %s: container %s lacks label %s; left alone",
                    escape_id(program_id),
                    escape_id(cid),
                    escape_id(self.require_label),
                )
                return "refused"
            image = info.get("Image")
            if image:
                images.add(image)
            if (info.get("State") or {}).get("Running"):
                client.stop(cid, timeout=self.stop_timeout)
            client.remove_container(cid, v=True, force=True)
            log.info("program %s: reclaimed container %s", escape_id(program_id), escape_id(cid))
            return "removed"
        except docker.errors.NotFound:
            log.info("program %s: container %s already gone", escape_id(program_id), escape_id(cid))
            return "already_gone"
        except Exception as exc:  # noqa: BLE001 - count and log every failure, never raise
            kind = _classify(exc)
            if kind == "daemon_unavailable":
                self._drop_client()  # reconnect (and renegotiate the API version) on the next job
            self._count_error(kind)
            log.warning(
                "program %s: reclaiming container %s failed (%s): %s",
                escape_id(program_id),
                escape_id(cid),
                kind,
                escape_control(str(exc)),
            )
            return "failed"

    def _remove_orphaned_images(self, client: DockerAPI, program_id: str, images: set[str]) -> None:
        import docker.errors

        for image in sorted(images):
            try:
                if client.containers(all=True, quiet=True, filters={"ancestor": image}):
                    continue  # still used by another container
                client.remove_image(image, force=False)
                with self._cond:
                    self.images_removed += 1
                log.info("program %s: removed orphaned image %s", escape_id(program_id), escape_id(image))
            except docker.errors.NotFound:
                continue  # removed meanwhile by someone else
            except docker.errors.APIError as exc:
                if exc.status_code == 409:  # in use, or tagged in several repositories: keep it
                    log.info(
                        "program %s: image %s kept: %s",
                        escape_id(program_id),
                        escape_id(image),
                        escape_control(str(exc.explanation)),
                    )
                    continue
                self._count_error("api_error")
                log.warning(
                    "program %s: removing image %s failed: %s",
                    escape_id(program_id),
                    escape_id(image),
                    escape_control(str(exc)),
                )
            except Exception as exc:  # noqa: BLE001
                self._count_error(_classify(exc))
                log.warning(
                    "program %s: removing image %s failed: %s",
                    escape_id(program_id),
                    escape_id(image),
                    escape_control(str(exc)),
                )


def _has_label(info: Mapping[str, Any], required: str) -> bool:
    """Whether an inspected container carries ``required`` ("KEY" = present, "KEY=VALUE" = that value)."""
    labels = (info.get("Config") or {}).get("Labels") or {}
    key, sep, value = required.partition("=")
    return key in labels and (not sep or labels[key] == value)


def _classify(exc: BaseException) -> str:
    """Map an exception from the Docker SDK (or requests underneath it) to an error-kind label."""
    import docker.errors
    import requests.exceptions

    if isinstance(exc, requests.exceptions.Timeout):
        return "timeout"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "daemon_unavailable"
    if isinstance(exc, docker.errors.APIError):
        return "api_error"
    if isinstance(exc, docker.errors.DockerException):  # e.g. "Error while fetching server API version"
        cause = exc.__cause__
        if cause is not None and not isinstance(cause, docker.errors.DockerException):
            return _classify(cause)
        return "daemon_unavailable"
    return "unexpected"


def make_reclaimer(
    kind: str,
    *,
    docker_host: str | None = None,
    stop_timeout: int = 2,
    remove_images: bool = False,
    require_label: str | None = None,
) -> Reclaimer | None:
    """The reclaimer for ``--reclaim KIND``: "none" -> None (the proxy drops resources), "docker" -> Docker.

    Raises ValueError for an unknown kind or a negative stop timeout (the CLI reports it in one line)."""
    if kind == "none":
        return None
    if kind == "docker":
        return DockerReclaimer(
            docker_host=docker_host,
            stop_timeout=stop_timeout,
            remove_images=remove_images,
            require_label=require_label,
        )
    raise ValueError(f"unknown reclaim kind {kind!r}; choose one of {', '.join(RECLAIM_KINDS)}")


def reclaimer_from_config(config: Any) -> Reclaimer | None:
    """``make_reclaimer`` with every reclaim knob taken from a ``ThunderAgent.config.Config``."""
    return make_reclaimer(
        config.reclaim,
        docker_host=config.reclaim_docker_host,
        stop_timeout=config.reclaim_stop_timeout,
        remove_images=config.reclaim_images,
        require_label=config.reclaim_label,
    )
