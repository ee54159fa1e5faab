"""The `thunderbench` console entry point, importable with the core install alone.

The core distribution is the proxy's (ThunderAgent); the harness needs the "bench" extra and some of its
commands more (agents, grading, Docker). When a library an extra provides is missing, the user gets one line
naming the extra and the command that installs it, never an import traceback. Nothing here imports a
third-party library.
"""

from __future__ import annotations

import sys

# top-level module -> the extra that installs it (see [project.optional-dependencies] in pyproject.toml)
EXTRA_OF_MODULE: dict[str, str] = {
    "typer": "bench",
    "rich": "bench",
    "numpy": "bench",
    "pandas": "bench",
    "matplotlib": "bench",
    "datasets": "bench",
    "pyarrow": "bench",
    "pydantic": "bench",
    "tokenizers": "bench",
    "jinja2": "bench",
    "docker": "docker",
    "openhands": "openhands",
    "litellm": "openhands",
    "minisweagent": "miniswe",
    "swebench": "eval",
}


def missing_extra_line(e: ModuleNotFoundError) -> str | None:
    """One line naming the extra that provides the module `e` could not import, or None when the module is
    not one an extra provides (then the error is a bug, not a missing install)."""
    top = (e.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(top)
    if extra is None:
        return None
    return (f"{top} is not installed; it comes with thunderbench's '{extra}' extra: "
            f"pip install 'thunderbench[{extra}]' (or `bash scripts/setup/setup.sh`, which installs every extra)")


def main(argv: list[str] | None = None) -> None:
    try:
        from harness.cli import main as cli_main

        cli_main(argv)
    except ModuleNotFoundError as e:
        line = missing_extra_line(e)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
