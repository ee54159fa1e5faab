"""`thunderbench up / status / down` with the simulator engine and the real ThunderAgent proxy: background
processes that outlive the command, found again by status/down through the state file, stopped cleanly."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tb(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env=env)


def test_up_status_down(tmp_path):
    import os

    sim_port, proxy_port = _free_port(), _free_port()
    recipe = tmp_path / "live.toml"
    recipe.write_text(textwrap.dedent(f"""
        name = "live"
        [engine]
        model = "zai-org/GLM-4.6-FP8"
        [proxy]
        port = {proxy_port}
        [sim]
        profile = "glm4.6-8xh100"
        port = {sim_port}
        time_scale = 100.0
        """))
    env = {**os.environ, "THUNDERBENCH_STATE_DIR": str(tmp_path / "state")}
    try:
        up = _tb("up", "-r", str(recipe), "--engine", "sim", cwd=tmp_path, env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"endpoint http://127.0.0.1:{proxy_port}/v1" in up.stdout
        assert "SIMULATED" in up.stdout
        state = json.loads((tmp_path / "state" / "state.json").read_text())
        assert [p["name"] for p in state["processes"]] == ["sim", "proxy"]

        again = _tb("up", "-r", str(recipe), "--engine", "sim", cwd=tmp_path, env=env)
        assert again.returncode == 2 and "already up (recipe live" in again.stderr

        st = _tb("status", cwd=tmp_path, env=env)
        assert st.returncode == 0, st.stdout + st.stderr
        assert st.stdout.count("yes") == 4  # two processes, alive and healthy

        r = httpx.post(f"http://127.0.0.1:{proxy_port}/v1/chat/completions", timeout=60, json={
            "model": "zai-org/GLM-4.6-FP8", "messages": [{"role": "user", "content": "hello there"}],
            "max_tokens": 8, "program_id": "p1"})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 8
    finally:
        down = _tb("down", cwd=tmp_path, env=env)
    assert down.returncode == 0, down.stderr
    assert "proxy (pid" in down.stdout and "sim (pid" in down.stdout
    for p in state["processes"]:
        stat = Path(f"/proc/{p['pid']}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    assert not (tmp_path / "state" / "state.json").exists()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{sim_port}/health", timeout=2)
    assert "nothing is running" in _tb("status", cwd=tmp_path, env=env).stdout
