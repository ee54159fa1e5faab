"""The step record: one line per LLM call, the one format every arm writes.

Written by the proxy (--profile, `step_records.jsonl`), by the harness runner (client side), and by the
discrete-event simulator. harness/records.py re-exports this and adds the run manifest and the
engine-metrics series. Times are seconds: wall-clock Unix time for real runs, virtual seconds for
simulated ones (the run manifest says which and gives the run's start).

The proxy's --profile writer is here too: per LLM call one StepRecord line in `step_records.jsonl` and,
per completed call, one row of upstream ThunderAgent's `step_profiles.csv` (its columns), both written by
one thread fed through a queue, so the event loop never blocks on disk.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import os
import queue
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any, Iterator

from ThunderAgent.logsafe import csv_cell

log = logging.getLogger("thunderagent.telemetry")

SCHEMA_VERSION = 1


@dataclass(slots=True)
class StepRecord:
    program_id: str
    step: int  # 1-based index of this LLM call within its program
    arrival: float  # request reached the client/proxy (before any pause wait)
    start: float  # request was forwarded to the engine (after any pause wait)
    end: float  # last byte of the response (or the failure)
    status: str = "ok"  # "ok" | "error" | "cancelled"
    first_token: float | None = None  # first streamed token (None for non-streaming calls)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None  # None when the engine does not report it
    pause_s: float = 0.0  # time held by the scheduler (start - arrival for the proxy)
    http_status: int | None = None
    error: str | None = None
    run_id: str | None = None
    arm: str | None = None  # "vllm" | "thunderagent" | "continuum" | ...
    instance_id: str | None = None
    backend: str | None = None
    schema: int = SCHEMA_VERSION

    def to_json(self) -> str:
        """One JSON line. Non-ASCII text is kept as is, unless UTF-8 cannot encode it (a lone surrogate in
        client-given text): then it is escaped, so the record is still written."""
        d = asdict(self)
        line = json.dumps(d, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        try:
            line.encode()
        except UnicodeEncodeError:
            line = json.dumps(d, separators=(",", ":"), allow_nan=False)
        # U+2028/U+2029 are line breaks to str.splitlines() and some JSONL readers: escaped, one record
        # stays one line for every reader
        if "\u2028" in line or "\u2029" in line:
            line = line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
        return line

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StepRecord":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class JsonlWriter:
    """Append-only JSONL, one flushed line per record (safe to kill at any point: at most the last,
    partial line is lost, and readers skip a partial last line)."""

    def __init__(self, path: str | os.PathLike[str], fsync: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _drop_partial_last_line(self.path)
        self._f: IO[str] = open(self.path, "a", encoding="utf-8")
        self._fsync = fsync

    def write_line(self, line: str) -> None:
        self._f.write(line + "\n")
        self._f.flush()
        if self._fsync:
            os.fsync(self._f.fileno())

    def write(self, record: StepRecord) -> None:
        self.write_line(record.to_json())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drop_partial_last_line(path: Path) -> None:
    """Cut a torn last line (a writer killed mid-line) before appending: otherwise the next record would be
    glued onto it, making a line no reader can parse and losing that record."""
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            pos = size
            while pos > 0:  # find the last newline, reading backwards in blocks
                step = min(65536, pos)
                f.seek(pos - step)
                block = f.read(step)
                i = block.rfind(b"\n")
                if i >= 0:
                    f.truncate(pos - step + i + 1)
                    return
                pos -= step
            f.truncate(0)
    except FileNotFoundError:
        return


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield the objects of a JSONL file (gzip-compressed when its name ends in .gz), skipping a truncated
    last line (an interrupted writer)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # partial last line
            line = line.strip()
            if line:
                yield json.loads(line)


def read_step_records(path: str | os.PathLike[str]) -> list[StepRecord]:
    return [StepRecord.from_dict(d) for d in read_jsonl(path)]


# --- the proxy's --profile writer ------------------------------------------------------------------

CSV_NAME = "step_profiles.csv"
JSONL_NAME = "step_records.jsonl"
CSV_COLUMNS = (
    "program_id",
    "step_id",
    "prefill_s",
    "decode_s",
    "pause_s",
    "tool_call_s",
    "kv_hit_rate",
    "completed_at",
)


def csv_row(rec: StepRecord, step_id: int, tool_call_s: float) -> list[Any]:
    """One upstream step_profiles.csv row. Non-streaming calls have prefill = decode = 0 (as upstream);
    kv_hit_rate is empty when the engine did not report cached tokens (upstream writes 0.0)."""
    first = rec.first_token
    prefill = (first - rec.start) if first is not None else 0.0
    decode = (rec.end - first) if first is not None else 0.0
    hit = ""
    if rec.cached_tokens is not None and rec.prompt_tokens:
        hit = f"{rec.cached_tokens / rec.prompt_tokens:.4f}"
    return [
        csv_cell(rec.program_id),
        step_id,
        f"{max(0.0, prefill):.4f}",
        f"{max(0.0, decode):.4f}",
        f"{max(0.0, rec.pause_s):.4f}",
        f"{max(0.0, tool_call_s):.4f}",
        hit,
        f"{rec.end:.4f}",
    ]


class ProfileWriter:
    """Appends step records (JSONL) and upstream CSV rows from a writer thread."""

    _STOP = object()

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.dir / CSV_NAME
        self.jsonl_path = self.dir / JSONL_NAME
        self._q: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="thunderagent-profile-writer", daemon=True)
        self._thread.start()

    def submit(self, record: StepRecord, row: list[Any] | None) -> None:
        self._q.put((record, row))

    def close(self, timeout: float = 10.0) -> None:
        self._q.put(self._STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        new_csv = not self.csv_path.exists()
        with (
            open(self.csv_path, "a", newline="", encoding="utf-8") as fcsv,
            JsonlWriter(self.jsonl_path) as jw,
        ):
            w = csv.writer(fcsv)
            if new_csv:
                w.writerow(CSV_COLUMNS)
                fcsv.flush()
            while True:
                item = self._q.get()
                if item is self._STOP:
                    return
                record, row = item  # type: ignore[misc]
                try:
                    jw.write(record)
                    if row is not None:
                        w.writerow(row)
                        fcsv.flush()
                except (OSError, ValueError) as e:  # a full disk must not kill the writer thread
                    log.error("profile write failed: %s", e)
