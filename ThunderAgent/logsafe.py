"""Untrusted text (program ids, container ids, URL paths) in log lines and CSV cells.

Program ids come from clients. Logged verbatim, an id such as ``"x\\nERROR forged line"`` writes a second,
forged log line; in a CSV opened by a spreadsheet, a cell such as ``=HYPERLINK(...)`` is run as a formula.

* ``EscapingFilter`` escapes control characters in every formatted log message (newlines become ``\\n``,
  ANSI escapes ``\\x1b`` ...) so one record is always one line. It is a handler filter: attach it to the
  handlers that write the log (``install()`` does that for the root logger's handlers after
  ``logging.basicConfig``), and every logger in the process is covered, including ones that format ids with
  ``%s``. Tracebacks (``exc_info``) are formatted separately and keep their lines.
* ``redact`` hides credentials that may ride along in logged text: a URL's userinfo (``http://user:pw@host``
  or ``http://TOKEN@host`` — a backend URL may carry one), credential-looking query values (``?api_key=``), ``Bearer <token>`` and OpenAI-style ``sk-...``
  keys. ``EscapingFilter`` applies it to every record too, so no logger can write a backend password.
* ``csv_cell`` neutralises spreadsheet formulas in a CSV cell (OWASP "CSV injection"): a cell that starts
  with ``= + - @`` (or a tab/CR) gets a leading ``'``. The csv module already quotes separators, quotes and
  newlines, so rows and columns cannot be forged; this handles the formula part only.
"""

from __future__ import annotations

import logging
import re

# C0, DEL, C1, line/paragraph separators, and the invisible format characters that reorder or hide text
# (bidi marks, embeddings, overrides and isolates such as U+202E and U+2066; zero-width characters and the
# BOM): shown escaped, so a log line reads as what it holds ("Trojan Source", CVE-2021-42574).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff]")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_SECRETS = (
    # the userinfo of a URL (user:password, or a bare token as in http://TOKEN@host)
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@"), r"\1***@"),
    # credential-looking query parameters (?api_key=..., &token=...)
    (
        re.compile(r"(?i)([?&;](?:api[_-]?key|key|token|access[_-]?token|auth|password|passwd|secret|sig|signature)=)[^&#\s]+"),
        r"\1***",
    ),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1***"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), "sk-***"),
)


def _escape_char(m: re.Match[str]) -> str:
    c = m.group()
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c) or (
        f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"
    )


def escape_control(text: str) -> str:
    """``text`` with every control character (C0, DEL, C1, line/paragraph separators), bidi and zero-width
    format character and lone surrogate backslash-escaped."""
    return _CONTROL.sub(_escape_char, text)


def redact_url(url: str) -> str:
    """A backend URL as shown to anyone (routes, metric labels, logs, records): its userinfo and every
    query value hidden (the proxy still uses the full URL). ``http://alice:pw@h:8000/?k=v`` ->
    ``http://***@h:8000/?k=***``."""
    out = re.sub(r"(?i)^([a-z][a-z0-9+.-]*://)[^/?#]*@", r"\1***@", url)
    if "?" in out:
        head, _, query = out.partition("?")
        out = head + "?" + re.sub(r"=([^&#]*)", "=***", query)
    return out


def redact(text: str) -> str:
    """``text`` with URL passwords, bearer tokens and ``sk-`` keys replaced by ``***``."""
    for pattern, repl in _SECRETS:
        text = pattern.sub(repl, text)
    return text


class EscapingFilter(logging.Filter):
    """A handler filter that makes each log record a single line of printable text, credentials redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is logging's problem to report, not ours
            return True
        clean = redact(escape_control(message))
        if clean != message:
            record.msg = clean
            record.args = None
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Attach one ``EscapingFilter`` to each handler of ``logger`` (default: the root logger). Idempotent."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, EscapingFilter) for f in handler.filters):
            handler.addFilter(EscapingFilter())


def csv_cell(value: str) -> str:
    """``value`` safe to put in a CSV cell that a spreadsheet may open (formula prefix neutralised)."""
    return "'" + value if value.startswith(_FORMULA_START) else value
