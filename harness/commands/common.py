"""What every command shares: the two consoles, the guard that turns a user error into one line (exit 2)
and Ctrl-C / SIGTERM into a clean unwind (exit 130), and the parsing of list options.

Commands import the harness modules they call inside their function bodies: `thunderbench --help` (and a
command that fails on its arguments) then loads typer and rich only, not numpy, pandas or matplotlib.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.text import Text

from harness.errors import UserError

out = Console()
err = Console(stderr=True)


def error_line(message: str) -> None:
    """`error: <message>` on ONE line (newlines folded; no rich markup interpretation of the message)."""
    msg = " ".join(message.split())
    err.print(Text.assemble(("error:", "bold red"), " ", msg), highlight=False, soft_wrap=True)


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwind through every `finally`: supervised processes are stopped, temp dirs removed


@contextmanager
def guard() -> Iterator[None]:
    """Map user errors to one line + exit 2, Ctrl-C / SIGTERM to a clean unwind + exit 130."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        yield
    except UserError as e:  # every mistake a user can make derives from it (harness/errors.py)
        error_line(str(e))
        raise typer.Exit(2) from None
    except FileNotFoundError as e:
        error_line(f"{e.filename or e}: not found")
        raise typer.Exit(2) from None
    except (IsADirectoryError, NotADirectoryError, PermissionError) as e:  # a path of the wrong kind
        error_line(f"{e.filename or e}: {e.strerror or e}")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def recipe_named(name: str):  # -> harness.recipes.Recipe
    """A bundled recipe by name, or a recipe .toml by path."""
    from harness.recipes import load_recipe

    return load_recipe(name)


def levels_of(text: Optional[str]) -> Optional[tuple[int, ...]]:
    """`24,48,96` -> (24, 48, 96); None when the option was not given."""
    from harness.recipes import parse_levels

    return parse_levels(text) if text else None


def arms_of(text: Optional[str]) -> Optional[tuple[str, ...]]:
    """A comma-separated list (arms, instance ids) as a tuple; None when the option was not given."""
    return tuple(a.strip() for a in text.split(",") if a.strip()) if text else None
