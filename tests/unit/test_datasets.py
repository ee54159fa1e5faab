"""Instance sources: synthetic stand-ins, local files, toy fixtures, the HF name offline; program ids."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.datasets import TOY_PATH, DatasetError, load_instances, program_id_for

REPO = Path(__file__).resolve().parents[2]
ROWS = [{"instance_id": f"org__repo-{i}", "repo": "org/repo", "problem_statement": f"bug {i}"} for i in range(5)]


def test_program_id_matches_the_seed_recipe():
    want = "swe-" + hashlib.sha1(b"astropy__astropy-12907:0").hexdigest()[:16]
    assert program_id_for("astropy__astropy-12907", 0) == want
    scoped = program_id_for("astropy__astropy-12907", 0, "run1")
    assert scoped != want and scoped.startswith("swe-") and len(scoped) == 20
    assert program_id_for("x", 1, "run1") != program_id_for("x", 0, "run1")


def test_lite_synthetic_is_deterministic_and_labelled():
    rows = load_instances("lite-synthetic")
    assert len(rows) == 300 and rows[0]["instance_id"] == "synthetic-lite__0001"
    assert all(r["synthetic"] for r in rows)
    assert len(load_instances("lite-synthetic", split="dev")) == 23
    assert [r["instance_id"] for r in load_instances("lite-synthetic:3")] == [
        "synthetic-lite__0001", "synthetic-lite__0002", "synthetic-lite__0003"]
    with pytest.raises(DatasetError, match="lite-synthetic:N"):
        load_instances("lite-synthetic:many")


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "dir"])
def test_local_sources(tmp_path, kind):
    if kind == "jsonl":
        src = tmp_path / "lite.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif kind == "json":
        src = tmp_path / "lite.json"
        src.write_text(json.dumps(ROWS))
    elif kind == "parquet":
        src = tmp_path / "lite.parquet"
        pd.DataFrame(ROWS).to_parquet(src)
    else:
        src = tmp_path / "lite"
        (src / "data").mkdir(parents=True)
        pd.DataFrame(ROWS).to_parquet(src / "data" / "test-00000-of-00001.parquet")
    rows = load_instances(str(src))
    assert [r["instance_id"] for r in rows] == [r["instance_id"] for r in ROWS]
    assert rows[2]["problem_statement"] == "bug 2"


def test_slice_and_instance_filter(tmp_path):
    src = tmp_path / "lite.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert [r["instance_id"] for r in load_instances(str(src), slice="1:3")] == ["org__repo-1", "org__repo-2"]
    assert len(load_instances(str(src), slice="2")) == 2
    got = load_instances(str(src), instances=["org__repo-4", "org__repo-0"])
    assert [r["instance_id"] for r in got] == ["org__repo-0", "org__repo-4"]  # source order
    with pytest.raises(DatasetError, match="unknown instance id"):
        load_instances(str(src), instances=["nope"])
    with pytest.raises(DatasetError, match="bad slice"):
        load_instances(str(src), slice="a:b")


def test_bad_sources(tmp_path):
    with pytest.raises(DatasetError, match="neither an existing file"):
        load_instances("missing.jsonl")
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"instance_id": "a"}\n{oops\n')
    with pytest.raises(DatasetError, match=r"x.jsonl:2: invalid JSON"):
        load_instances(str(bad))
    noid = tmp_path / "y.jsonl"
    noid.write_text('{"repo": "a"}\n')
    with pytest.raises(DatasetError, match="no instance_id"):
        load_instances(str(noid))
    with pytest.raises(DatasetError, match="unsupported file type"):
        (tmp_path / "z.csv").write_text("a")
        load_instances(str(tmp_path / "z.csv"))


def test_toy_fixtures():
    assert TOY_PATH.exists(), "harness/fixtures/toy/instances.jsonl (engineer A's fixtures) is missing"
    rows = load_instances("toy")
    assert rows and all(r["instance_id"] and "base_commit" in r for r in rows)


@pytest.mark.timeout(120)
def test_lite_offline_without_a_cached_copy_is_one_clear_error(tmp_path):
    code = ("from harness.datasets import load_instances, DatasetError\n"
            "try:\n    load_instances('lite')\nexcept DatasetError as e:\n    print('ERR', e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=110)
    assert out.returncode == 0, out.stderr[-2000:]
    line = out.stdout.strip()
    assert line.startswith("ERR cannot load 'princeton-nlp/SWE-bench_Lite' split 'test'") and "\n" not in line
    assert "HF_HUB_OFFLINE=1" in line and "lite-synthetic" in line and "Traceback" not in out.stderr
