"""Security properties of the proxy and the harness: loopback bind by default, --admin-token on release
(constant-time compare), request size limits, no secrets in logs or error bodies, program ids cannot forge
log lines or CSV formulas (checked on the real `thunderagent` process), and names from recipes/datasets
cannot write outside the output directory."""

from __future__ import annotations

import csv
import hmac
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from harness.records import RunPaths, safe_join
from harness.recipes import RecipeError, load_recipe
from ThunderAgent.cli import parse_config
from ThunderAgent.config import Config
from tests.fakes.fake_vllm import FakeVLLM, free_port_url
from tests.fakes.proxy_kit import chat, running_proxy
from tests.fakes.server import wait_until
from tests.faults.kit import ROOT, free_port, is_openai_error

SECRET_KEY = "sk-test-SECRET-0123456789abcdef"
URL_PASSWORD = "hunter2-url-password"


def test_binds_loopback_by_default() -> None:
    assert Config().host == "127.0.0.1"
    assert parse_config(["--backends", "http://127.0.0.1:1"]).host == "127.0.0.1"


async def test_admin_token_protects_release(fake_vllm: FakeVLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("ThunderAgent.app.hmac.compare_digest", spy)
    cfg = Config(backends=(fake_vllm.url,), router="default", admin_token="s3cret-token")
    async with running_proxy(cfg) as (c, proxy):
        assert (await c.post("/v1/chat/completions", json=chat(program_id="p"))).status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-Admin-Token": "s3cret-token "}, {"Authorization": "Basic s3cret-token"},
                        {"X-Admin-Token": ""}, {"X-Admin-Token": "s3cret-tokenX"}, {"X-Admin-Token": b"\xc3\xa9"}):
            r = await c.post("/programs/release", json={"program_id": "p"}, headers=headers)
            assert r.status_code == 401 and is_openai_error(r), (headers, r.text)
            assert "s3cret-token" not in r.text
        assert "p" in proxy.registry  # nothing released by the refused calls
        assert calls and all(b == b"s3cret-token" for _, b in calls)  # the compare is hmac.compare_digest
        r = await c.post("/programs/release", json={"program_id": "p"}, headers={"Authorization": "Bearer s3cret-token"})
        assert r.status_code == 200 and r.json()["released"] is True
        assert (await c.post("/v1/chat/completions", json=chat(program_id="q"))).status_code == 200
        r = await c.post("/programs/release", json={"program_id": "q"}, headers={"X-Admin-Token": "s3cret-token"})
        assert r.status_code == 200 and r.json()["released"] is True


