"""Client-supplied tool resource ids are bounded (count per request and per program, length per id), kept
in first-seen order without duplicates, and stored in O(1) per id; profile CSV cells cannot hold formulas."""

from __future__ import annotations

import csv
import io
import time

import pytest

from ThunderAgent.forward import ProxyError
from ThunderAgent.parsing import extract_resources
from ThunderAgent.programs import MAX_RESOURCE_ID_LEN, MAX_RESOURCE_IDS, ProgramRecord
from ThunderAgent.records import StepRecord
from ThunderAgent.records import csv_row


def test_too_many_ids_in_one_request_is_400() -> None:
    with pytest.raises(ProxyError) as e:
        extract_resources({"docker_ids": [str(i) for i in range(MAX_RESOURCE_IDS + 1)]})
    assert e.value.status == 400 and e.value.param == "docker_ids"
    # split between top level and extra_body still counts together
    half = [str(i) for i in range(MAX_RESOURCE_IDS // 2 + 1)]
    with pytest.raises(ProxyError):
        extract_resources({"tool_ids": half, "extra_body": {"tool_ids": half}})


def test_overlong_id_is_400() -> None:
    assert extract_resources({"docker_ids": ["a" * MAX_RESOURCE_ID_LEN]}) == {"docker_ids": ["a" * MAX_RESOURCE_ID_LEN]}
    with pytest.raises(ProxyError) as e:
        extract_resources({"docker_ids": ["a" * (MAX_RESOURCE_ID_LEN + 1)]})
    assert e.value.status == 400


def test_program_keeps_order_dedups_and_caps() -> None:
    rec = ProgramRecord(program_id="p", created_at=0.0)
    rec.add_resources({"docker_ids": ["b", "a", "b"]})
    rec.add_resources({"docker_ids": ["a", "c"], "tool_ids": ["t"]})
    assert {k: list(v) for k, v in rec.resources.items()} == {"docker_ids": ["b", "a", "c"], "tool_ids": ["t"]}
    for start in range(0, 3 * MAX_RESOURCE_IDS, 500):
        rec.add_resources({"tool_ids": [f"x{i}" for i in range(start, start + 500)]})
    assert len(rec.resources["tool_ids"]) == MAX_RESOURCE_IDS
    assert list(rec.resources["tool_ids"])[0] == "t"


def test_add_resources_is_linear() -> None:
    """Adding n distinct ids costs O(n), not O(n^2): 1000 batches of 1000 repeated ids stay fast."""
    rec = ProgramRecord(program_id="p", created_at=0.0)
    ids = [f"container-{i}" for i in range(MAX_RESOURCE_IDS)]
    t0 = time.perf_counter()
    for _ in range(300):
        rec.add_resources({"docker_ids": ids})
    elapsed = time.perf_counter() - t0
    # 300k membership checks: ~30 ms with a set; the old list scan did 300M comparisons (tens of seconds)
    assert elapsed < 5.0, elapsed


@pytest.mark.parametrize("pid", ["=HYPERLINK(\"http://x\")", "+1", "-2+3", "@SUM(A1)", "\t=1"])
def test_profile_csv_row_neutralises_formula_ids(pid: str) -> None:
    rec = StepRecord(program_id=pid, step=1, arrival=0.0, start=0.0, end=1.0, status="ok", arm="thunderagent")
    buf = io.StringIO()
    csv.writer(buf).writerow(csv_row(rec, 1, 0.0))
    cell = next(csv.reader(io.StringIO(buf.getvalue())))[0]
    assert cell == "'" + pid
