"""Unit tests of ThunderAgent/reclaim.py against a fake Docker API (no daemon needed).

The real-engine counterpart is tests/e2e/test_reclaim_docker.py.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import docker.errors
import pytest
import requests.exceptions
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ThunderAgent.config import Config
from ThunderAgent.reclaim import (
    DockerReclaimer,
    Reclaimer,
    escape_id,
    make_reclaimer,
    reclaimer_from_config,
)


class FakeDocker:
    """An in-memory stand-in for docker.APIClient: containers {id: {"Image", "Running"}} and images."""

    def __init__(self) -> None:
        self.containers_: dict[str, dict[str, Any]] = {}
        self.images: set[str] = set()
        self.calls: list[tuple[str, ...]] = []
        self.fail: dict[str, BaseException] = {}  # method name -> exception to raise
        self.lock = threading.Lock()

    def add(
        self, cid: str, image: str = "sha256:img", running: bool = True, labels: dict[str, str] | None = None
    ) -> None:
        self.containers_[cid] = {"Image": image, "Running": running, "Labels": labels}
        self.images.add(image)

    def _maybe_fail(self, name: str) -> None:
        if name in self.fail:
            raise self.fail[name]

    def inspect_container(self, container: str) -> dict[str, Any]:
        self.calls.append(("inspect", container))
        self._maybe_fail("inspect_container")
        c = self.containers_.get(container)
        if c is None:
            raise docker.errors.NotFound(f"No such container: {container}")
        return {
            "Id": container,
            "Image": c["Image"],
            "State": {"Running": c["Running"]},
            "Config": {"Labels": c["Labels"]},
        }

    def stop(self, container: str, timeout: int | None = None) -> None:
        self.calls.append(("stop", container, str(timeout)))
        self._maybe_fail("stop")
        self.containers_[container]["Running"] = False

    def remove_container(
        self, container: str, v: bool = False, link: bool = False, force: bool = False
    ) -> None:
        self.calls.append(("remove", container, f"v={v}", f"force={force}"))
        self._maybe_fail("remove_container")
        if self.containers_.pop(container, None) is None:
            raise docker.errors.NotFound(f"No such container: {container}")

    def containers(
        self, quiet: bool = False, all: bool = False, filters: dict | None = None, **kw: Any
    ) -> list[dict[str, Any]]:
        image = (filters or {}).get("ancestor")
        self.calls.append(("containers", str(image)))
        return [{"Id": cid} for cid, c in self.containers_.items() if image is None or c["Image"] == image]

    def remove_image(self, image: str, force: bool = False, noprune: bool = False) -> None:
        self.calls.append(("remove_image", image, f"force={force}"))
        self._maybe_fail("remove_image")
        self.images.discard(image)


def http_response(status: int) -> SimpleNamespace:
    """Just enough of a requests.Response for docker.errors.APIError (status_code, url, reason)."""
    return SimpleNamespace(status_code=status, url="http+docker://localhost/v1.41/x", reason="fake")


def docker_reclaimer(fake: FakeDocker, **kw: Any) -> DockerReclaimer:
    return DockerReclaimer(client_factory=lambda: fake, **kw)


def finish(r: Reclaimer) -> dict[str, Any]:
    assert r.wait_idle(5.0), "reclaim jobs did not finish within 5 s"
    return r.snapshot()


# --- Docker handler ---------------------------------------------------------------------------------------
def test_running_container_is_inspected_stopped_then_removed_with_volumes() -> None:
    fake = FakeDocker()
    fake.add("c1")
    fake.add("c2", running=False)
    r = docker_reclaimer(fake, stop_timeout=3)
    r.schedule("p1", {"docker_ids": ["c1", "c2", "c1"]})  # duplicate id handled once
    snap = finish(r)
    assert fake.containers_ == {}
    assert [c for c in fake.calls if c[1] == "c1"] == [
        ("inspect", "c1"),
        ("stop", "c1", "3"),
        ("remove", "c1", "v=True", "force=True"),
    ]
    assert ("stop", "c2", "3") not in fake.calls  # not running: no stop
    assert snap["resources"] == {"docker_ids:removed": 2}
    assert snap["errors"] == {}
    assert snap["jobs"] == {"done": 1}
    assert not any(c[0] == "remove_image" for c in fake.calls)  # images kept by default


def test_unknown_container_counts_as_already_gone_not_error() -> None:
    fake = FakeDocker()
    r = docker_reclaimer(fake)
    r.schedule("p1", {"docker_ids": ["gone"]})
    snap = finish(r)
    assert snap["resources"] == {"docker_ids:already_gone": 1}
    assert snap["errors"] == {}


def test_daemon_down_at_connect_counts_each_id_and_reconnects_next_job() -> None:
    fake = FakeDocker()
    fake.add("c1")
    attempts = []

    def factory() -> FakeDocker:
        attempts.append(1)
        if len(attempts) == 1:
            raise docker.errors.DockerException("Error while fetching server API version: refused")
        return fake

    r = DockerReclaimer(client_factory=factory)
    r.schedule("p1", {"docker_ids": ["a", "b"]})
    snap = finish(r)
    assert snap["errors"] == {"daemon_unavailable": 2}
    assert snap["resources"] == {"docker_ids:failed": 2}
    r.schedule("p2", {"docker_ids": ["c1"]})
    snap = finish(r)
    assert len(attempts) == 2
    assert "c1" not in fake.containers_
    assert snap["resources"]["docker_ids:removed"] == 1


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (requests.exceptions.ConnectionError("refused"), "daemon_unavailable"),
        (requests.exceptions.ReadTimeout("slow"), "timeout"),
        (docker.errors.APIError("boom", response=http_response(500)), "api_error"),
        (RuntimeError("surprise"), "unexpected"),
    ],
)
def test_errors_during_a_job_are_classified_counted_and_the_job_goes_on(
    exc: BaseException, kind: str
) -> None:
    fake = FakeDocker()
    fake.add("c1")
    fake.add("c2")
    fake.fail["stop"] = exc
    r = docker_reclaimer(fake)
    r.schedule("p1", {"docker_ids": ["c1", "c2"]})
    snap = finish(r)
    assert snap["errors"] == {kind: 2}  # both ids tried, each failure counted
    assert snap["resources"] == {"docker_ids:failed": 2}


def test_connection_error_drops_the_client_so_the_next_job_reconnects() -> None:
    fake = FakeDocker()
    fake.add("c1")
    made = []

    def factory() -> FakeDocker:
        made.append(1)
        return fake

    r = DockerReclaimer(client_factory=factory)
    fake.fail["inspect_container"] = requests.exceptions.ConnectionError("daemon restarted")
    r.schedule("p1", {"docker_ids": ["c1"]})
    finish(r)
    del fake.fail["inspect_container"]
    r.schedule("p1", {"docker_ids": ["c1"]})
    snap = finish(r)
    assert len(made) == 2
    assert snap["resources"] == {"docker_ids:failed": 1, "docker_ids:removed": 1}


@pytest.mark.parametrize("bad", ["../images/x", "a/b", "", "-rf", "a" * 200, "c1\nINFO forged", "c 1", "é"])
def test_invalid_ids_never_reach_the_docker_api(bad: str) -> None:
    fake = FakeDocker()
    fake.add("ok1")
    r = docker_reclaimer(fake)
    r.schedule("p1", {"docker_ids": [bad, "ok1"]})
    snap = finish(r)
    assert all(c[1] != bad for c in fake.calls)
    assert "ok1" not in fake.containers_
    if bad:  # an empty string is just a (failed) id too
        assert snap["errors"] == {"invalid_id": 1}


def test_orphaned_images_removed_only_when_enabled_and_unused() -> None:
    fake = FakeDocker()
    fake.add("c1", image="sha256:solo")
    fake.add("c2", image="sha256:shared")
    fake.add("other", image="sha256:shared")  # another program's container keeps this image alive
    r = docker_reclaimer(fake, remove_images=True)
    r.schedule("p1", {"docker_ids": ["c1", "c2"]})
    snap = finish(r)
    assert fake.images == {"sha256:shared"}
    assert ("remove_image", "sha256:solo", "force=False") in fake.calls
    assert snap["images_removed"] == 1


def test_image_conflict_is_kept_quietly_other_image_errors_counted() -> None:
    fake = FakeDocker()
    fake.add("c1", image="sha256:tagged-twice")
    fake.fail["remove_image"] = docker.errors.APIError(
        "conflict", response=http_response(409), explanation="must be forced"
    )
    r = docker_reclaimer(fake, remove_images=True)
    r.schedule("p1", {"docker_ids": ["c1"]})
    snap = finish(r)
    assert snap["errors"] == {} and snap["images_removed"] == 0
    fake.add("c2", image="sha256:x")
    fake.fail["remove_image"] = docker.errors.APIError("boom", response=http_response(500))
    r.schedule("p2", {"docker_ids": ["c2"]})
    snap = finish(r)
    assert snap["errors"] == {"api_error": 1}


@pytest.mark.parametrize(
    ("required", "labels", "removed"),
    [
        ("sandbox", {"sandbox": ""}, True),
        ("sandbox", {"sandbox": "x"}, True),
        ("sandbox=swe", {"sandbox": "swe"}, True),
        ("sandbox=swe", {"sandbox": "other"}, False),
        ("sandbox", {"other": "1"}, False),
        ("sandbox", None, False),
    ],
)
def test_require_label_leaves_unlabelled_containers_alone(
    required: str, labels: dict[str, str] | None, removed: bool
) -> None:
    fake = FakeDocker()
    fake.add("c1", labels=labels)
    r = docker_reclaimer(fake, require_label=required)
    r.schedule("p1", {"docker_ids": ["c1"]})
    snap = finish(r)
    assert ("c1" not in fake.containers_) is removed
    if removed:
        assert snap["resources"] == {"docker_ids:removed": 1} and snap["errors"] == {}
    else:
        assert snap["resources"] == {"docker_ids:refused": 1} and snap["errors"] == {"label_mismatch": 1}
        assert [c[0] for c in fake.calls] == ["inspect"]  # never stopped


# --- generic machinery ------------------------------------------------------------------------------------
def test_schedule_returns_immediately_while_a_handler_blocks() -> None:
    release = threading.Event()
    started = threading.Event()
    seen: list[tuple[str, list[str]]] = []

    def slow(pid: str, ids: list[str]) -> None:
        started.set()
        release.wait(5)
        seen.append((pid, ids))

    r = Reclaimer()
    r.add_handler("tool_ids", slow)
    t0 = time.perf_counter()
    r.schedule("p1", {"tool_ids": ["t1", "t2", "t1"]})
    assert time.perf_counter() - t0 < 0.05
    assert started.wait(5)
    assert r.pending == 1
    release.set()
    finish(r)
    assert seen == [("p1", ["t1", "t2"])]


def test_tool_hooks_run_in_order_and_a_failing_hook_does_not_stop_the_next() -> None:
    order: list[str] = []

    def bad(pid: str, ids: list[str]) -> None:
        order.append("bad")
        raise OSError("port already free")

    def good(pid: str, ids: list[str]) -> None:
        order.append("good:" + ",".join(ids))

    r = Reclaimer()
    r.add_handler("tool_ids", bad)
    r.add_handler("tool_ids", good)
    r.schedule("p1", {"tool_ids": ["x"], "scratch_dirs": ["/tmp/a"], "docker_ids": []})
    snap = finish(r)
    assert order == ["bad", "good:x"]
    assert snap["errors"] == {"handler": 1}
    assert snap["resources"] == {"scratch_dirs:unhandled": 1}  # empty docker_ids: nothing to do


def test_empty_resources_schedule_nothing() -> None:
    r = Reclaimer()
    r.schedule("p1", {})
    r.schedule("p1", {"docker_ids": []})
    assert r.snapshot()["jobs"] == {}


def test_queue_is_bounded_and_overflow_is_counted() -> None:
    gate = threading.Event()
    r = Reclaimer(max_workers=1, max_pending=2)
    r.add_handler("tool_ids", lambda pid, ids: gate.wait(5))
    for i in range(5):
        r.schedule(f"p{i}", {"tool_ids": ["t"]})
    assert r.snapshot()["errors"] == {"queue_full": 3}
    gate.set()
    assert finish(r)["jobs"] == {"done": 2}


def test_close_is_bounded_and_later_schedules_are_refused() -> None:
    gate = threading.Event()
    r = Reclaimer(max_workers=1)
    r.add_handler("tool_ids", lambda pid, ids: gate.wait(5))
    r.schedule("p1", {"tool_ids": ["t"]})
    r.schedule("p2", {"tool_ids": ["t"]})  # queued behind p1, cancelled by close
    t0 = time.perf_counter()
    assert r.close(timeout=0.2) is False
    assert time.perf_counter() - t0 < 1.0
    r.schedule("p3", {"tool_ids": ["t"]})
    assert r.snapshot()["errors"] == {"closed": 1, "cancelled": 1}  # p2 never ran, p3 refused
    assert r.pending == 1  # p1 still running
    gate.set()
    assert r.wait_idle(5) and r.pending == 0


async def test_aclose_waits_for_in_flight_jobs_without_blocking_the_loop() -> None:
    gate = threading.Event()
    r = Reclaimer()
    r.add_handler("tool_ids", lambda pid, ids: gate.wait(5))
    r.schedule("p1", {"tool_ids": ["t"]})
    closing = asyncio.create_task(r.aclose(timeout=5))
    ticks = 0
    while not closing.done() and ticks < 5:  # the loop keeps running while aclose waits
        await asyncio.sleep(0.01)
        ticks += 1
    assert ticks == 5 and not closing.done()
    gate.set()
    assert await asyncio.wait_for(closing, 5) is True


def test_metrics_on_a_registry() -> None:
    fake = FakeDocker()
    fake.add("c1")
    r = docker_reclaimer(fake)
    registry = CollectorRegistry()
    r.register_metrics(registry)
    r.schedule("p1", {"docker_ids": ["c1", "gone", "../x"]})
    finish(r)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(generate_latest(registry).decode())
        for s in fam.samples
    }
    assert samples[("thunderagent_reclaim_jobs_total", ())] == 1
    assert (
        samples[("thunderagent_reclaim_resources_total", (("key", "docker_ids"), ("outcome", "removed")))]
        == 1
    )
    assert (
        samples[
            ("thunderagent_reclaim_resources_total", (("key", "docker_ids"), ("outcome", "already_gone")))
        ]
        == 1
    )
    assert samples[("thunderagent_reclaim_errors_total", (("kind", "invalid_id"),))] == 1
    assert samples[("thunderagent_reclaim_pending", ())] == 0
    assert samples[("thunderagent_reclaim_images_removed_total", ())] == 0
    with pytest.raises(ValueError):  # registering twice is refused (duplicate names), not silently doubled
        r.register_metrics(registry)


def test_program_ids_cannot_forge_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeDocker()
    r = docker_reclaimer(fake)
    with caplog.at_level(logging.INFO, logger="ThunderAgent.reclaim"):
        r.schedule("evil\nERROR fake line\x1b[31m", {"docker_ids": ["gone"]})
        finish(r)
    messages = [rec.getMessage() for rec in caplog.records]
    assert messages and all("\n" not in m and "\x1b" not in m for m in messages)
    assert escape_id("x" * 500).endswith("...'") and len(escape_id("x" * 500)) < 210


def test_factories() -> None:
    assert make_reclaimer("none") is None
    assert isinstance(make_reclaimer("docker"), DockerReclaimer)
    with pytest.raises(ValueError, match="unknown reclaim kind"):
        make_reclaimer("podman")
    with pytest.raises(ValueError, match="stop timeout"):
        make_reclaimer("docker", stop_timeout=-1)
    assert reclaimer_from_config(Config()) is None
    r = reclaimer_from_config(
        replace(
            Config(),
            reclaim="docker",
            reclaim_images=True,
            reclaim_stop_timeout=7,
            reclaim_docker_host="unix:///nonexistent.sock",
            reclaim_label="k=v",
        )
    )
    assert isinstance(r, DockerReclaimer)
    assert (r.remove_images, r.stop_timeout, r.docker_host, r.require_label) == (
        True,
        7,
        "unix:///nonexistent.sock",
        "k=v",
    )


def test_concurrent_schedules_from_many_threads_count_exactly() -> None:
    fake = FakeDocker()
    for i in range(200):
        fake.add(f"c{i}", image=f"sha256:{i % 7}")
    r = docker_reclaimer(fake, max_workers=4)

    def release(lo: int) -> None:
        for i in range(lo, lo + 50):
            r.schedule(f"p{i}", {"docker_ids": [f"c{i}", "gone"], "tool_ids": ["t"]})

    threads = [threading.Thread(target=release, args=(lo,)) for lo in range(0, 200, 50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = finish(r)
    assert fake.containers_ == {}
    assert snap["jobs"] == {"done": 200}
    assert snap["resources"] == {
        "docker_ids:removed": 200,
        "docker_ids:already_gone": 200,
        "tool_ids:unhandled": 200,
    }
    assert snap["errors"] == {}


@settings(max_examples=60, deadline=None)
@given(
    program_id=st.text(max_size=300),
    resources=st.dictionaries(
        st.sampled_from(["docker_ids", "tool_ids", "other"]),
        st.lists(st.one_of(st.text(max_size=200), st.integers()), max_size=5),
        max_size=3,
    ),
)
def test_schedule_never_raises_and_only_well_formed_ids_reach_docker(
    program_id: str, resources: dict[str, list[Any]]
) -> None:
    fake = FakeDocker()
    r = docker_reclaimer(fake)
    r.schedule(program_id, resources)
    snap = finish(r)
    assert snap["pending"] == 0
    assert set(snap["errors"]) <= {"invalid_id"}
    for call in fake.calls:
        if call[0] == "inspect":
            assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", call[1])
    r.close(1)
