"""A proxy-only install, for real: the locked core (no extras, no dev group) synced into a fresh virtualenv by uv,
from the cache the set-up command filled (offline: nothing is downloaded). It serves, it carries none of the
bench/Docker libraries, and the commands needing an extra say which one in a single line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.faults.kit import free_port

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("pandas", "matplotlib", "datasets", "pyarrow", "docker", "numpy", "typer", "tokenizers")


def _uv() -> str:
    uv = shutil.which("uv") or str(Path.home() / ".local/bin/uv")
    if not Path(uv).is_file():
        pytest.fail("uv not found: bash scripts/setup/setup.sh installs it (~/.local/bin/uv)")
    return uv


@pytest.fixture(scope="module")
def lean_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("lean") / "venv"
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv)}
    r = subprocess.run([_uv(), "sync", "--frozen", "--no-dev", "--offline", "--no-editable", "--quiet",
                        "--python", sys.executable], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"uv sync of the core failed:\n{r.stderr}"
    return venv


@pytest.mark.slow
def test_core_install_has_no_bench_or_docker_libraries(lean_venv: Path) -> None:
    code = ("import importlib.util as u; "
            f"print(' '.join(m for m in {HEAVY!r} if u.find_spec(m) is not None))")
    r = subprocess.run([str(lean_venv / "bin/python"), "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"the core install carries {r.stdout.strip()}"


@pytest.mark.slow
def test_core_install_names_the_missing_extra(lean_venv: Path) -> None:
    r = subprocess.run([str(lean_venv / "bin/thunderbench"), "recipes"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, (r.returncode, r.stderr)
    assert "'bench' extra" in r.stderr and "pip install 'thunderbench[bench]'" in r.stderr
    r = subprocess.run([str(lean_venv / "bin/thunderagent"), "--backends", "http://127.0.0.1:9", "--reclaim", "docker"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, (r.returncode, r.stderr)
    assert "'docker' extra" in r.stderr


@pytest.mark.slow
def test_core_install_serves(lean_venv: Path, tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "proxy.log").open("w")
    p = subprocess.Popen([str(lean_venv / "bin/thunderagent"), "--backends", "http://127.0.0.1:9", "--port", str(port),
                          "--router", "tr", "--metrics"], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        health = None
        while time.monotonic() < deadline and p.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)  # poll interval while the server starts (bounded by the deadline)
        assert health is not None, f"no answer within 60 s (exit {p.poll()}): {(tmp_path / 'proxy.log').read_text()}"
        assert health.status_code == 200 and health.json()["status"] == "ok"
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert "thunderagent_programs" in metrics.text
    finally:
        p.terminate()
        p.wait(timeout=30)
        log.close()
