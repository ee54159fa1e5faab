"""Broken arguments and broken files at both command lines: one readable line, non-zero exit, no traceback.

tests/unit/test_cli_errors.py (C) covers thunderbench's recipes, windows, levels, missing/empty run dirs and
`up`; this adds corrupted run files (manifest, steps with a garbage line, a directory where a file belongs)
and every `thunderagent` flag kind with a bad value, plus a proxy port already in use."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from tests.faults.kit import ROOT
from tests.unit.test_cli_errors import _tiny_run


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THUNDERBENCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)


def _one_line(result) -> str:  # noqa: ANN001
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def _corrupt(tmp_path: Path, how: str) -> Path:
    d = _tiny_run(tmp_path / "run")
    if how == "manifest-garbage":
        (d / "manifest.json").write_text("{not json")
    elif how == "manifest-wrong-type":
        (d / "manifest.json").write_text("[1, 2, 3]")
    elif how == "manifest-missing":
        (d / "manifest.json").unlink()
    elif how == "steps-garbage-line":
        text = (d / "steps.jsonl").read_text().splitlines()
        text.insert(3, "this is not json")
        (d / "steps.jsonl").write_text("\n".join(text) + "\n")
    elif how == "steps-wrong-schema":
        (d / "steps.jsonl").write_text('{"hello": "world"}\n')
    elif how == "steps-is-a-directory":
        (d / "steps.jsonl").unlink()
        (d / "steps.jsonl").mkdir()
    elif how == "steps-binary":
        (d / "steps.jsonl").write_bytes(b"\xff\xfe\x00garbage\n")
    return d


CORRUPTIONS = ["manifest-garbage", "manifest-wrong-type", "manifest-missing", "steps-garbage-line", "steps-wrong-schema",
               "steps-is-a-directory", "steps-binary"]


@pytest.mark.parametrize("how", CORRUPTIONS)
@pytest.mark.parametrize("cmd", ["throughput", "plot"])
def test_corrupted_run_files(tmp_path: Path, cmd: str, how: str) -> None:
    d = _corrupt(tmp_path, how)
    extra = ["-o", str(tmp_path / "f.png")] if cmd == "plot" else []
    r = CliRunner().invoke(app, [cmd, str(d), "--window", "1m-4m", *extra])
    if how == "manifest-missing" and r.exit_code == 0:
        return  # a run dir without a manifest may be read from its records alone
    _one_line(r)


@pytest.mark.parametrize(
    "args",
    [
        ["reproduce", "glm4.6", "-e", "des", "-l", "2", "--out", "{file}"],
        ["reproduce", "{dir}"],
        ["reproduce", "glm4.6", "-e", "des", "-l", "2", "--seed", "x"],
        ["reproduce", "glm4.6", "-e", "nope"],
        ["throughput", "{file}"],
        ["evaluate", "{dir}"],
        ["nope-command"],
    ],
)
def test_thunderbench_broken_arguments(tmp_path: Path, args: list[str]) -> None:
    f = tmp_path / "a-file"
    f.write_text("x")
    dd = tmp_path / "a-dir.toml"
    dd.mkdir()
    argv = [a.replace("{file}", str(f)).replace("{dir}", str(dd)) for a in args]
    r = CliRunner().invoke(app, argv)
    assert r.exit_code != 0, r.output
    assert "Traceback" not in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)


# --- thunderagent ------------------------------------------------------------------------------------------

BAD_FLAGS = [
    ["--port", "abc"], ["--port", "0"], ["--port", "70000"], ["--port", "-1"], ["--backends", ""],
    ["--backends", "ftp://x"], ["--backends", "http://"], ["--backends", ",,"], ["--router", "bogus"],
    ["--metrics-interval", "0"], ["--metrics-interval", "nan-ish"], ["--scheduler-interval", "-5"], ["--idle-ttl", "-1"],
    ["--max-body-bytes", "0"], ["--max-programs", "0"], ["--admin-token", ""], ["--log-level", "loud"], ["--nope"],
    ["--proxy-read-timeout", "1e999x"], ["--acting-decay", "linear"], ["--high-watermark"],
    ["--no-backend-grace", "-1"], ["--health-interval", "0"], ["--probe-timeout", "0"], ["--max-metrics-bytes", "0"],
    ["--max-response-bytes", "-1"], ["--max-header-bytes", "0"], ["--max-headers", "0"], ["--header-timeout", "0"],
    ["--admin-token-file", "/nonexistent/token"],
]


@pytest.mark.parametrize("argv", BAD_FLAGS, ids=lambda a: " ".join(a) or "empty")
def test_thunderagent_bad_flags(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from ThunderAgent.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code not in (0, None)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("thunderagent: error:"), lines
    assert "Traceback" not in err


def _run_thunderagent(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ThunderAgent", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.slow
def test_thunderagent_port_in_use_and_unwritable_profile_dir(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = _run_thunderagent(["--port", str(port), "--backends", "http://127.0.0.1:9", "--log-level", "warning"])
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert any(str(port) in ln or "address" in ln.lower() for ln in r.stderr.splitlines()), r.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = _run_thunderagent(["--backends", "http://127.0.0.1:9", "--profile", "--profile-dir", str(blocker / "sub")])
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("thunderagent: error:"), lines
