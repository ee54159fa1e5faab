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
    return (
        os.environ.get("CI", "").lower() in ("1", "true", "yes") or "THUNDERBENCH_DOCKER_IMAGE" in os.environ
    )


def _unavailable(reason: str) -> None:
    msg = f"{reason} (start one with: bash scripts/ci/services/dockerd.sh)"
    if _in_ci():
        pytest.fail(f"Docker reclaim tests need a Docker engine in CI: {msg}", pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def docker_client() -> Iterator[Any]:
    """A docker.DockerClient for the engine at $DOCKER_HOST; leftover test containers removed at the end."""
    import docker

    problem = None
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine"
        problem = f"no Docker engine at {os.environ.get('DOCKER_HOST', 'the default socket')}: {exc}"
    if problem is None:
        try:
            client.images.get(IMAGE)
        except docker.errors.ImageNotFound:
            problem = f"image {IMAGE} not found"
    if problem is not None:
        _unavailable(problem)  # outside the except blocks: one clear line, no chained traceback
    yield client
    for c in client.containers.list(all=True, filters={"label": LABEL}):
        c.remove(force=True)
    client.close()


@pytest.fixture
def make_container(docker_client: Any) -> Callable[..., str]:
    """Start a sleeping container (PID 1 `sleep` ignores SIGTERM, so `docker stop` waits its full timeout)."""

    def make(image: str = IMAGE, **labels: str) -> str:
        c = docker_client.containers.run(
            image, ["sleep", "600"], detach=True, labels={LABEL: "reclaim", **labels}
        )
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
def test_reclaimer_stops_and_removes_real_containers(
    docker_client: Any, make_container: Callable[..., str]
) -> None:
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


def test_label_guard_only_reclaims_sandboxes(docker_client: Any, make_container: Callable[..., str]) -> None:
    sandbox = make_container(**{"thunderbench.sandbox": "swe"})
    bystander = make_container()  # e.g. the user's database container, named by a confused or hostile client
    r = DockerReclaimer(stop_timeout=0, require_label="thunderbench.sandbox=swe")
    r.schedule("prog-label", {"docker_ids": [sandbox, bystander]})
    assert r.wait_idle(30)
    assert not exists(docker_client, sandbox)
    assert docker_client.api.inspect_container(bystander)["State"]["Running"]
    snap = r.snapshot()
    assert snap["resources"] == {"docker_ids:removed": 1, "docker_ids:refused": 1}
    assert snap["errors"] == {"label_mismatch": 1}
    r.close(5)


@pytest.mark.slow
def test_many_programs_reclaimed_concurrently(docker_client: Any, make_container: Callable[..., str]) -> None:
    # Several worker threads share one Docker API client (one requests session over the unix socket).
    ids = [make_container() for _ in range(6)]
    r = DockerReclaimer(stop_timeout=0, max_workers=3)
    t0 = time.perf_counter()
    for k in range(3):
        r.schedule(f"prog-many-{k}", {"docker_ids": ids[2 * k : 2 * k + 2]})
    assert r.wait_idle(60)
    took = time.perf_counter() - t0
    assert not any(exists(docker_client, i) for i in ids)
    assert r.snapshot()["resources"] == {"docker_ids:removed": 6} and r.snapshot()["errors"] == {}
    print(f"reclaimed 6 running containers (3 programs, 3 workers) in {took:.2f} s = {6 / took:.1f}/s")
    r.close(5)


def test_orphaned_image_removed_when_enabled_shared_one_kept(
    docker_client: Any, make_container: Callable[..., str]
) -> None:
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


# --- through the real proxy (uvicorn on a socket) in front of the fake vLLM backend ------------------------
@pytest.fixture
def proxy_server(fake_vllm: Any) -> Iterator[Callable[..., Any]]:
    """Start the real proxy app on a real socket: call it with a Config override and optional reclaimer."""
    from tests.fakes.server import ServerThread
    from ThunderAgent.app import create_app
    from ThunderAgent.config import Config

    started: list[Any] = []

    def start(reclaimer: Any = None, **config: Any) -> Any:
        cfg = Config(backends=(fake_vllm.url,), router="default", **config)
        srv = ServerThread(create_app(cfg, reclaimer=reclaimer)).start()
        srv.proxy = srv.app.state.proxy
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


def chat_body(program_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "program_id": program_id,
        **extra,
    }


def metric(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_release_through_the_proxy_strips_ids_and_removes_containers(
    docker_client: Any, make_container: Callable[..., str], fake_vllm: Any, proxy_server: Callable[..., Any]
) -> None:
    import httpx

    hooked: list[tuple[str, list[str]]] = []
    reclaimer = DockerReclaimer(stop_timeout=0)  # 0: SIGKILL at once (the slow test below covers a real stop)
    reclaimer.add_handler("tool_ids", lambda pid, ids: hooked.append((pid, ids)))
    srv = proxy_server(reclaimer)
    ids = [make_container(), make_container(), make_container()]
    keep = make_container()  # another program's sandbox: must survive
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        r1 = c.post(
            "/v1/chat/completions", json=chat_body("prog-a", docker_ids=ids[:2], tool_ids=["port:9001"])
        )
        r2 = c.post(
            "/v1/chat/completions",
            json=chat_body("prog-a", extra_body={"docker_ids": [ids[2], ids[0]], "top_k": 5}),
        )
        r3 = c.post("/v1/chat/completions", json=chat_body("prog-b", docker_ids=[keep]))
        assert [r.status_code for r in (r1, r2, r3)] == [200, 200, 200]
        # the engine never saw the resource ids (top level or in extra_body); other extra_body fields pass
        assert len(fake_vllm.requests) == 3
        for body in fake_vllm.requests:
            assert "docker_ids" not in body and "tool_ids" not in body and "program_id" not in body
            assert "docker_ids" not in (body.get("extra_body") or {})
        assert fake_vllm.requests[1]["extra_body"] == {"top_k": 5}
        assert all(exists(docker_client, i) for i in ids)  # nothing reclaimed before release

        t0 = time.perf_counter()
        rel = c.post("/programs/release", json={"program_id": "prog-a"})
        release_s = time.perf_counter() - t0
        assert rel.status_code == 200 and rel.json()["released"] is True
        gone_s = wait_until(lambda: not any(exists(docker_client, i) for i in ids), 30, "prog-a's containers")
        assert exists(docker_client, keep)
        assert reclaimer.wait_idle(10)
        assert hooked == [("prog-a", ["port:9001"])]
        text = c.get("/metrics").text
        assert metric(text, "thunderagent_reclaim_resources_total", key="docker_ids", outcome="removed") == 3
        assert metric(text, "thunderagent_reclaim_errors_total") == 0
    print(f"release answered in {release_s * 1000:.1f} ms; 3 containers gone {gone_s:.2f} s after it")


def test_idle_expiry_reclaims_containers(
    docker_client: Any, make_container: Callable[..., str], proxy_server: Callable[..., Any]
) -> None:
    import httpx

    srv = proxy_server(DockerReclaimer(stop_timeout=0), idle_ttl=0.5)
    cid = make_container()
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        assert (
            c.post("/v1/chat/completions", json=chat_body("prog-idle", docker_ids=[cid])).status_code == 200
        )
        wait_until(lambda: not exists(docker_client, cid), 30, "the idle program's container")
        assert "prog-idle" not in c.get("/programs").json()
        text = c.get("/metrics").text
        assert metric(text, "thunderagent_programs_expired_total") >= 1
        assert metric(text, "thunderagent_reclaim_resources_total", key="docker_ids", outcome="removed") == 1


def test_daemon_down_release_is_quick_and_error_counted(proxy_server: Callable[..., Any]) -> None:
    import httpx

    # The reclaimer comes from the Config (the --reclaim/--reclaim-docker-host path), pointed at a dead socket.
    srv = proxy_server(reclaim="docker", reclaim_docker_host=DEAD_SOCKET)
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        assert (
            c.post(
                "/v1/chat/completions",
                json=chat_body("prog-dead", docker_ids=["0123456789ab", "feedfacecafe"]),
            ).status_code
            == 200
        )
        t0 = time.perf_counter()
        rel = c.post("/programs/release", json={"program_id": "prog-dead"})
        assert rel.status_code == 200 and rel.json()["released"] is True
        assert time.perf_counter() - t0 < 1.0
        wait_until(
            lambda: metric(
                c.get("/metrics").text, "thunderagent_reclaim_errors_total", kind="daemon_unavailable"
            )
            == 2,
            10,
            "daemon_unavailable errors in /metrics",
        )
        text = c.get("/metrics").text
        assert metric(text, "thunderagent_reclaim_resources_total", key="docker_ids", outcome="failed") == 2
        # the proxy still serves
        assert c.post("/v1/chat/completions", json=chat_body("prog-next")).status_code == 200


@pytest.mark.slow
def test_slow_reclaim_does_not_block_the_event_loop(
    docker_client: Any, make_container: Callable[..., str], proxy_server: Callable[..., Any]
) -> None:
    import httpx

    # `sleep` as PID 1 ignores SIGTERM: each `docker stop -t 3` takes the full 3 s before SIGKILL.
    reclaimer = DockerReclaimer(stop_timeout=3, max_workers=1)
    srv = proxy_server(reclaimer)
    ids = [make_container(), make_container()]
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        assert c.post("/v1/chat/completions", json=chat_body("prog-slow", docker_ids=ids)).status_code == 200
        assert c.post("/programs/release", json={"program_id": "prog-slow"}).status_code == 200
        wait_until(lambda: reclaimer.pending == 1, 5, "the reclaim job to start")
        latencies = []
        for i in range(5):
            t0 = time.perf_counter()
            assert c.post("/v1/chat/completions", json=chat_body(f"prog-live-{i}")).status_code == 200
            assert c.get("/metrics").status_code == 200
            latencies.append(time.perf_counter() - t0)
        assert (
            reclaimer.pending == 1
        ), "the reclaim finished before the concurrent requests: test proves nothing"
        assert max(latencies) < 1.0, f"requests stalled behind the reclaim: {latencies}"
        wait_until(lambda: not any(exists(docker_client, i) for i in ids), 30, "the slow reclaim to finish")
    print(f"during a 6 s reclaim: request+scrape max {max(latencies) * 1000:.1f} ms")


def test_shutdown_waits_for_in_flight_reclaim(
    docker_client: Any, make_container: Callable[..., str], proxy_server: Callable[..., Any]
) -> None:
    import httpx

    reclaimer = DockerReclaimer(stop_timeout=2)
    srv = proxy_server(reclaimer)
    cid = make_container()
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        assert (
            c.post("/v1/chat/completions", json=chat_body("prog-shut", docker_ids=[cid])).status_code == 200
        )
        assert c.post("/programs/release", json={"program_id": "prog-shut"}).status_code == 200
    wait_until(lambda: reclaimer.pending == 1, 5, "the reclaim job to start")
    srv.stop()  # lifespan shutdown: proxy.stop() awaits reclaimer.aclose()
    assert reclaimer.pending == 0
    assert not exists(docker_client, cid)


@pytest.mark.slow
def test_cli_flags_enable_reclaim_with_label_guard(
    docker_client: Any, make_container: Callable[..., str], fake_vllm: Any
) -> None:
    """`thunderagent --reclaim docker --reclaim-label ...` as users start it: a subprocess, real flags."""
    import signal
    import subprocess
    import sys

    import httpx

    from tests.fakes.fake_vllm import free_port_url

    url = free_port_url()
    port = url.rsplit(":", 1)[1]
    sandbox = make_container(**{"thunderbench.sandbox": "1"})
    bystander = make_container()
    argv = [sys.executable, "-m", "ThunderAgent", "--port", port, "--backends", fake_vllm.url,
            "--router", "default", "--reclaim", "docker", "--reclaim-stop-timeout", "0",
            "--reclaim-label", "thunderbench.sandbox", "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with httpx.Client(base_url=url, timeout=10) as c:

            def up() -> bool:
                assert proc.poll() is None, f"proxy exited: {proc.stdout.read() if proc.stdout else ''}"
                try:
                    return c.get("/health").status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(up, 30, "the proxy subprocess to serve /health")
            body = chat_body("prog-cli", docker_ids=[sandbox, bystander])
            assert c.post("/v1/chat/completions", json=body).status_code == 200
            assert c.post("/programs/release", json={"program_id": "prog-cli"}).status_code == 200
            wait_until(lambda: not exists(docker_client, sandbox), 30, "the labelled sandbox to be removed")
            wait_until(
                lambda: metric(
                    c.get("/metrics").text, "thunderagent_reclaim_errors_total", kind="label_mismatch"
                )
                == 1,
                10,
                "the refused bystander in /metrics",
            )
            assert docker_client.api.inspect_container(bystander)["State"]["Running"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
