"""`thunderagent` / `python -m ThunderAgent` command line (placeholder until the proxy lands)."""

from __future__ import annotations

import argparse

from ThunderAgent import __version__


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="thunderagent", description="ThunderAgent proxy")
    p.add_argument("--version", action="version", version=f"thunderagent {__version__}")
    p.parse_args(argv)
