"""Recipes: one TOML file per experiment (model + engine flags + proxy + simulator profile + sweep).

A recipe is data. `load_recipe("glm4.6")` reads `harness/recipes/glm4.6.toml` (or any path ending in
.toml), validates it with pydantic (unknown keys are refused, types are strict: no "8" for 8, no true for 1;
ranges, choices and the window syntax are checked by the validators below) and returns a frozen `Recipe`.
Every problem is reported as a `RecipeError` whose message is one line naming the file, the field and the
fix, so the CLI can print it without a traceback.

The field meanings are documented next to each field in the TOML files themselves (glm4.6.toml is the
fully commented reference) and in the dataclasses below. A new knob is one line in its section: a typed
field with its default (and a validator when it has a range); nothing else needs to know about it.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool, StrictInt, StrictStr, ValidationError
from pydantic import AfterValidator, field_validator, model_validator
from pydantic.dataclasses import dataclass as spec

from harness.durations import DurationError, parse_duration, parse_window
from harness.errors import UserError

RECIPES_DIR = Path(__file__).resolve().parent

ENGINE_KINDS = ("vllm", "vllm-cpu")
ARMS = ("vllm", "thunderagent", "continuum", "bound",  # bound: des only (vLLM with the KV limit lifted)
        "vllm-offload", "thunderagent-offload")  # with vLLM's KV offloading to host memory ([engine].kv_offload_gib)
OFFLOAD_BACKENDS = ("native", "lmcache")
AGENTS = ("openhands", "mini-swe-agent", "synthetic")

# strict scalars: a TOML string is never read as a number, a boolean never as an integer; an integer is a
# valid float (TOML writes 60 and 60.0 alike)
Float = Annotated[float, Strict()]
Strs = tuple[StrictStr, ...]
PosInt = Annotated[int, Strict(), Field(ge=1)]


def _one_of(*choices: str) -> Any:
    """A string field that must be one of `choices` (the message names the value and the choices)."""
    def check(v: str) -> str:
        if v not in choices:
            raise ValueError(f"{v!r} must be one of {', '.join(choices)}")
        return v
    return Annotated[str, Strict(), AfterValidator(check)]

Port = Annotated[int, Strict(), Field(ge=1, le=65535)]

# every section: unknown keys are an error (a misspelt knob must not be silently ignored)
SECTION = ConfigDict(extra="forbid")


class RecipeError(UserError, ValueError):
    """A recipe cannot be used. The message is one line meant for the user."""


@spec(frozen=True, kw_only=True, config=SECTION)
class EngineSpec:
    """How to start the real engine (`vllm serve ...`). Flags map 1:1 onto vLLM's CLI flags."""

    kind: _one_of(*ENGINE_KINDS) = "vllm"  # "vllm" (GPU build) | "vllm-cpu" (CPU build in its own venv, tiny local model)
    model: StrictStr  # (required) HF id or local path passed to `vllm serve`
    served_model_name: StrictStr = ""  # --served-model-name ("" = the model id itself, as vLLM does)
    tensor_parallel_size: PosInt = 1  # --tensor-parallel-size
    kv_cache_dtype: StrictStr = "auto"  # --kv-cache-dtype ("auto" | "fp8" | ...)
    quantization: StrictStr = ""  # --quantization ("" = from the checkpoint)
    enable_prefix_caching: StrictBool = True  # --enable-prefix-caching (vLLM v1 default; stated explicitly)
    enable_prompt_tokens_details: StrictBool = True  # --enable-prompt-tokens-details (usage.cached_tokens)
    enable_auto_tool_choice: StrictBool = True  # --enable-auto-tool-choice
    tool_call_parser: StrictStr = ""  # --tool-call-parser ("" = none)
    max_model_len: StrictInt = 0  # --max-model-len (0 = the model's own)
    gpu_memory_utilization: Annotated[Float, Field(ge=0.0, le=1.0)] = 0.0  # --gpu-memory-utilization (0 = vLLM default 0.9)
    num_gpu_blocks_override: StrictInt = 0  # --num-gpu-blocks-override (0 = none; KV-pressure testing)
    max_num_seqs: StrictInt = 0  # --max-num-seqs (0 = vLLM default)
    host: StrictStr = "127.0.0.1"  # --host
    port: Port = 8100  # --port (upstream's reproduce scripts use 8100)
    extra_args: Strs = ()  # appended verbatim to the command line
    env: dict[StrictStr, StrictStr] = field(default_factory=dict)  # extra environment for the engine process
    health_timeout_s: Float = 1800.0  # upstream waits up to 1800 s for /health
    # the *-offload arms only: --kv-offloading-size (GiB of host memory over all TP ranks; 0 = no tier, the
    # arm is then the plain one) and --kv-offloading-backend
    kv_offload_gib: Annotated[Float, Field(ge=0.0)] = 0.0
    kv_offloading_backend: StrictStr = "native"

    @field_validator("kv_offloading_backend")
    @classmethod
    def _offload_backend(cls, v: str) -> str:
        if v not in OFFLOAD_BACKENDS:
            raise ValueError(f"must be one of {', '.join(OFFLOAD_BACKENDS)}")
        return v

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if not v:
            raise ValueError("is required (HF id or local path)")
        return v

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def served_name(self) -> str:
        return self.served_model_name or self.model


