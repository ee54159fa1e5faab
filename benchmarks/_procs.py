"""Helpers shared by the benchmarks that start servers as subprocesses (not a benchmark: scripts/bench.sh skips _*.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(
    cmd: list[str], url: str, timeout: float = 60.0, label: str = "", root: Path = ROOT
) -> subprocess.Popen[bytes]:
    """Start `cmd` from `root` (the repo root; another checkout to compare against) and poll `url`/health until
    200 (deadline `timeout`); exit with one line (prefixed by `label`) if it dies or never becomes healthy."""
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    name = " ".join(cmd[:4])
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            raise SystemExit(f"{label}failed to start {name}: {err}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"{label}{name} did not become healthy in {timeout}s")
        time.sleep(0.1)
