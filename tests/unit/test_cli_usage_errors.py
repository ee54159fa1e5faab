"""Usage errors that typer/click catch themselves (missing argument, unknown command or option, wrong type)
come out of the console entry point as one `error:` line and exit code 2, never a box or a traceback."""

from __future__ import annotations

import pytest

from harness.cli import main


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["throughput"], "Missing argument"),
        (["nosuch"], "No such command"),
        (["reproduce", "glm4.6", "--jobs", "x"], "--jobs"),
        (["reproduce", "glm4.6", "--no-such-flag"], "No such option"),
        (["plot"], "Missing argument"),
    ],
)
def test_usage_errors_are_one_line(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        main(argv)
    assert ei.value.code == 2
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and needle in lines[0]
    assert "Traceback" not in err and "╭" not in err and out == ""


def test_version_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        main(["--version"])
    assert ei.value.code == 0
    assert capsys.readouterr().out.startswith("thunderbench ")
