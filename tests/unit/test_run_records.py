"""Run-directory schemas: manifest, engine samples, instance events, safe paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.records import (EngineSample, InstanceEvent, RunManifest, RunPaths, read_engine_samples,
                             read_instance_events, safe_join, safe_name)
from ThunderAgent.backends import parse_vllm_metrics
from ThunderAgent.records import JsonlWriter

SAMPLE = Path(__file__).resolve().parents[1] / "fakes" / "data" / "vllm-metrics-sample.txt"


def test_safe_paths(tmp_path):
    assert safe_join(tmp_path, "a", "b.jsonl") == (tmp_path / "a" / "b.jsonl").resolve()
    for bad in (("..", "x"), ("/etc/passwd",), ("a/../../x",)):
        with pytest.raises(ValueError, match="escapes"):
            safe_join(tmp_path, *bad)
    assert safe_name("django__django-11099") == "django__django-11099"
    assert "/" not in safe_name("../../etc") and safe_name("a b/c") == "a_b_c"
    with pytest.raises(ValueError):
        safe_name("///")
    p = RunPaths.under(tmp_path, "glm4.6", "../vllm-96")
    assert p.root.parent == (tmp_path / "glm4.6").resolve() and p.root.exists()


def test_manifest_roundtrip_and_labels(tmp_path):
    with pytest.raises(ValueError, match="profile"):
        RunManifest("r", "vllm", 24, "synthetic", "sim", True, None, 0.0)
    m = RunManifest("r", "vllm", 24, "synthetic", "sim", True, "glm4.6-8xh100", 10.0, time_scale=60.0)
    m.write(tmp_path / "manifest.json")
    assert RunManifest.read(tmp_path / "manifest.json") == m
    assert not (tmp_path / "manifest.json.tmp").exists()


def test_engine_samples_from_real_vllm_metrics(tmp_path):
    parsed = parse_vllm_metrics(open(SAMPLE).read())
    s = EngineSample.from_metrics(12.5, "http://e:8000", parsed)
    assert "vllm:request_success_total" in s.values and "vllm:prefix_cache_hits_total" in s.values
    assert set(s.values) <= {k for k in parsed}
    with JsonlWriter(tmp_path / "m.jsonl") as w:
        w.write_line(s.to_json())
    (back,) = read_engine_samples(tmp_path / "m.jsonl")
    assert back == s
    assert read_engine_samples(tmp_path / "none.jsonl") == []


def test_instance_events_roundtrip(tmp_path):
    ev = [InstanceEvent("start", "i", 0, "swe-x", 1.0), InstanceEvent("end", "i", 0, "swe-x", 2.0, 0, "ok", 5)]
    with JsonlWriter(tmp_path / "instances.jsonl") as w:
        for e in ev:
            w.write_line(e.to_json())
    assert read_instance_events(tmp_path / "instances.jsonl") == ev


def test_git_revision_is_dirty_for_source_changes_not_for_results(tmp_path):
    import subprocess

    from harness.records import git_revision

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "root")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "summary.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "files")
    head = git_revision(tmp_path)
    assert head and not head.endswith("-dirty")
    (tmp_path / "results" / "summary.json").write_text('{"rows": []}')  # an output rewritten in place
    assert git_revision(tmp_path) == head
    (tmp_path / "code.py").write_text("x = 2\n")  # the code that produces the numbers
    assert git_revision(tmp_path) == head + "-dirty"
