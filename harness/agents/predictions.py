"""Predictions in swebench's format: `{"instance_id", "model_name_or_path", "model_patch"}` per line.

Real agents append one line per finished instance to `<run dir>/predictions.jsonl` (append + flush, so
a killed run keeps what it finished). Readers accept what swebench accepts: .jsonl, a .json list, or a
.json dict keyed by instance id (mini-swe-agent's preds.json).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

_LOCK = threading.Lock()
REQUIRED = ("instance_id", "model_name_or_path", "model_patch")


def prediction(instance_id: str, model_name_or_path: str, model_patch: str | None,
               **extra: Any) -> dict[str, Any]:
    """One prediction row; `extra` (e.g. program_id, status) rides along and swebench ignores it."""
    return {"instance_id": instance_id, "model_name_or_path": model_name_or_path,
            "model_patch": model_patch or "", **extra}


def append_prediction(path: str | os.PathLike[str], row: dict[str, Any]) -> None:
    missing = [k for k in REQUIRED if k not in row]
    if missing:
        raise ValueError(f"prediction is missing {missing}")
    append_line(path, row)


def append_line(path: str | os.PathLike[str], row: dict[str, Any]) -> None:
    """One JSON line appended and flushed, under a lock: agents' worker threads share the run's files."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(row, ensure_ascii=False) + "\n"
    with _LOCK, open(p, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()


def read_predictions(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """instance_id -> prediction. For .jsonl the last line of an instance wins (a re-run overrides);
    a truncated last line is skipped. Raises ValueError on rows that are not predictions."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    rows: list[dict[str, Any]]
    if p.suffix == ".json":
        data = json.loads(text)
        rows = list(data.values()) if isinstance(data, dict) else list(data)
    else:
        rows = []
        lines = text.split("\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError:
                if i == len(lines) - 1:  # partial last line of an interrupted writer
                    break
                raise ValueError(f"{p}:{i + 1}: not JSON")
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        if not isinstance(row, dict) or any(k not in row for k in REQUIRED):
            raise ValueError(f"{p}: a row lacks one of {REQUIRED}: {str(row)[:200]}")
        out[row["instance_id"]] = row
    return out
