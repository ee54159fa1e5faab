"""Toy SWE-bench fixtures, predictions files and local checkouts (no agent library needed)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from harness.agents.checkout import CheckoutError, diff_against, prepare_checkout, remove_binary_diffs
from harness.agents.predictions import append_prediction, prediction, read_predictions
from harness.fixtures.make_toy import INSTANCES_PATH, TOY_REPOS, build_repo, render_instances

SWEBENCH_FIELDS = {"repo", "instance_id", "base_commit", "patch", "test_patch", "problem_statement",
                   "hints_text", "created_at", "version", "FAIL_TO_PASS", "PASS_TO_PASS",
                   "environment_setup_commit"}


def _rows() -> list[dict]:
    return [json.loads(line) for line in INSTANCES_PATH.read_text().splitlines()]


def test_committed_instances_are_reproducible() -> None:
    """Rebuilding the repos gives byte-identical rows, so base_commit hashes are stable."""
    assert INSTANCES_PATH.read_text() == render_instances()


def test_rows_follow_the_swebench_schema() -> None:
    rows = _rows()
    assert len(rows) >= 3 and len({r["instance_id"] for r in rows}) == len(rows)
    for r in rows:
        assert set(r) == SWEBENCH_FIELDS
        assert re.fullmatch(r"[0-9a-f]{40}", r["base_commit"])
        assert r["instance_id"] == r["repo"].replace("/", "__") + "-" + r["instance_id"].rsplit("-", 1)[1]
        for key in ("FAIL_TO_PASS", "PASS_TO_PASS"):
            assert isinstance(r[key], str) and all(isinstance(t, str) for t in json.loads(r[key]))
        assert json.loads(r["FAIL_TO_PASS"]) and r["patch"].startswith("diff --git")
        assert "tests/" not in r["patch"] and r["test_patch"].startswith("diff --git a/tests/")


def test_checkout_is_at_base_commit_and_bug_is_real(tmp_path: Path) -> None:
    """At base_commit the existing tests pass; with test_patch the FAIL_TO_PASS test fails; the gold
    patch fixes it (plain pytest here; the swebench-graded version is in test_agents_evaluate.py)."""
    import sys

    row = _rows()[0]
    repo = prepare_checkout(row, tmp_path / "r")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert head == row["base_commit"]
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}  # the toy tests need only pytest itself
    run = lambda: subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],  # noqa: E731
                                 cwd=repo, capture_output=True, text=True, env=env)
    assert run().returncode == 0
    subprocess.run(["git", "apply", "-"], input=row["test_patch"], text=True, cwd=repo, check=True)
    assert run().returncode == 1
    subprocess.run(["git", "apply", "-"], input=row["patch"], text=True, cwd=repo, check=True)
    assert run().returncode == 0


def test_build_repo_refuses_a_non_empty_dir(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("x")
    with pytest.raises(FileExistsError):
        build_repo(TOY_REPOS[0], tmp_path)


def test_diff_against_includes_new_files_and_drops_binaries(tmp_path: Path) -> None:
    row = _rows()[1]
    repo = prepare_checkout(row, tmp_path / "r")
    (repo / "NEW.md").write_text("hello\n")
    (repo / "blob.bin").write_bytes(b"\x00\x01\x02")
    patch = diff_against(repo, row["base_commit"])
    assert "diff --git a/NEW.md b/NEW.md" in patch and "blob.bin" not in patch
    # the index is left as the agent had it (nothing staged)
    staged = subprocess.run(["git", "diff", "--cached", "--name-only"], cwd=repo, capture_output=True, text=True)
    assert staged.stdout == ""


def test_remove_binary_diffs_keeps_text_sections() -> None:
    text = "diff --git a/a.py b/a.py\n--- a/a.py\n+++ b/a.py\n@@ -1 +1 @@\n-x\n+y\n"
    binary = "diff --git a/i.png b/i.png\nnew file mode 100644\nBinary files /dev/null and b/i.png differ\n"
    assert remove_binary_diffs(text + binary) == text
    assert remove_binary_diffs(text) == text


def test_real_repo_without_a_mirror_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("THUNDERBENCH_REPOS_DIR", raising=False)
    inst = {"repo": "django/django", "instance_id": "django__django-1", "base_commit": "0" * 40}
    with pytest.raises(CheckoutError, match="--repos-dir"):
        prepare_checkout(inst, tmp_path / "w")


def test_real_repo_from_a_local_mirror(tmp_path: Path) -> None:
    """A clone under <repos-dir>/<owner>__<name> is checked out (shared objects) at base_commit."""
    mirror = tmp_path / "mirrors" / "acme__calc"
    base = build_repo(TOY_REPOS[0], mirror)
    inst = {"repo": "acme/calc", "instance_id": "acme__calc-1", "base_commit": base}
    repo = prepare_checkout(inst, tmp_path / "w" / "calc", tmp_path / "mirrors")
    assert (repo / "calc" / "stats.py").exists()
    assert diff_against(repo, base) == ""


def test_predictions_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "run" / "predictions.jsonl"
    append_prediction(p, prediction("a__b-1", "m", "diff", program_id="pid"))
    append_prediction(p, prediction("a__b-2", "m", None))
    append_prediction(p, prediction("a__b-1", "m", "diff2", program_id="pid2"))  # a re-run overrides
    with open(p, "a") as f:
        f.write('{"instance_id": "trunc')  # an interrupted writer's partial last line
    preds = read_predictions(p)
    assert preds["a__b-1"]["model_patch"] == "diff2" and preds["a__b-2"]["model_patch"] == ""
    assert preds["a__b-1"]["program_id"] == "pid2"
    js = tmp_path / "preds.json"  # mini-swe-agent's dict form
    js.write_text(json.dumps({"x": {"instance_id": "x", "model_name_or_path": "m", "model_patch": ""}}))
    assert list(read_predictions(js)) == ["x"]
    with pytest.raises(ValueError, match="missing"):
        append_prediction(p, {"instance_id": "x"})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instance_id": "x"}\n')
    with pytest.raises(ValueError, match="lacks"):
        read_predictions(bad)
