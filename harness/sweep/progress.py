"""The sweep's progress display: points done / total, an ETA, and the live steps/min of the running point.

On a terminal it is one status line that rich redraws in place (refreshed by a background thread every
`interval_s`); elsewhere (a log file, CI, a pipe) it degrades to plain lines: one when a point finishes, and
one per `plain_every_s` while a point runs. The live rate counts the lines the running point appends to its
steps.jsonl (live engines write one per served call; the DES writes its records at the end, so a DES point
shows no live rate). Time comes from `clock` so the arithmetic is testable on a fake clock.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from rich.console import Console
from rich.markup import escape


def fmt_duration(s: float) -> str:
    s = max(0, int(round(s)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


class _LineCounter:
    """Lines appended to a file since the point started (read incrementally: a long run is not reread)."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.lines = path, 0, 0

    def poll(self) -> int:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return self.lines
        end = chunk.rfind(b"\n") + 1  # a partial last line is counted once it is complete
        self.lines += chunk.count(b"\n", 0, end)
        self.offset += end
        return self.lines


class SweepProgress:
    """Progress of `total` points run `jobs` at a time. `time_scale`: simulated seconds per wall second of
    the running points (live-sim), so the live rate reads in the same steps/min as the results."""

    def __init__(self, console: Console, total: int, *, jobs: int = 1, time_scale: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, interval_s: float = 1.0,
                 plain_every_s: float = 60.0) -> None:
        self.console, self.total, self.jobs, self.time_scale = console, total, max(1, jobs), time_scale
        self.clock, self.interval_s, self.plain_every_s = clock, interval_s, plain_every_s
        self.done = 0
        self.failed = 0
        self.t0 = clock()
        self.walls: list[float] = []
        self.running: dict[str, tuple[float, _LineCounter | None]] = {}
        self.live = console.is_terminal
        self._last_plain = self.t0
        self._status = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the arithmetic ---------------------------------------------------------------------------------

    def eta_s(self) -> float | None:
        """Remaining points x the mean wall time of a finished point, over the points run at once."""
        if not self.walls or self.done >= self.total:
            return None
        per = sum(self.walls) / len(self.walls)
        left = (self.total - self.done) * per / self.jobs
        # the running points are partly done already
        now = self.clock()
        started = [now - t for t, _ in self.running.values()]
        if started:
            left -= min(sum(min(s, per) for s in started) / self.jobs, left)
        return max(0.0, left)

    def live_rate(self, name: str) -> tuple[int, float | None]:
        """(steps so far, steps per simulated minute) of a running point; rate None before 5 s or without
        a step file."""
        t, counter = self.running[name]
        if counter is None:
            return 0, None
        n = counter.poll()
        elapsed = self.clock() - t
        return n, (n / (elapsed * self.time_scale / 60.0) if elapsed >= 5.0 and n else None)

    def line(self) -> str:
        parts = [f"{self.done}/{self.total} points done"]
        if self.failed:
            parts[0] += f" ({self.failed} failed)"
        eta = self.eta_s()
        parts.append(f"elapsed {fmt_duration(self.clock() - self.t0)}")
        if eta is not None:
            parts.append(f"ETA {fmt_duration(eta)}")
        for name in list(self.running):
            n, rate = self.live_rate(name)
            run = f"running {name}"
            if n:
                run += f": {n} steps" + (f", {rate:.1f} steps/min" if rate is not None else "")
            parts.append(run)
        return " · ".join(parts)

    # -- events -------------------------------------------------------------------------------------------

    def start(self, name: str, run_dir: Path | None = None) -> None:
        with self._lock:
            self.running[name] = (self.clock(), _LineCounter(run_dir / "steps.jsonl") if run_dir else None)
        self.refresh()

    def finish(self, name: str, ok: bool, wall_s: float | None = None) -> None:
        with self._lock:
            t, _ = self.running.pop(name, (self.clock(), None))
            self.walls.append(wall_s if wall_s is not None else self.clock() - t)
            self.done += 1
            self.failed += 0 if ok else 1
        if not self.live:
            self.console.print(f"  [{self.done}/{self.total}] {escape(name)} {'done' if ok else 'failed'}"
                               + (f"; ETA {fmt_duration(e)}" if (e := self.eta_s()) is not None else ""),
                               highlight=False, soft_wrap=True)
            self._last_plain = self.clock()
        self.refresh()

    def refresh(self) -> None:
        """Redraw the status line (terminal), or print a plain line when one is due (elsewhere)."""
        with self._lock:
            text = self.line()
        if self.live:
            if self._status is not None:
                self._status.update(escape(text))
        elif self.running and self.clock() - self._last_plain >= self.plain_every_s:
            self._last_plain = self.clock()
            self.console.print(f"  {escape(text)}", highlight=False, soft_wrap=True)

    @contextmanager
    def shown(self) -> Iterator["SweepProgress"]:
        """Display while the block runs: a redrawn status line on a terminal, else periodic plain lines."""
        status = self.console.status(escape(self.line())) if self.live else None
        if status is not None:
            status.start()
            self._status = status
        self._thread = threading.Thread(target=self._loop, name="sweep-progress", daemon=True)
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=5)
            if status is not None:
                status.stop()
                self._status = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.refresh()
            except Exception:  # a display problem never stops a sweep
                pass
