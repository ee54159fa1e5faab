"""A small process supervisor for engines, the simulator server and ThunderAgent.

What it guarantees:
  * refuse early and clearly: a missing binary or a port already in use is a `LaunchError` (one line)
    before anything is started;
  * each process runs in its own session / process group (so vLLM's engine-core and worker children, or
    uvicorn's, are stopped with it), its stdout+stderr streamed to a log file;
  * `wait_healthy` polls an HTTP health URL until it answers 200, the process dies, or a deadline passes
    (no fixed sleeps), with a rich spinner;
  * `stop` sends SIGTERM to the whole group, waits up to a grace period, then SIGKILLs the group: no
    orphans;
  * a JSON state file records what `thunderbench up` started (pid, process-group id, the process start
    time to recognise a recycled pid, log path, health URL) so `down` and `status` in another invocation
    find it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections import deque
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import httpx
from rich.console import Console

from harness.errors import UserError


class LaunchError(UserError, RuntimeError):
    """Something could not be started or never became healthy. The message is one line for the user."""


@dataclass(frozen=True)
class ProcessSpec:
    """A command to supervise."""

    name: str  # "engine" | "sim" | "proxy" (also the log file's stem)
    argv: tuple[str, ...]
    health_url: str | None = None  # GET this until 200
    host: str = "127.0.0.1"
    port: int | None = None  # checked free before starting
    env: dict[str, str] = field(default_factory=dict)  # added to os.environ
    health_timeout_s: float = 60.0
    cwd: str | None = None


@dataclass
class Running:
    """A started process (also the unit of the state file)."""

    name: str
    pid: int
    pgid: int
    argv: list[str]
    log: str
    health_url: str | None
    port: int | None
    start_ticks: int | None  # /proc/<pid>/stat field 22: tells a recycled pid apart
    started_at: float

    def alive(self) -> bool:
        return pid_alive(self.pid, self.start_ticks)


# --- checks ----------------------------------------------------------------------------------------------

def check_binary(argv0: str) -> str:
    """The absolute path of the program, or LaunchError naming it."""
    if os.sep in argv0:
        if os.path.isfile(argv0) and os.access(argv0, os.X_OK):
            return argv0
        raise LaunchError(f"binary {argv0} not found or not executable")
    found = shutil.which(argv0)
    if not found:
        hint = " (install vLLM: `pip install vllm`, or use --engine des / live-sim)" if argv0 == "vllm" else ""
        raise LaunchError(f"binary {argv0!r} not found on PATH{hint}")
    return found


def port_in_use(host: str, port: int) -> bool:
    """True when something accepts connections on host:port, or the port cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        if s.connect_ex((host, port)) == 0:
            return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is not "in use"
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def check_port_free(host: str, port: int, what: str) -> None:
    if port_in_use(host, port):
        raise LaunchError(
            f"port {port} on {host} is already in use, so {what} cannot start there "
            f"(stop what holds it, e.g. `thunderbench down`, or pick another port)"
        )


def free_port(host: str = "127.0.0.1") -> int:
    """An ephemeral port that was free a moment ago (for tests and live-sim sweeps)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# --- process identity ------------------------------------------------------------------------------------

def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3 onwards of /proc/<pid>/stat (state, ppid, ...; index i is field i + 3), None where unreadable.
    The command name (field 2) may contain spaces and parens: the fields start after the last ')'."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()


def _start_ticks(pid: int) -> int | None:
    rest = _stat_fields(pid)
    try:
        return int(rest[19]) if rest is not None else None  # field 22 overall
    except (IndexError, ValueError):
        return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds process `pid` has used so far (fields 14 and 15), None where unreadable."""
    rest = _stat_fields(pid)
    try:
        return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK") if rest is not None else None
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int, start_ticks: int | None = None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    rest = _stat_fields(pid)
    if rest and rest[0] == "Z":  # a zombie is not alive
        return False
    if start_ticks is not None:
        now = _start_ticks(pid)
        if now is not None and now != start_ticks:
            return False  # the pid was recycled by another process
    return True