async def test_request_size_limits(fake_vllm: FakeVLLM) -> None:
    cfg = Config(backends=(fake_vllm.url,), router="default", max_body_bytes=2000)
    async with running_proxy(cfg) as (c, proxy):
        big = chat("x" * 3000, program_id="big")
        r = await c.post("/v1/chat/completions", json=big)
        assert r.status_code == 413 and is_openai_error(r)

        async def chunked():  # no Content-Length: the limit is enforced while reading
            for _ in range(10):
                yield b" " * 500

        r = await c.post("/v1/chat/completions", content=chunked(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and is_openai_error(r)
        r = await c.post("/v1/chat/completions", content=b"{}", headers={"content-length": "99999999999"})
        assert r.status_code == 413
        r = await c.post("/programs/release", content=b'{"program_id":"' + b"a" * 70_000 + b'"}')
        assert r.status_code == 413 and is_openai_error(r)
        assert len(proxy.registry) == 0 and fake_vllm.requests == []


def _run_proxy_cli(args: list[str], tmp_path: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    log = tmp_path / "proxy.log"
    fh = open(log, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ThunderAgent", "--port", str(port), *args],
        cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"proxy exited: {log.read_text()}")
        try:
            return httpx.get(base + "/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, timeout=60, interval=0.1, what="proxy /health")
    return proc, base, log


@pytest.mark.slow
def test_no_secrets_in_logs_or_errors_and_ids_cannot_inject(fake_vllm: FakeVLLM, tmp_path: Path) -> None:
    """The real `thunderagent` process at --log-level debug, with a backend URL carrying a password, API
    keys in headers, and hostile program ids: no secret reaches its log or a client; every log record is
    one line; the profile CSV has no formula cells."""
    good = fake_vllm.url.replace("http://", f"http://user:{URL_PASSWORD}@")
    dead = free_port_url().replace("http://", f"http://user:{URL_PASSWORD}@")
    prof = tmp_path / "prof"
    proc, base, log = _run_proxy_cli(
        ["--backends", f"{good},{dead}", "--router", "default", "--log-level", "debug", "--profile",
         "--profile-dir", str(prof)], tmp_path)  # no --metrics: the dead backend must get requests (and fail)
    evil_ids = ["evil\nCRITICAL thunderagent: FORGED", "=HYPERLINK(\"http://x\")", "+cmd|' /C calc'!A0", "\x1b[31mred\u2028x"]
    bodies: list[str] = []
    try:
        with httpx.Client(timeout=10) as c:
            auth = {"Authorization": f"Bearer {SECRET_KEY}", "api-key": SECRET_KEY, "X-Api-Key": SECRET_KEY}
            for i, pid in enumerate(evil_ids * 3):
                r = c.post(base + "/v1/chat/completions", json=chat(program_id=pid, stream=bool(i % 2)), headers=auth)
                bodies.append(r.text)
            # placement alternates over both backends: the dead one produced transport errors for clients
            assert any(is_openai_error(httpx.Response(502, content=b.encode())) for b in bodies), bodies
            assert fake_vllm.request_headers[-1]["x-api-key"] == SECRET_KEY  # forwarded to the engine, not logged
            for pid in evil_ids:
                c.post(base + "/programs/release", json={"program_id": pid})
        wait_until(lambda: (prof / "step_profiles.csv").exists() and len((prof / "step_profiles.csv").read_text().splitlines()) > 1,
                   what="profile rows")
    finally:
        proc.terminate()
        proc.wait(30)
    text = log.read_text(errors="replace")
    assert "new program" in text and "released" in text, text[-2000:]
    for secret in (SECRET_KEY, URL_PASSWORD):
        assert secret not in text, f"{secret} leaked into the log"
        assert not any(secret in b for b in bodies), f"{secret} leaked into an error body"
    for line in text.splitlines():
        assert not line.startswith("CRITICAL thunderagent: FORGED"), line
        assert "\x1b" not in line and "\u2028" not in line, repr(line)
    with open(prof / "step_profiles.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    cells = [row[0] for row in rows[1:]]
    assert cells, rows
    assert not any(cell.startswith(("=", "+", "-", "@")) for cell in cells), cells


# --- paths under results/ --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../escape", "a/../../b", "/etc/passwd", "..", "x/../..", "\x00/..", "C:\\..\\x"])
def test_run_names_and_instance_ids_stay_inside(tmp_path: Path, name: str) -> None:
    root = tmp_path / "results"
    root.mkdir()
    try:
        p = RunPaths.under(root, "recipe", name)
    except ValueError:
        pass  # refused outright is fine too
    else:
        assert root.resolve() in p.root.resolve().parents
        p.file("steps.jsonl").write_text("x")
    for bad in (name, f"sub/{name}"):
        try:
            q = safe_join(root, *bad.split("/"))
        except ValueError:
            continue
        assert q == root.resolve() or root.resolve() in q.parents, q
    assert sorted(x.name for x in tmp_path.iterdir()) == ["results"]  # nothing written beside it


@pytest.mark.parametrize("name", ["../../outside", "a/b", "..", ".hidden", "x y"])
def test_recipe_name_cannot_escape_results(tmp_path: Path, name: str) -> None:
    src = (ROOT / "harness" / "recipes" / "tiny-cpu.toml").read_text()
    lines = [f'name = "{name}"' if line.startswith("name =") else line for line in src.splitlines()]
    path = tmp_path / "r.toml"
    path.write_text("\n".join(lines))
    with pytest.raises(RecipeError, match="name"):
        load_recipe(str(path))


def test_miniswe_trajectory_path_stays_inside(tmp_path: Path) -> None:
    """The mini-swe-agent runner saves <dir>/<id>/<id>.traj.json; a hostile instance id must not escape."""
    import inspect

    from harness.agents import miniswe

    src = inspect.getsource(miniswe)
    assert "safe_join(self.trajectories_dir" in src  # the save path is built with safe_join/safe_name
    from harness.records import safe_name

    name = safe_name("../../etc/passwd")
    p = safe_join(tmp_path, name, f"{name}.traj.json")
    assert tmp_path.resolve() in p.parents


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("backends=http://user:pw-123@h:1,https://a:b@c/x", "pw-123"),
        ("Authorization: Bearer abc.DEF-123", "abc.DEF-123"),
        ("key sk-ABCDEF0123456789 used", "sk-ABCDEF0123456789"),
    ],
)
def test_redact(text: str, secret: str) -> None:
    from ThunderAgent.logsafe import redact

    out = redact(text)
    assert secret not in out and "***" in out
    assert redact("http://127.0.0.1:8000/v1 program p1") == "http://127.0.0.1:8000/v1 program p1"
