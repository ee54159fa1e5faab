"""The files a sweep or a run keeps beside its points: where it is written until it ends, the options it was
given (for --resume), and JSON written atomically (a reader never sees half a file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.errors import ReproduceError

INCOMPLETE = ".incomplete"
OPTIONS_FILE = "options.json"  # what the command was given, so that --resume DIR needs nothing else


def work_dir(final: Path) -> Path:
    """Where a run or sweep is written until it ends: `<out>.incomplete`, renamed to `<out>` at the end and
    kept under that name (logs and all) when it fails or is interrupted."""
    return final.with_name(final.name + INCOMPLETE)


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise ReproduceError(f"{path} is not valid JSON ({e})") from None
    except OSError as e:  # e.g. a directory where the file belongs
        raise ReproduceError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(data, dict):
        raise ReproduceError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data
