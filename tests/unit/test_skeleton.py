import json
import subprocess
import sys

from typer.testing import CliRunner

from harness.cli import app
from ThunderAgent.records import JsonlWriter, StepRecord, read_step_records


def test_thunderbench_version():
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0
    assert r.output.startswith("thunderbench ")


def test_python_m_thunderagent_version():
    r = subprocess.run([sys.executable, "-m", "ThunderAgent", "--version"], capture_output=True, text=True)
    assert r.returncode == 0
    assert "thunderagent" in r.stdout


def test_step_records_roundtrip_and_partial_line(tmp_path):
    p = tmp_path / "steps.jsonl"
    with JsonlWriter(p) as w:
        w.write(StepRecord(program_id="a", step=1, arrival=1.0, start=1.5, end=2.0, prompt_tokens=10))
        w.write(StepRecord(program_id="a", step=2, arrival=3.0, start=3.0, end=4.0))
    with open(p, "a") as f:
        f.write(json.dumps({"program_id": "a", "step": 3})[:10])  # a killed writer's partial line
    recs = read_step_records(p)
    assert [r.step for r in recs] == [1, 2]
    assert recs[0].prompt_tokens == 10 and recs[0].pause_s == 0.0
