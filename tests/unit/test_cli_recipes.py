"""Recipe loading and the mapping onto the launch layer."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from harness.durations import DurationError, parse_duration
from harness.launch import vllm_engine
from harness.launch.proxy import proxy_command
from harness.launch.sim import sim_command
from harness.recipes import (RECIPES_DIR, EngineSpec, ProxySpec, RecipeError, SimSpec, SweepSpec, WorkloadSpec,
                             list_recipes, load_recipe, parse_levels, recipe_from_dict)


def test_bundled_recipes():
    assert list_recipes() == ["glm4.6", "qwen3-235b", "tiny-cpu"]
    for name in list_recipes():
        r = load_recipe(name)
        assert r.name == name and r.description
        assert r.window_s[1] <= r.duration_s


def test_reference_recipe_documents_every_field():
    """glm4.6.toml is the commented reference: every field is set there, under a comment."""
    lines = (RECIPES_DIR / "glm4.6.toml").read_text().splitlines()
    for cls in (EngineSpec, ProxySpec, SimSpec, WorkloadSpec, SweepSpec):
        for f in dataclasses.fields(cls):
            at = [i for i, ln in enumerate(lines) if ln.startswith(f"{f.name} = ")]
            assert at, f"{cls.__name__}.{f.name} missing from glm4.6.toml"
            above = [ln for ln in lines[max(0, at[0] - 6):at[0]] if ln.startswith("#")]
            assert above, f"{f.name} has no comment above it"


def test_paper_settings():
    glm, qwen = load_recipe("glm4.6"), load_recipe("qwen3-235b")
    assert (glm.engine.model, glm.engine.tensor_parallel_size, glm.engine.kv_cache_dtype,
            glm.engine.tool_call_parser) == ("zai-org/GLM-4.6-FP8", 8, "fp8", "glm45")
    assert (qwen.engine.model, qwen.engine.quantization, qwen.engine.tool_call_parser) == (
        "Qwen/Qwen3-235B-A22B-Instruct-2507", "fp8", "hermes")
    for r in (glm, qwen):
        assert r.sweep.levels == (24, 48, 72, 96) and r.sweep.window == "10m-70m"
        assert r.workload.max_iterations == 50 and r.engine.port == 8100
        assert r.engine.enable_prefix_caching and r.engine.enable_prompt_tokens_details
    assert glm.sim.profile == "glm4.6-8xh100" and qwen.sim.profile == "qwen3-235b-8xh100"


def test_tiny_cpu_maps_onto_vllm_cpu():
    r = load_recipe("tiny-cpu")
    e = vllm_engine(r)
    assert (e.device, e.model, e.served_model_name, e.num_gpu_blocks_override, e.max_model_len) == (
        "cpu", "tiny", "tiny", 24, 2048)
    assert Path(r.workload.params_source(r.path.parent)).is_file()


def test_sim_and_proxy_command_lines():
    r = load_recipe("glm4.6")
    sim = sim_command(r, port=9001, time_scale=30)
    assert sim[1:] == ["-m", "harness.cli", "sim", "serve", "--profile", "glm4.6-8xh100", "--host", "127.0.0.1",
                       "--port", "9001", "--time-scale", "30", "--served-model-name", "zai-org/GLM-4.6-FP8"]
    px = proxy_command(r, "http://127.0.0.1:9001", port=9002, profile_dir="/x")
    assert px[1:] == ["-m", "ThunderAgent", "--backends", "http://127.0.0.1:9001", "--host", "127.0.0.1",
                      "--port", "9002", "--router", "tr", "--metrics", "--profile", "--profile-dir", "/x"]


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("80m", 4800), ("1.5h", 5400), ("600", 600), (30, 30)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "m", "10 minutes", "-5m"])
def test_parse_duration_bad(bad):
    with pytest.raises(DurationError):
        parse_duration(bad)


def test_parse_levels():
    assert parse_levels("24, 48,96") == (24, 48, 96)
    with pytest.raises(RecipeError, match="bad levels"):
        parse_levels("24;48")


@pytest.mark.parametrize("data, needle", [
    ({"engine": {"model": "m", "tensor_parallel_size": "8"}}, "[engine].tensor_parallel_size: expected an integer, got '8'"),
    ({"engine": {"model": "m", "max_num_seqs": True}}, "[engine].max_num_seqs: expected an integer, got True"),
    ({"engine": {"model": "m", "enable_prefix_caching": 1}}, "[engine].enable_prefix_caching: expected true/false"),
    ({"engine": {"model": "m", "env": {"A": 1}}}, "[engine].env.A: expected a string, got 1"),
    ({"engine": {"model": "m", "extra_args": "--x"}}, "[engine].extra_args: expected a list"),
    ({"engine": {"model": "m"}, "proxy": {"portt": 1}}, "[proxy]: unknown field 'portt' (known: args, health_timeout_s, host"),
    ({"engine": {"model": "m"}, "simm": {}}, "unknown field 'simm' (known: description, engine, name"),
    ({"engine": {"model": "m"}, "sim": {"profile": "p", "port": 0}}, "[sim].port must be >= 1, got 0"),
    ({"engine": {"model": "m"}, "sim": {"profile": "p", "time_scale": 0}}, "[sim].time_scale must be > 0"),
    ({"sim": {"profile": "p"}}, "[engine] is required"),
    ({"engine": {"kind": "vllm"}, "sim": {"profile": "p"}}, "[engine].model is required"),
    ({"engine": {"model": "m"}, "sim": {"profile": "p"}, "workload": {"max_iterations": 0}},
     "[workload].max_iterations must be >= 1, got 0"),
])
def test_recipe_schema_errors_are_one_line_naming_file_and_field(data, needle):
    data.setdefault("sim", {"profile": "p"})
    with pytest.raises(RecipeError) as e:
        recipe_from_dict(data, Path("some/dir/r.toml"))
    msg = str(e.value)
    assert msg.startswith("recipe r.toml: ") and needle in msg and "\n" not in msg, msg


def test_recipe_defaults_fill_missing_sections():
    r = recipe_from_dict({"engine": {"model": "m"}, "sim": {"profile": "p", "time_scale": 2}}, Path("x/mine.toml"))
    assert r.name == "mine" and r.proxy == ProxySpec() and r.sweep == SweepSpec() and r.workload == WorkloadSpec()
    assert r.sim.time_scale == 2.0 and isinstance(r.sim.time_scale, float) and r.engine.extra_args == ()
