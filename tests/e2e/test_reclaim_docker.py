"""Tool-resource reclaim against a real Docker engine (started in CI by scripts/ci/services/dockerd.sh).

Containers are created from the local image thunderbench/busybox:test (built from busybox-static by the
service script; there is no registry). In CI — CI=true, or when the service script exported
THUNDERBENCH_DOCKER_IMAGE — a missing engine or image FAILS these tests with a clear message; on a developer
machine without Docker they are skipped with the reason.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ThunderAgent.reclaim import DockerReclaimer

pytestmark = [pytest.mark.real, pytest.mark.docker]

IMAGE = os.environ.get("THUNDERBENCH_DOCKER_IMAGE", "thunderbench/busybox:test")
LABEL = "thunderbench.test"
DEAD_SOCKET = "unix:///nonexistent/thunderbench-dead-docker.sock"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes") or "THUNDERBENCH_DOCKER_IMAGE" in os.environ


def _unavailable(reason: str) -> None:
    msg = f"{reason} (start one with: bash scripts/ci/services/dockerd.sh)"
    if _in_ci():
        pytest.fail(f"Docker reclaim tests need a Docker engine in CI: {msg}", pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def docker_client() -> Iterator[Any]:
    """A docker.DockerClient for the engine at $DOCKER_HOST; leftover test containers removed at the end."""
    import docker

    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine"
        _unavailable(f"no Docker engine at {os.environ.get('DOCKER_HOST', 'the default socket')}: {exc}")
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        _unavailable(f"image {IMAGE} not found")
    yield client
    for c in client.containers.list(all=True, filters={"label": LABEL}):
        c.remove(force=True)
    client.close()


@pytest.fixture
def make_container(docker_client: Any) -> Callable[..., str]:
    """Start a sleeping container (PID 1 `sleep` ignores SIGTERM, so `docker stop` waits its full timeout)."""

    def make(image: str = IMAGE) -> str:
        c = docker_client.containers.run(image, ["sleep", "600"], detach=True, labels={LABEL: "reclaim"})
        return c.id

    return make


def exists(client: Any, cid: str) -> bool:
    import docker

    try:
        client.api.inspect_container(cid)
        return True
    except docker.errors.NotFound:
        return False


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `pred` until true; returns the seconds it took; fails with `what` after `timeout`."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - t0


# --- the reclaimer alone on the real engine ----------------------------------------------------------------
def test_reclaimer_stops_and_removes_real_containers(docker_client: Any, make_container: Callable[..., str]) -> None:
    ids = [make_container(), make_container()]
    assert all(docker_client.api.inspect_container(i)["State"]["Running"] for i in ids)
    r = DockerReclaimer(stop_timeout=1)
    t0 = time.perf_counter()
    r.schedule("prog-real", {"docker_ids": [ids[0], ids[1][:12]]})  # full id and short id both work
    assert time.perf_counter() - t0 < 0.05  # schedule only enqueues
    wait_until(lambda: not any(exists(docker_client, i) for i in ids), 30, "containers to be removed")
    assert r.wait_idle(10)
    snap = r.snapshot()
    assert snap["resources"] == {"docker_ids:removed": 2}
    assert snap["errors"] == {}
    # a second release of the same ids: already gone, no error
    r.schedule("prog-real", {"docker_ids": ids})
    assert r.wait_idle(10)
    assert r.snapshot()["resources"]["docker_ids:already_gone"] == 2
    assert docker_client.images.get(IMAGE)  # the shared base image is never touched by default
    r.close(5)


def test_orphaned_image_removed_when_enabled_shared_one_kept(docker_client: Any,
                                                              make_container: Callable[..., str]) -> None:
    # A per-program image (as an agent harness would build per instance): commit a container to a new tag.
    base = docker_client.containers.get(make_container())
    tag = f"thunderbench/reclaim-orphan:{uuid.uuid4().hex[:8]}"
    image = base.commit(repository=tag.split(":")[0], tag=tag.split(":")[1])
    base.remove(force=True)
    mine = make_container(tag)
    r = DockerReclaimer(stop_timeout=1, remove_images=True)
    r.schedule("prog-img", {"docker_ids": [mine]})
    assert r.wait_idle(30)
    import docker

    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(image.id)
    assert docker_client.images.get(IMAGE)  # the base image has a child removed, itself untouched
    assert r.snapshot()["images_removed"] == 1

    # an image another (unreleased) container still uses is kept
    other = make_container()
    mine2 = make_container()
    r.schedule("prog-img2", {"docker_ids": [mine2]})
    assert r.wait_idle(30)
    assert docker_client.images.get(IMAGE) and exists(docker_client, other)
    assert r.snapshot()["images_removed"] == 1
    r.close(5)


def test_daemon_down_is_counted_not_raised() -> None:
    r = DockerReclaimer(docker_host=DEAD_SOCKET, stop_timeout=1)
    t0 = time.perf_counter()
    r.schedule("prog-dead", {"docker_ids": ["abc123", "def456"]})
    assert r.wait_idle(10)
    assert time.perf_counter() - t0 < 5
    snap = r.snapshot()
    assert snap["errors"] == {"daemon_unavailable": 2}
    assert snap["resources"] == {"docker_ids:failed": 2}
    r.close(1)