@spec(frozen=True, kw_only=True, config=SECTION)
class ProxySpec:
    """How to start ThunderAgent in front of the engine (arm "thunderagent")."""

    host: StrictStr = "127.0.0.1"
    port: Port = 8300  # ThunderAgent's --port
    router: StrictStr = "tr"  # --router: "tr" (program-aware) | "default" (pass-through)
    args: Strs = ()  # more ThunderAgent flags (any Config field), e.g. ["--acting-decay", "exp"]
    health_timeout_s: Float = 60.0

    @field_validator("router")
    @classmethod
    def _router(cls, v: str) -> str:
        if v not in ("tr", "default"):
            raise ValueError("must be 'tr' or 'default'")
        return v

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@spec(frozen=True, kw_only=True, config=SECTION)
class SimSpec:
    """The simulator stand-in for the engine (live-sim: HTTP server; des: in-process, virtual time)."""

    profile: StrictStr  # (required) harness/sim/profiles/<profile>.toml (hardware + model + timing)
    time_scale: Annotated[Float, Field(gt=0.0)] = 60.0  # live-sim: simulated seconds per wall second
    num_gpu_blocks: StrictInt = 0  # 0 = the profile's own KV capacity
    port: Port = 8100  # live-sim server port (it stands where vLLM would)
    health_timeout_s: Float = 60.0

    @field_validator("profile")
    @classmethod
    def _profile(cls, v: str) -> str:
        if not v:
            raise ValueError("is required (a harness/sim/profiles/*.toml name)")
        return v


@spec(frozen=True, kw_only=True, config=SECTION)
class WorkloadSpec:
    """What the agents do."""

    agent: _one_of(*AGENTS) = "openhands"  # "openhands" | "mini-swe-agent" | "synthetic" (the statistical model)
    dataset: StrictStr = "lite"  # "lite" = princeton-nlp/SWE-bench_Lite test, or a path to jsonl/parquet
    max_iterations: PosInt = 50  # agent step cap per instance (upstream: --max-iterations 50)
    params: StrictStr = ""  # synthetic trajectory model: "" = harness/workloads/<agent>.toml, or a TOML path
    # (relative to the recipe file) with the same structure

    def params_source(self, recipe_dir: Path) -> str:
        """What to pass to harness.workload.load_workload_params."""
        if self.params:
            p = Path(self.params)
            return str(p if p.is_absolute() else recipe_dir / p)
        return "openhands" if self.agent == "synthetic" else self.agent


