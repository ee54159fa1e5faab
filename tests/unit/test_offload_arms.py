"""The vllm-offload / thunderagent-offload arms: the recipe field, the real engine's command line (vLLM's
--kv-offloading-size / --kv-offloading-backend), the simulator's, and a DES sweep that runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.launch import vllm_engine
from harness.launch.sim import sim_command
from harness.launch.vllm import vllm_command
from harness.recipes import ARMS, RecipeError, load_recipe, recipe_from_dict

GLM_OFFLOAD = ("vllm serve zai-org/GLM-4.6-FP8 --tensor-parallel-size 8 --kv-cache-dtype fp8 --max-model-len 202752 "
               "--enable-prefix-caching --enable-prompt-tokens-details --enable-auto-tool-choice --tool-call-parser "
               "glm45 --kv-offloading-size 256 --kv-offloading-backend native --host 127.0.0.1 --port 8100")


@pytest.fixture(autouse=True)
def _cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("THUNDERBENCH_STATE_DIR", str(tmp_path / "state"))


def test_arms_and_recipe_field() -> None:
    assert {"vllm-offload", "thunderagent-offload"} <= set(ARMS)
    for name in ("glm4.6", "qwen3-235b"):
        e = load_recipe(name).engine
        assert e.kv_offload_gib == 256.0 and e.kv_offloading_backend == "native"
    assert load_recipe("tiny-cpu").engine.kv_offload_gib == 0.0  # the default: no tier


@pytest.mark.parametrize("engine,msg", [({"kv_offload_gib": -1}, "kv_offload_gib must be >= 0"),
                                        ({"kv_offloading_backend": "disk"}, "kv_offloading_backend must be one of"),
                                        ({"kv_offload_gib": "lots"}, "expected a number")])
def test_bad_offload_fields_are_one_line_errors(engine, msg) -> None:
    data = {"engine": {"model": "m", **engine}, "sim": {"profile": "glm4.6-8xh100"}}
    with pytest.raises(RecipeError, match=msg) as ei:
        recipe_from_dict(data, Path("x.toml"))
    assert "\n" not in str(ei.value)


def test_real_engine_command_line_carries_vllms_offloading_flags_only_for_the_offload_arms() -> None:
    r = load_recipe("glm4.6")
    on = vllm_command(vllm_engine(r, kv_offload_gib=256.0))
    assert on[on.index("--kv-offloading-size") + 1] == "256"
    assert on[on.index("--kv-offloading-backend") + 1] == "native"
    assert "--kv-offloading-size" not in vllm_command(vllm_engine(r))
    assert "--kv-offloading-size" not in vllm_command(vllm_engine(r, kv_offload_gib=0.0))  # 0 GiB = plain vLLM
    half = vllm_command(vllm_engine(r, kv_offload_gib=0.5))
    assert half[half.index("--kv-offloading-size") + 1] == "0.5"
    sim = sim_command(r, kv_offload_gib=1024.0)
    assert sim[sim.index("--kv-offloading-size") + 1] == "1024"


def test_up_dry_run_prints_the_offload_flags() -> None:
    res = CliRunner().invoke(app, ["up", "-r", "glm4.6", "--arm", "thunderagent-offload", "--dry-run",
                                   "--engine", "vllm"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert GLM_OFFLOAD in lines
    proxy = [ln for ln in lines if "-m ThunderAgent" in ln]
    assert len(proxy) == 1  # the proxy in front, as for thunderagent, told the host tier's size in tokens:
    assert proxy[0].endswith("--kv-offload-tokens 1458880")  # 91,180 blocks x 16 (GLM-4.6-FP8 TP8, 256 GiB)
    plain = CliRunner().invoke(app, ["up", "-r", "glm4.6", "--arm", "vllm", "--dry-run", "--engine", "vllm"])
    assert "--kv-offloading-size" not in plain.stdout


def test_reproduce_des_runs_the_offload_arms_with_the_cli_size(tmp_path) -> None:
    out = tmp_path / "sweep"
    args = ["reproduce", "glm4.6", "--engine", "des", "--levels", "4", "--arms", "vllm,vllm-offload",
            "--duration", "3m", "--window", "1m-3m", "--jobs", "1", "--kv-offload-gib", "64", "--out", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads((out / "manifest.json").read_text())["kv_offload_gib"] == 64.0
    m = json.loads((out / "vllm-offload-4" / "manifest.json").read_text())
    assert m["arm"] == "vllm-offload" and m["simulated"] is True
    assert m["extra"]["kv_offload_gib"] == 64.0 and "host_hit_rate" in m["extra"]
    series = (out / "vllm-offload-4" / "engine_metrics.jsonl").read_text()
    assert "vllm:kv_offload_load_bytes_total" in series
    assert "kv_offload" not in (out / "vllm-4" / "engine_metrics.jsonl").read_text()


def test_reproduce_rejects_a_negative_size() -> None:
    res = CliRunner().invoke(app, ["reproduce", "glm4.6", "--engine", "des", "--arms", "vllm-offload",
                                   "--kv-offload-gib", "-5"])
    assert res.exit_code != 0
    assert "--kv-offload-gib must be >= 0" in res.output and "Traceback" not in res.output
