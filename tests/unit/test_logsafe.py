"""ThunderAgent/logsafe.py: untrusted ids cannot forge log lines or run as spreadsheet formulas."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ThunderAgent.logsafe import EscapingFilter, csv_cell, escape_control, install


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing to a buffer through a handler that carries the escaping filter."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(EscapingFilter())
    logger = logging.getLogger("test.logsafe")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, buf
    logger.removeHandler(handler)


def test_escape_control() -> None:
    assert escape_control("plain id-1_x.y") == "plain id-1_x.y"
    assert escape_control("a\nb\rc\td") == "a\\nb\\rc\\td"
    assert escape_control("\x1b[31mred\x00\x7f\x85\u2028") == "\\x1b[31mred\\x00\\x7f\\x85\\u2028"
    assert escape_control("héllo ✓ 程序") == "héllo ✓ 程序"  # printable unicode untouched


@given(st.text())
def test_escaped_text_has_no_line_breaks(text: str) -> None:
    out = escape_control(text)
    assert len(out.splitlines()) <= 1
    assert "\x1b" not in out


def test_forged_line_stays_one_record(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buf = captured
    logger.info("program %s released", "evil\nERROR thunderagent.app: forged")
    logger.info("ok %s", "x")
    lines = buf.getvalue().splitlines()
    assert lines == [
        "INFO test.logsafe: program evil\\nERROR thunderagent.app: forged released",
        "INFO test.logsafe: ok x",
    ]


def test_tracebacks_keep_their_lines(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buf = captured
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed for %s", "p\n1")
    lines = buf.getvalue().splitlines()
    assert lines[0] == "ERROR test.logsafe: failed for p\\n1"
    assert lines[1].startswith("Traceback") and lines[-1] == "ValueError: boom"


def test_install_is_idempotent() -> None:
    logger = logging.getLogger("test.logsafe.install")
    handler = logging.StreamHandler(io.StringIO())
    logger.addHandler(handler)
    try:
        install(logger)
        install(logger)
        assert sum(isinstance(f, EscapingFilter) for f in handler.filters) == 1
    finally:
        logger.removeHandler(handler)


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("prog-1", "prog-1"),
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+1", "'+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("a=b", "a=b"),
    ],
)
def test_csv_cell_neutralises_formulas(value: str, cell: str) -> None:
    assert csv_cell(value) == cell


@given(st.text())
def test_csv_rows_cannot_be_forged(value: str) -> None:
    # csv.writer quotes separators, quotes and newlines: whatever the id, it reads back as one cell.
    buf = io.StringIO()
    csv.writer(buf).writerow([csv_cell(value), 1])
    rows = list(csv.reader(io.StringIO(buf.getvalue(), newline="")))
    assert len(rows) == 1 and len(rows[0]) == 2
    assert rows[0][0] == csv_cell(value)