@spec(frozen=True, kw_only=True, config=SECTION)
class SweepSpec:
    """The measurement: concurrency levels, arms, run length and the steps/min window."""

    levels: tuple[PosInt, ...] = (24, 48, 72, 96)  # parallel workflows (programs in flight)
    arms: Strs = ("vllm", "thunderagent")  # "continuum" runs only where the engine supports it
    duration: StrictStr = "80m"  # how long each point runs (must cover the window)
    window: StrictStr = "10m-70m"  # steps/min window, relative to the point's start
    seed: StrictInt = 0

    @field_validator("levels", mode="wrap")
    @classmethod
    def _levels(cls, v: Any, handler: Any) -> tuple[int, ...]:
        try:
            levels = handler(v)
        except ValidationError:
            levels = ()
        if not levels:
            raise ValueError("must be a non-empty list of positive integers")
        return levels

    @field_validator("arms")
    @classmethod
    def _arms(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for a in v:
            if a not in ARMS:
                raise ValueError(f"has unknown arm {a!r} (known: {', '.join(ARMS)})")
        return v

    @model_validator(mode="after")
    def _window_within_duration(self) -> "SweepSpec":
        try:
            _, w1 = parse_window(self.window)
            dur = parse_duration(self.duration)
        except DurationError as err:
            raise ValueError(f"{err}") from None
        if w1 > dur:
            raise ValueError(f".window {self.window} ends after duration {self.duration}")
        return self


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


class RecipeFile(BaseModel):
    """The whole file: top-level keys and one table per section (each validated by its spec above)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: StrictStr | None = None  # None = the file's stem
    description: StrictStr = ""
    engine: EngineSpec  # required: its model is
    proxy: ProxySpec = field(default_factory=ProxySpec)
    sim: SimSpec  # required: its profile is
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    sweep: SweepSpec = field(default_factory=SweepSpec)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v:
            raise ValueError("must be a non-empty string")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", v):  # it names the results/<name>/ directory
            raise ValueError(f"{v!r} must be letters, digits, '.', '_' or '-' (it names a results directory)")
        return v

    @model_validator(mode="after")
    def _across_sections(self) -> "RecipeFile":
        if self.proxy.port == self.engine.port:
            raise ValueError("[proxy].port and [engine].port must differ")
        return self


SECTIONS = ("engine", "proxy", "sim", "workload", "sweep")


def recipe_from_dict(data: dict[str, Any], path: Path) -> Recipe:
    where = path.name
    try:
        f = RecipeFile.model_validate(data)
    except ValidationError as e:
        raise RecipeError(f"recipe {where}: {_first_error(e)}") from None
    r = Recipe(name=f.name if f.name is not None else path.stem, description=f.description, path=path,
               engine=f.engine, proxy=f.proxy, sim=f.sim, workload=f.workload, sweep=f.sweep)
    if r.workload.params and not Path(r.workload.params_source(r.path.parent)).is_file():
        raise RecipeError(f"recipe {where}: [workload].params {r.workload.params!r} not found")
    return r


_REQUIRED_HINT = {"[engine]": " (its model: HF id or local path)", "[engine].model": " (HF id or local path)",
                  "[sim]": " (its profile: a harness/sim/profiles/*.toml name)",
                  "[sim].profile": " (a harness/sim/profiles/*.toml name)"}

# pydantic's error types -> the words a recipe author reads
_BOUND = {"greater_than_equal": ">= {ge}", "greater_than": "> {gt}", "less_than_equal": "<= {le}",
          "less_than": "< {lt}"}
_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true/false", "bool_parsing": "true/false", "string_type": "a string", "tuple_type": "a list",
    "list_type": "a list", "dict_type": "a table", "dataclass_type": "a table", "model_type": "a table",
    "dataclass_args_type": "a table",
}


def _first_error(e: ValidationError) -> str:
    """The first problem pydantic found, as `[section].field: what is wrong` (one line; the rest follow once
    that one is fixed). The field is named as the TOML file spells it."""
    err = e.errors(include_url=False)[0]
    loc = [str(x) for x in err["loc"]]
    kind, value = err["type"], err.get("input")
    section = f"[{loc[0]}]" if loc and loc[0] in SECTIONS else ""
    keys = loc[1:] if section else loc
    keys = [k for k in keys if not k.isdigit()]  # an index into a list: the field is what the author wrote
    where = section + "".join(f".{k}" for k in keys) if section else ".".join(keys)
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        parent, bad = (section, keys[-1]) if section else ("", keys[-1] if keys else "?")
        known = _known_fields(loc[0] if section else None)
        return f"{parent + ': ' if parent else ''}unknown field {bad!r} (known: {', '.join(known)})"
    if kind in ("missing", "missing_keyword_argument"):
        return f"{where} is required" + _REQUIRED_HINT.get(where, "")
    if kind == "value_error":
        msg = str(err.get("ctx", {}).get("error", err["msg"]))
        if not where:  # a check across sections writes its own field names
            return msg
        return f"{where}{'' if msg.startswith('.') else ' '}{msg}"
    if kind in _BOUND:
        return f"{where} must be {_BOUND[kind].format(**err['ctx'])}, got {value!r}"
    if kind in _EXPECTED:
        return f"{where}: expected {_EXPECTED[kind]}, got {value!r}"
    return f"{where}: {err['msg']}"


def _known_fields(section: str | None) -> list[str]:
    if section is None:
        return sorted(RecipeFile.model_fields)
    cls = {"engine": EngineSpec, "proxy": ProxySpec, "sim": SimSpec, "workload": WorkloadSpec, "sweep": SweepSpec}
    return sorted(f for f in cls[section].__dataclass_fields__)
