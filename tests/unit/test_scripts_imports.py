"""The shell scripts under scripts/ embed Python (heredocs) that imports the harness by module path: a moved
module must break a test, not the next person who regenerates the reference results."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMPORT = re.compile(r"^\s*from ((?:harness|ThunderAgent)[\w.]*) import ([\w, ]+)$", re.M)
SCRIPTS = sorted(p for p in (ROOT / "scripts").rglob("*") if p.is_file() and IMPORT.search(p.read_text(errors="ignore")))


def test_there_are_scripts_with_embedded_imports_to_check() -> None:
    assert any(p.name == "make_reference" for p in SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_name_a_script_imports_exists(script: Path) -> None:
    for module, names in IMPORT.findall(script.read_text()):
        mod = importlib.import_module(module)
        for name in (n.strip() for n in names.split(",")):
            assert hasattr(mod, name), f"{script.relative_to(ROOT)}: {module} has no {name}"
