"""`thunderbench evaluate` on toy fixtures: swebench's log parser and grading functions, no Docker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.agents.predictions import append_prediction, prediction
from harness.fixtures.make_toy import INSTANCES_PATH

pytestmark = [pytest.mark.real]

ROWS = [json.loads(line) for line in INSTANCES_PATH.read_text().splitlines()]


@pytest.fixture(autouse=True)
def _swebench() -> None:
    import os

    try:
        import swebench  # noqa: F401
    except ImportError:
        msg = "swebench is not installed: THUNDERBENCH_EXTRAS=eval bash scripts/setup/setup.sh"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


def test_grades_gold_wrong_empty_and_garbage(tmp_path: Path) -> None:
    from harness.evaluate import evaluate, main

    calc, textkit, intervals = ROWS[0], ROWS[1], ROWS[2]
    preds = tmp_path / "predictions.jsonl"
    append_prediction(preds, prediction(calc["instance_id"], "m", calc["patch"]))
    # applies cleanly but does not fix the bug: the FAIL_TO_PASS test still fails
    wrong = ("diff --git a/README.md b/README.md\n--- a/README.md\n+++ b/README.md\n"
             "@@ -1,3 +1,3 @@\n-# textkit\n+# textkit!\n \n Text utilities.\n")
    append_prediction(preds, prediction(textkit["instance_id"], "m", wrong))
    append_prediction(preds, prediction(intervals["instance_id"], "m", ""))
    report = evaluate(preds)  # dataset inferred: every id is a toy id
    got = {g.instance_id: g for g in report.grades}
    assert report.dataset == "toy" and report.resolved == 1
    assert got[calc["instance_id"]].status == "RESOLVED_FULL"
    assert got[calc["instance_id"]].tests["FAIL_TO_PASS"]["success"] == json.loads(calc["FAIL_TO_PASS"])
    assert got[textkit["instance_id"]].status == "RESOLVED_NO"
    assert got[textkit["instance_id"]].tests["FAIL_TO_PASS"]["failure"] == json.loads(textkit["FAIL_TO_PASS"])
    assert got[intervals["instance_id"]].status == "empty_patch"
    saved = json.loads((tmp_path / "predictions.eval.json").read_text())
    assert saved["resolved_ids"] == [calc["instance_id"]] and saved["total"] == 3

    garbage = tmp_path / "g.jsonl"
    append_prediction(garbage, prediction(calc["instance_id"], "m", "not a patch"))
    assert main([str(garbage), "--dataset", "toy"]) == 0
    assert json.loads((tmp_path / "g.eval.json").read_text())["instances"][0]["status"] == "patch_failed"


def test_bad_inputs_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from harness.evaluate import main

    assert main([str(tmp_path / "missing.jsonl")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
    p = tmp_path / "p.jsonl"
    append_prediction(p, prediction("nope__nope-1", "m", "x"))
    assert main([str(p), "--dataset", "toy"]) == 1
    assert "not in dataset 'toy'" in capsys.readouterr().err
    q = tmp_path / "q.jsonl"
    q.write_text('{"instance_id": "x"}\n')
    assert main([str(q)]) == 1
    assert "lacks" in capsys.readouterr().err


def test_real_instances_need_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real SWE-bench rows go to swebench's harness; without a Docker engine that is one clear error."""
    from harness import evaluate as ev

    row = {**ROWS[0], "repo": "acme/calc", "instance_id": "acme__calc-1"}
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(row) + "\n")
    p = tmp_path / "p.jsonl"
    append_prediction(p, prediction("acme__calc-1", "m", row["patch"]))
    monkeypatch.setattr(ev, "_docker_ok", lambda: "the docker CLI is not installed")
    with pytest.raises(ev.EvaluateError, match="needs a Docker engine"):
        ev.evaluate(p, str(data))
