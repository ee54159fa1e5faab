"""The one duration grammar of the command line, recipes and windows: a bare number is seconds, otherwise
numbers with units h, m or min, s, in any combination written largest first or not (`90s`, `80m`, `80min`,
`1.5h`, `1h10m`, `1h 10m 30s`). A window is START-END of two durations (`10m-70m`, `1h10m-2h`).

Every caller (recipes, the CLI's --duration/--window, the throughput code) parses with these two functions
and lets their errors through: a `DurationError` (a `WindowError` for a window) is a user error, printed by
the CLI as one line."""

from __future__ import annotations

import re

from harness.errors import UserError

_UNITS = {"h": 3600.0, "min": 60.0, "m": 60.0, "s": 1.0}
_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(min|h|m|s)", re.IGNORECASE)
_BARE = re.compile(r"\s*\d+(?:\.\d+)?\s*")
HINT = "use numbers with h, m (or min), s, e.g. 90s, 80m, 80min, 1.5h, 1h10m"


class DurationError(UserError, ValueError):
    """Text that is not a duration (the message names it and the grammar)."""


class WindowError(DurationError):
    """A window that cannot be parsed, or one that does not fit the run (one readable line)."""


def parse_duration(text: str | int | float) -> float:
    """Seconds in `text` ('80m' -> 4800.0, '1h10m' -> 4200.0, '80min' -> 4800.0, '90' -> 90.0)."""
    if isinstance(text, bool):
        raise DurationError(f"bad duration {text!r}: {HINT}")
    if isinstance(text, (int, float)):
        if text < 0:
            raise DurationError(f"bad duration {text!r}: must be >= 0")
        return float(text)
    t = str(text)
    if _BARE.fullmatch(t):
        return float(t)
    pos, total = 0, 0.0
    for m in _PART.finditer(t):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2).lower()]
        pos = m.end()
    if pos == 0 or t[pos:].strip():
        raise DurationError(f"bad duration {text!r}: {HINT}")
    return total


def parse_window(text: str) -> tuple[float, float]:
    """'10m-70m' -> (600.0, 4200.0): START-END relative to the run start, the end after the start."""
    if not isinstance(text, str) or not text.strip():
        raise WindowError("empty window: give START-END relative to the run start, e.g. 10m-70m")
    parts = text.strip().split("-")
    if len(parts) != 2:
        raise WindowError(f"bad window {text!r}: expected START-END, e.g. 10m-70m")
    bounds = []
    for p in parts:
        if not p.strip():
            raise WindowError(f"bad window {text!r}: empty bound (use e.g. 10m-70m, 600s-4200s, 1h-2h)")
        try:
            bounds.append(parse_duration(p))
        except DurationError:
            raise WindowError(f"bad window {text!r}: cannot read {p.strip()!r} as a duration ({HINT})") from None
    if not bounds[1] > bounds[0]:
        raise WindowError(f"bad window {text!r}: the end must come after the start")
    return bounds[0], bounds[1]