def group_alive(pgid: int) -> bool:
    """True while any (non-zombie) process of the group exists."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2:].split()
        if len(rest) > 2 and rest[2] == str(pgid) and rest[0] != "Z":
            return True
    return False


# --- start / wait / stop ---------------------------------------------------------------------------------

_POPENS: dict[int, subprocess.Popen[bytes]] = {}  # reaped by stop() when we started them ourselves


def start(spec: ProcessSpec, log_dir: Path) -> Running:
    """Check the binary and the port, then start the command in a new session with its output in
    log_dir/<name>.log. Does not wait for health."""
    exe = check_binary(spec.argv[0])
    if spec.port is not None:
        check_port_free(spec.host, spec.port, spec.name)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{spec.name}.log"
    env = {**os.environ, **spec.env, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "ab") as log:
        log.write(f"$ {' '.join(spec.argv)}\n".encode())
        log.flush()
        try:
            p = subprocess.Popen(
                [exe, *spec.argv[1:]], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=spec.cwd, start_new_session=True,
            )
        except OSError as e:
            raise LaunchError(f"cannot start {spec.name} ({spec.argv[0]}): {e.strerror}") from None
    _POPENS[p.pid] = p
    return Running(
        name=spec.name, pid=p.pid, pgid=p.pid, argv=list(spec.argv), log=str(log_path),
        health_url=spec.health_url, port=spec.port, start_ticks=_start_ticks(p.pid), started_at=time.time(),
    )


def tail(path: str | Path, n: int = 5) -> list[str]:
    try:
        with open(path, errors="replace") as f:
            return [ln.rstrip() for ln in deque(f, maxlen=n) if ln.strip()]
    except OSError:
        return []


def _exit_code(r: Running) -> int | None:
    p = _POPENS.get(r.pid)
    return p.poll() if p is not None else None


def check_health(url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def wait_healthy(r: Running, timeout_s: float, console: Console | None = None) -> float:
    """Poll r.health_url until it answers 200. Returns the seconds it took. LaunchError when the process
    exits first (with the last log line) or the deadline passes."""
    if not r.health_url:
        return 0.0
    console = console or Console(stderr=True)
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    delay = 0.05
    with console.status(f"waiting for {r.name} at {r.health_url} (up to {timeout_s:.0f} s)") as status:
        while True:
            if not r.alive() or _exit_code(r) is not None:
                code = _exit_code(r)
                last = tail(r.log, 1)
                why = f": {last[-1][:200]}" if last else ""
                raise LaunchError(
                    f"{r.name} exited (code {code}) before becoming healthy{why} (log: {r.log})"
                )
            if check_health(r.health_url, timeout=min(2.0, max(0.1, deadline - time.monotonic()))):
                return time.monotonic() - t0
            now = time.monotonic()
            if now >= deadline:
                raise LaunchError(
                    f"{r.name} did not become healthy at {r.health_url} within {timeout_s:.0f} s (log: {r.log})"
                )
            status.update(f"waiting for {r.name} at {r.health_url}: {now - t0:.0f}/{timeout_s:.0f} s")
            time.sleep(min(delay, max(0.0, deadline - now)))  # poll interval, backing off to 1 s
            delay = min(delay * 1.5, 1.0)


def stop(r: Running, grace_s: float = 10.0) -> str:
    """SIGTERM the process group, wait up to grace_s, then SIGKILL it. Returns how it ended:
    "not running" | "terminated" | "killed"."""
    how = "not running"
    if r.alive() or group_alive(r.pgid):
        how = "terminated"
        try:
            os.killpg(r.pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if not _wait_gone(r, grace_s):
            how = "killed"
            try:
                os.killpg(r.pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _wait_gone(r, 5.0)
    p = _POPENS.pop(r.pid, None)
    if p is not None:
        try:
            p.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            pass
    return how


def _wait_gone(r: Running, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.02
    while time.monotonic() < deadline:
        p = _POPENS.get(r.pid)
        if p is not None:
            p.poll()  # reap our own child so it does not linger as a zombie
        if not group_alive(r.pgid):
            return True
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    return not group_alive(r.pgid)


class Supervisor:
    """Start several processes in order (each waits healthy before the next), stop them all in reverse
    order on exit, whatever happened. Used by `reproduce --engine live-sim|vllm` and `run`."""

    def __init__(self, log_dir: Path, console: Console | None = None, grace_s: float = 10.0) -> None:
        self.log_dir = log_dir
        self.console = console or Console(stderr=True)
        self.grace_s = grace_s
        self.running: list[Running] = []
        self._stack = ExitStack()

    def start(self, spec: ProcessSpec) -> Running:
        r = start(spec, self.log_dir)
        self.running.append(r)
        wait_healthy(r, spec.health_timeout_s, self.console)
        return r

    def stop_all(self) -> list[tuple[str, str]]:
        out = []
        while self.running:
            r = self.running.pop()
            out.append((r.name, stop(r, self.grace_s)))
        return out

    def __enter__(self) -> "Supervisor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


# --- state file (what `thunderbench up` started) ---------------------------------------------------------

def state_dir() -> Path:
    """Where `up` keeps its state and logs: $THUNDERBENCH_STATE_DIR, else ./.thunderbench."""
    return Path(os.environ.get("THUNDERBENCH_STATE_DIR") or ".thunderbench")


def save_state(recipe: str, arm: str, procs: list[Running], path: Path | None = None,
               endpoints: dict[str, str | None] | None = None) -> Path:
    """`endpoints` ({"engine": root URL, "proxy": root URL or None}) is written once every process is healthy:
    `run` and `reproduce` then measure these servers instead of starting their own."""
    path = path or state_dir() / "state.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    data: dict = {"recipe": recipe, "arm": arm, "processes": [asdict(p) for p in procs]}
    if endpoints:
        data["endpoints"] = endpoints
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
    return path


def load_state(path: Path | None = None) -> dict | None:
    path = path or state_dir() / "state.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise LaunchError(f"state file {path} is unreadable ({e}); remove it after checking no server runs") from None
    data["processes"] = [Running(**p) for p in data.get("processes", [])]
    return data


def clear_state(path: Path | None = None) -> None:
    path = path or state_dir() / "state.json"
    path.unlink(missing_ok=True)


def iter_alive(procs: list[Running]) -> Iterator[Running]:
    return (p for p in procs if p.alive())
