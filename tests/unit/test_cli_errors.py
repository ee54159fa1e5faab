"""Every bad input at the CLI: one readable line on stderr, exit code 2, no traceback, nothing left behind."""

from __future__ import annotations

import json
import os
import socket
import stat
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.recipes import RECIPES_DIR


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("THUNDERBENCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def one_error_line(result, *needles: str) -> str:
    """The command failed with exit 2 and exactly one non-empty stderr line containing every needle."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert "Traceback" not in result.output
    line = lines[0]
    assert line.startswith("error: ")
    for n in needles:
        assert n in line, (n, line)
    return line


def recipe_file(tmp_path: Path, text: str, name: str = "mine.toml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def mini_recipe(tmp_path: Path, *, engine_port: int = 8100, sim_port: int = 8100, health_s: float = 60.0) -> Path:
    return recipe_file(tmp_path, f"""
        name = "mine"
        [engine]
        model = "org/model"
        port = {engine_port}
        health_timeout_s = {health_s}
        [proxy]
        port = {_free_port()}
        [sim]
        profile = "glm4.6-8xh100"
        port = {sim_port}
        health_timeout_s = {health_s}
        """)


def glm_with(tmp_path: Path, old: str, new: str, name: str = "mine.toml") -> Path:
    text = (RECIPES_DIR / "glm4.6.toml").read_text()
    assert old in text
    return recipe_file(tmp_path, text.replace(old, new), name)


# --- recipes ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cmd", [["reproduce", "nope"], ["up", "-r", "nope"], ["up", "-r", "nope", "--dry-run"],
                                 ["run", "-r", "nope", "--arm", "vllm", "-n", "2", "-o", "x"]])
def test_unknown_recipe(cmd):
    one_error_line(invoke(*cmd), "unknown recipe 'nope'", "glm4.6", "qwen3-235b", "tiny-cpu")


def test_missing_recipe_file():
    one_error_line(invoke("reproduce", "nowhere/r.toml"), "recipe file nowhere/r.toml not found")


def test_malformed_toml(tmp_path):
    p = recipe_file(tmp_path, "name = 'x'\n[engine\nmodel = 1\n")
    one_error_line(invoke("reproduce", str(p), "--engine", "des"), "mine.toml", "malformed TOML")


@pytest.mark.parametrize("old,new,needle", [
    ('tensor_parallel_size = 8', 'tensor_parallel_size = "eight"', "[engine].tensor_parallel_size: expected an integer"),
    ('kind = "vllm"', 'kind = "sglang"', "[engine].kind 'sglang' must be one of vllm, vllm-cpu"),
    ('router = "tr"', 'router = "fast"', "[proxy].router must be 'tr' or 'default'"),
    ('levels = [24, 48, 72, 96]', 'levels = [24, -1]', "[sweep].levels must be a non-empty list of positive"),
    ('window = "10m-70m"', 'window = "70m-10m"', "bad window '70m-10m': the end must come after the start"),
    ('window = "10m-70m"', 'window = "10m-90m"', "[sweep].window 10m-90m ends after duration 70m"),
    ('arms = ["vllm", "thunderagent", "continuum"]', 'arms = ["vllm", "sglang"]', "unknown arm 'sglang'"),
    ('seed = 0', 'seed = 0\nturbo = true', "unknown field 'turbo'"),
    ('profile = "glm4.6-8xh100"', 'profile = ""', "[sim].profile is required"),
    ('args = []', 'args = ["--acting-decay", "sometimes"]', "[proxy].args"),
    ('args = []', 'args = ["--no-such-flag"]', "unrecognized arguments: --no-such-flag"),
    ('profile = "glm4.6-8xh100"', 'profile = "a100-dreams"', "[sim].profile: unknown simulator profile 'a100-dreams'"),
])
def test_bad_recipe_fields(tmp_path, old, new, needle):
    p = glm_with(tmp_path, old, new)
    one_error_line(invoke("reproduce", str(p), "--engine", "des"), "mine.toml", needle)


# --- reproduce/run options ---------------------------------------------------------------------------------

@pytest.mark.parametrize("window,needle", [
    ("70m-10m", "bad window '70m-10m': the end must come after the start"),
    ("abc", "bad window 'abc'"),
    ("10m-", "bad window '10m-'"),
    ("10x-20m", "bad window '10x-20m'"),
])
def test_bad_window_syntax(window, needle, tmp_path):
    r = invoke("reproduce", "glm4.6", "--engine", "des", "--window", window, "--out", str(tmp_path / "o"))
    one_error_line(r, needle)
    assert not (tmp_path / "o").exists()
    assert not any((tmp_path).glob("results/**/*"))


def test_window_beyond_duration(tmp_path):
    r = invoke("reproduce", "glm4.6", "-e", "des", "-w", "10m-90m", "--duration", "30m")
    one_error_line(r, "window 10m-90m ends after the run's duration (30m)")
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("levels", ["abc", "24,,48", "0", "-4"])
def test_bad_levels(levels):
    one_error_line(invoke("reproduce", "glm4.6", "-e", "des", "--levels", levels), "bad levels")


def test_bad_engine_and_arm():
    one_error_line(invoke("reproduce", "glm4.6", "--engine", "gpu"), "unknown engine 'gpu'", "auto, vllm, live-sim, des")
    one_error_line(invoke("reproduce", "glm4.6", "-e", "des", "--arms", "vllm,magic"), "unknown arm 'magic'")
    one_error_line(invoke("reproduce", "glm4.6", "-e", "live-sim", "--arms", "continuum"),
                   "no arm to run on engine live-sim")


def test_out_dir_not_empty(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("precious")
    one_error_line(invoke("reproduce", "glm4.6", "-e", "des", "--out", str(tmp_path / "o")),
                   "exists and is not empty")
    assert (tmp_path / "o" / "keep.txt").read_text() == "precious"


def test_real_agent_on_simulator_refused():
    r = invoke("run", "-r", "glm4.6", "--arm", "vllm", "-n", "4", "-o", "x", "-e", "des", "--agent", "openhands")
    one_error_line(r, "engine des drives synthetic agents only")


# --- throughput / plot inputs ------------------------------------------------------------------------------

@pytest.mark.parametrize("cmd", ["throughput", "plot"])
def test_missing_run_dir(cmd, tmp_path):
    extra = ["-o", str(tmp_path / "f.png")] if cmd == "plot" else []
    one_error_line(invoke(cmd, str(tmp_path / "nope"), *extra), "nope does not exist")
    assert not (tmp_path / "f.png").exists()


@pytest.mark.parametrize("cmd", ["throughput", "plot"])
def test_empty_run_dir(cmd, tmp_path):
    (tmp_path / "empty").mkdir()
    extra = ["-o", str(tmp_path / "f.png")] if cmd == "plot" else []
    one_error_line(invoke(cmd, str(tmp_path / "empty"), *extra), "holds no run (no steps.jsonl)")
    assert not (tmp_path / "f.png").exists()


def _tiny_run(root: Path, minutes: float = 5.0) -> Path:
    """A hand-written run directory: one step per simulated 10 s for `minutes`."""
    from harness.records import JsonlWriter, RunManifest, StepRecord

    root.mkdir(parents=True)
    RunManifest(run_id="r1", arm="vllm", programs=2, agent="synthetic", engine="des", simulated=True,
                profile="glm4.6-8xh100", start_time=0.0, recipe="glm4.6", end_time=minutes * 60).write(root / "manifest.json")
    with JsonlWriter(root / "steps.jsonl") as w:
        for i in range(int(minutes * 6)):
            t = 10.0 * (i + 1)
            w.write(StepRecord(program_id="p", step=i + 1, arrival=t - 5, start=t - 5, end=t, prompt_tokens=100,
                               completion_tokens=10, cached_tokens=50))
    return root


def test_window_outside_the_run(tmp_path):
    d = _tiny_run(tmp_path / "run")
    one_error_line(invoke("throughput", str(d), "--window", "10m-70m"), "window 10m-70m ends at 70.0 min",
                   "run's data ends at 5.0 min")
    ok = invoke("throughput", str(d), "--window", "1m-4m", "--json")
    assert ok.exit_code == 0, ok.output
    rows = json.loads(ok.stdout)
    assert rows[0]["steps_per_min"] == pytest.approx(6.0, rel=0.05)


def test_bad_window_at_throughput(tmp_path):
    d = _tiny_run(tmp_path / "run")
    one_error_line(invoke("throughput", str(d), "--window", "abc"), "bad window 'abc'")


def test_plot_bad_suffix(tmp_path):
    d = _tiny_run(tmp_path / "run")
    one_error_line(invoke("plot", str(d), "-w", "1m-4m", "-o", str(tmp_path / "f.txt")), "use a .png, .svg or .pdf")


def test_evaluate_missing_predictions(tmp_path):
    one_error_line(invoke("evaluate", str(tmp_path / "p.jsonl")), "p.jsonl does not exist")


# --- up / down / status ------------------------------------------------------------------------------------

def test_up_port_in_use(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = mini_recipe(tmp_path, sim_port=port)
        one_error_line(invoke("up", "-r", str(p), "--engine", "sim", "--arm", "vllm"),
                       f"port {port} on 127.0.0.1 is already in use")
    assert not (tmp_path / "state" / "state.json").exists()


def test_up_missing_binary(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no vllm on PATH
    one_error_line(invoke("up", "-r", "glm4.6", "--engine", "vllm", "--arm", "vllm"), "binary 'vllm' not found on PATH")


def test_up_engine_never_healthy_leaves_nothing_running(tmp_path, monkeypatch):
    """A `vllm` that starts but never serves /health: refused after the recipe's deadline, process group
    stopped, no state file."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "vllm"
    pidfile = tmp_path / "fake.pid"
    fake.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 120\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    port = _free_port()
    p = mini_recipe(tmp_path, engine_port=port, health_s=1.0)
    one_error_line(invoke("up", "-r", str(p), "--engine", "vllm", "--arm", "vllm"),
                   "engine did not become healthy", "within 1 s")
    pid = int(pidfile.read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]
    assert not (tmp_path / "state" / "state.json").exists()
    assert invoke("status").stdout.strip() == "nothing is running (no state file)"


def test_up_engine_dies_at_start(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "vllm"
    fake.write_text("#!/bin/sh\necho 'ValueError: no CUDA GPUs are available' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    p = mini_recipe(tmp_path, engine_port=_free_port(), health_s=30.0)
    one_error_line(invoke("up", "-r", str(p), "--engine", "vllm", "--arm", "vllm"),
                   "engine exited (code 1) before becoming healthy: ValueError: no CUDA GPUs are available")


def test_down_and_status_with_nothing_up():
    assert invoke("down").stdout.strip() == "nothing is running (no state file)"
    r = invoke("status")
    assert r.exit_code == 0 and "nothing is running" in r.stdout


def test_unknown_arm_for_up():
    one_error_line(invoke("up", "-r", "glm4.6", "--arm", "continuum", "--dry-run"), "unknown arm 'continuum'")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
