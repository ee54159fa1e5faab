"""What a SWE-bench agent trajectory asks of the engine: the data types shared by the workload model,
the synthetic agent, trace replay and the discrete-event simulator.

A program's call k (0-based) sends the prompt
    system_tokens + first_user_tokens + sum_{j<k} (turns[j].output_tokens + turns[j].observation_tokens)
and generates turns[k].output_tokens; then the agent runs tools for turns[k].tool_time_s and appends
turns[k].observation_tokens before call k+1. The last turn's tool time/observation are not used.
All programs of a workload share the same system prompt (+ tool schemas) prefix of `system_tokens`.

The rest of the module is the statistical model that produces such trajectories for OpenHands and
mini-swe-agent on SWE-bench Lite (parameters as data in harness/workloads/<agent>.toml, each with its
source), deterministic for a seed. Recorded trajectories are read by harness.traces (`load_traces`),
which builds on these types (so this module does not import it).

One module of ~530 lines on purpose: the types, the parameter file's schema and ranges, and the sampler
change together (a new parameter touches all three).
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Iterable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, Strict, StrictStr, ValidationError, model_validator

from harness.errors import UserError


@dataclass(frozen=True, slots=True)
class Turn:
    output_tokens: int
    observation_tokens: int
    tool_time_s: float
    tool: str = ""  # the tool the call asked for ("" when unknown or none); traces only


@dataclass(frozen=True, slots=True)
class Trajectory:
    instance_id: str
    system_tokens: int  # shared prefix: system prompt + tool schemas (identical across programs)
    first_user_tokens: int  # the instance's first user message (issue text), unique per instance
    prep_time_s: float  # environment preparation before the first call
    turns: tuple[Turn, ...]
    censored: bool = False  # the agent's step cap ended it: its turn count is a lower bound (traces)

    def prompt_tokens(self, k: int) -> int:
        """Prompt length of call k (0-based)."""
        n = self.system_tokens + self.first_user_tokens
        for t in self.turns[:k]:
            n += t.output_tokens + t.observation_tokens
        return n


# --------------------------------------------------------------------------------------------------
# The statistical model (parameters as data: harness/workloads/<agent>.toml)
# --------------------------------------------------------------------------------------------------

WORKLOADS_DIR = Path(__file__).parent / "workloads"


class WorkloadError(UserError, ValueError):
    """A workload file or trace is missing or malformed (the message names the file and the fix)."""


@dataclass(frozen=True, slots=True)
class LogNormal:
    """A lognormal given by its median and log-sigma, clipped to [min, max].

    Medians are what published tables quote and what a reader can sanity-check; the clipped mean is
    computed in closed form so tests can compare sampled means with the parameters exactly."""

    median: float
    sigma: float
    min: float = 0.0
    max: float = math.inf

    def sample(self, rng: np.random.Generator, size: int | None = None) -> Any:
        x = rng.lognormal(math.log(self.median), self.sigma, size)
        return np.clip(x, self.min, self.max)

    def mean(self) -> float:
        """E[clip(X, min, max)] for X ~ LogNormal(ln median, sigma)."""
        mu, s = math.log(self.median), self.sigma
        if s == 0:
            return float(min(max(self.median, self.min), self.max))

        def phi(z: float) -> float:
            return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))

        def z(x: float) -> float:
            if x <= 0:
                return -math.inf
            return (math.log(x) - mu) / s if math.isfinite(x) else math.inf

        za, zb = z(self.min), z(self.max)
        below = phi(za) if math.isfinite(za) else 0.0
        above = 1.0 - phi(zb) if math.isfinite(zb) else 0.0
        inner = math.exp(mu + s * s / 2) * ((phi(zb - s) if math.isfinite(zb) else 1.0)
                                            - (phi(za - s) if math.isfinite(za) else 0.0))
        return inner + (self.min * below if below else 0.0) + (self.max * above if above else 0.0)


@dataclass(frozen=True, slots=True)
class ToolTime:
    """Tool execution time: a two-component lognormal mixture (quick edits/reads vs commands such as
    test runs), capped at the agent's command timeout. Mostly short, with a heavy tail."""

    short: LogNormal
    long: LogNormal
    long_probability: float
    max: float

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        is_long = rng.random(size) < self.long_probability
        x = np.where(is_long, self.long.sample(rng, size), self.short.sample(rng, size))
        return np.minimum(x, self.max)

    def mean(self) -> float:
        p = self.long_probability
        s = LogNormal(self.short.median, self.short.sigma, 0.0, self.max)
        lo = LogNormal(self.long.median, self.long.sigma, 0.0, self.max)
        return (1 - p) * s.mean() + p * lo.mean()


@dataclass(frozen=True, slots=True)
class PrepTime:
    """Environment preparation time before the first LLM call. Its mean grows with the number of
    parallel workflows (sandboxes compete for the Docker host): piecewise-linear in `programs`,
    clamped outside the measured points; lognormal spread `sigma` around that mean."""

    programs: tuple[int, ...]
    mean_s: tuple[float, ...]
    sigma: float

    def mean_at(self, programs: int | None) -> float:
        if programs is None:
            return float(self.mean_s[0])
        return float(np.interp(programs, self.programs, self.mean_s))

    def sample(self, rng: np.random.Generator, programs: int | None) -> float:
        m = self.mean_at(programs)
        if self.sigma == 0 or m == 0:
            return m
        # lognormal with the given MEAN: median = mean * exp(-sigma^2/2)
        return float(rng.lognormal(math.log(m) - self.sigma**2 / 2, self.sigma))


@dataclass(frozen=True, slots=True)
class WorkloadParams:
    """Everything the model needs to sample one agent trajectory (see harness/workloads/*.toml)."""

    name: str
    description: str
    system_tokens: int
    first_user_template_tokens: int
    issue_tokens: LogNormal
    turns: LogNormal  # number of LLM calls; max = the agent's step cap
    output_tokens: LogNormal
    observation_tokens: LogNormal
    tool_time: ToolTime
    prep_time: PrepTime
    sources: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    ranges: tuple["ParamRange", ...] = field(default=(), compare=False, hash=False)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)
    origin: str = field(default="<dict>", compare=False, hash=False)

    @property
    def step_cap(self) -> int:
        return int(self.turns.max)

    def scaled(self, **changes: Any) -> "WorkloadParams":
        """A copy with some fields replaced (e.g. a shorter step cap for a smoke run)."""
        return replace(self, **changes)

    def at(self, position: dict[str, float]) -> "WorkloadParams":
        """The parameters with some ranged inputs moved inside their ranges: `position` maps a range's
        path (e.g. "turns", "first_user.issue") to u in [0, 1], 0 = its low end, 0.5 = the central
        value, 1 = its high end (piecewise linear in between). Inputs not named stay central."""
        by_path = {r.path: r for r in self.ranges}
        data = _deepcopy(self.raw)
        for path, u in position.items():
            if path not in by_path:
                raise WorkloadError(f"{self.origin}: no range for {path!r} (ranged: "
                                    f"{', '.join(by_path) or 'none'})")
            if not 0.0 <= float(u) <= 1.0:
                raise WorkloadError(f"{self.origin}: position of {path!r} must be in [0, 1], got {u}")
            table = _table_at(data, path)
            _move(table, by_path[path].low, by_path[path].high, float(u))
        return _parse(data, self.origin, check_ranges=False)


@dataclass(frozen=True, slots=True)
class ParamRange:
    """The low and high end of one workload input (a table of the TOML file) with the reason for each.
    `low`/`high` hold the fields they change (nested for [tool_time]); the table's own values are central."""

    path: str
    low: dict[str, Any]
    high: dict[str, Any]
    reason_low: str
    reason_high: str


# Range keys a table may carry besides its central values: `low`/`high` (a table of the fields they change,
# or a bare number for the table's main field), and the reasons (`reason_low` + `reason_high`, or one
# `range_source` for both).
RANGE_KEYS = ("low", "high", "reason_low", "reason_high", "range_source")
_MAIN_FIELD = {"system": "tokens", "first_user": "template_tokens", "first_user.issue": "median", "turns": "median",
               "output_tokens": "median", "observation_tokens": "median", "tool_time": "long_probability"}


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def _table_at(data: dict[str, Any], path: str) -> dict[str, Any]:
    t: Any = data
    for part in path.split("."):
        t = t[part]
    return t


def _lerp(central: Any, lo: Any, hi: Any, u: float) -> Any:
    """central at u = 0.5, lo at 0, hi at 1; integers stay integers (token counts)."""
    v = central + (lo - central) * (1 - 2 * u) if u < 0.5 else central + (hi - central) * (2 * u - 1)
    return int(round(v)) if isinstance(central, int) and not isinstance(central, bool) else float(v)


def _move(table: dict[str, Any], low: dict[str, Any], high: dict[str, Any], u: float) -> None:
    for key in set(low) | set(high):
        c = table[key]
        if isinstance(c, dict):
            _move(c, low.get(key, {}), high.get(key, {}), u)
        else:
            table[key] = _lerp(c, low.get(key, c), high.get(key, c), u)


def _check_override(central: dict[str, Any], over: dict[str, Any], where: str) -> None:
    for key, v in over.items():
        if key not in central or key in RANGE_KEYS or key.startswith("source"):
            raise WorkloadError(f"{where}: unknown field {key!r} (it must be one of the table's own values)")
        if isinstance(central[key], dict):
            if not isinstance(v, dict):
                raise WorkloadError(f"{where}.{key}: must be a table like the central one")
            _check_override(central[key], v, f"{where}.{key}")
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or isinstance(central[key], bool) \
                or not isinstance(central[key], (int, float)):
            raise WorkloadError(f"{where}.{key}: must be a number, like the central value")


def _collect_ranges(data: dict[str, Any], origin: str) -> tuple[ParamRange, ...]:
    """Find the tables that carry low/high, check them, and strip the range keys from `data` in place."""
    found: list[ParamRange] = []

    def visit(table: dict[str, Any], path: str) -> None:
        for key, v in list(table.items()):
            if isinstance(v, dict) and key not in ("low", "high"):
                visit(v, f"{path}.{key}" if path else key)
        if not path or not any(k in table for k in RANGE_KEYS):
            return
        where = f"{origin} [{path}]"
        low, high = table.pop("low", None), table.pop("high", None)
        reason_low, reason_high = table.pop("reason_low", None), table.pop("reason_high", None)
        both = table.pop("range_source", None)
        if low is None and high is None:
            raise WorkloadError(f"{where}: range reasons without a low or high value")
        ends = []
        for name, end in (("low", low), ("high", high)):
            if end is None:
                end = {}
            elif not isinstance(end, dict):
                main = _MAIN_FIELD.get(path)
                if main is None:
                    raise WorkloadError(f"{where}.{name}: give a table of the fields it changes, e.g. "
                                        f"{name} = {{ median = ... }}")
                end = {main: end}
            _check_override(table, end, f"{where}.{name}")
            ends.append(end)
        rl, rh = reason_low or both, reason_high or both
        if (low is not None and not rl) or (high is not None and not rh):
            raise WorkloadError(f"{where}: a range needs its reason: reason_low and reason_high, or range_source")
        found.append(ParamRange(path, ends[0], ends[1], str(rl or ""), str(rh or "")))

    visit(data, "")
    return tuple(found)


def parse_workload_params(data: dict[str, Any], origin: str = "<dict>") -> WorkloadParams:
    """Build WorkloadParams from the parsed TOML structure (see harness/workloads/openhands.toml). Any table
    may carry a range (`low`/`high` with reasons); the central values are what a plain run uses, and both
    ends of every range are checked here, so a bad range is reported when the file is loaded."""
    return _parse(data, origin, check_ranges=True)


def _parse(data: dict[str, Any], origin: str, check_ranges: bool) -> WorkloadParams:
    data = _deepcopy(data)
    ranges = _collect_ranges(data, origin) if check_ranges else ()
    params = _parse_central(data, origin)
    params = replace(params, ranges=ranges, raw=data, origin=origin)
    if check_ranges:
        for r in ranges:
            for end, u in (("low", 0.0), ("high", 1.0)):
                try:
                    params.at({r.path: u})
                except WorkloadError as e:
                    raise WorkloadError(f"{origin} [{r.path}].{end}: {str(e).removeprefix(origin + ': ')}") from None
    return params


# --- the file's schema (pydantic): unknown keys are refused, numbers are numbers (no "280" for 280) ----------

_Float = Annotated[float, Strict()]
_Count = Annotated[int, Strict(), Field(ge=0)]


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _LogNormalTable(_Table):
    median: Annotated[_Float, Field(gt=0)]
    sigma: Annotated[_Float, Field(ge=0)]
    min: _Float = 0.0
    max: _Float = math.inf

    def build(self) -> LogNormal:
        return LogNormal(float(self.median), float(self.sigma), float(self.min), float(self.max))


class _SystemTable(_Table):
    tokens: _Count


class _FirstUserTable(_Table):
    template_tokens: _Count = 0
    issue: _LogNormalTable


class _ToolTimeTable(_Table):
    short: _LogNormalTable
    long: _LogNormalTable
    long_probability: _Float
    max: _Float


class _PrepTimeTable(_Table):
    programs: tuple[Annotated[int, Strict(), Field(ge=1)], ...]
    mean_s: tuple[Annotated[_Float, Field(ge=0)], ...]
    sigma: Annotated[_Float, Field(ge=0)] = 0.0


class _WorkloadFile(_Table):
    """harness/workloads/<agent>.toml once its range keys and `source*` notes are taken out."""

    name: StrictStr
    description: StrictStr = ""
    system: _SystemTable
    first_user: _FirstUserTable
    turns: _LogNormalTable
    output_tokens: _LogNormalTable
    observation_tokens: _LogNormalTable
    tool_time: _ToolTimeTable
    prep_time: _PrepTimeTable

    @model_validator(mode="after")
    def _consistent(self) -> "_WorkloadFile":
        if self.turns.min < 1 or self.turns.max < self.turns.min:
            raise ValueError("[turns] needs 1 <= min <= max")
        if not 0.0 <= self.tool_time.long_probability <= 1.0:
            raise ValueError("[tool_time].long_probability must be in [0, 1]")
        if len(self.prep_time.programs) != len(self.prep_time.mean_s) or not self.prep_time.programs:
            raise ValueError("[prep_time] programs and mean_s need the same, non-zero length")
        return self


def _without_sources(d: Any) -> Any:
    """The tables without their `source*` notes (evidence for the reader, collected into `sources`)."""
    if isinstance(d, dict):
        return {k: _without_sources(v) for k, v in d.items() if not (isinstance(k, str) and k.startswith("source"))}
    return d


_EXPECTED = {"int_type": "an integer", "float_type": "a number", "string_type": "a string", "tuple_type": "a list",
             "model_type": "a table"}
_BOUND = {"greater_than_equal": ">= {ge}", "greater_than": "> {gt}"}


def _schema_error(e: ValidationError, origin: str) -> WorkloadError:
    """The first problem as one line: `<file>: [table].key: what is wrong`."""
    err = e.errors(include_url=False)[0]
    loc = [str(x) for x in err["loc"] if not isinstance(x, int)]
    kind, value = err["type"], err.get("input")
    top_key = len(loc) == 1 and loc[0] in ("name", "description")
    where = ".".join(loc) if top_key else f"[{loc[0]}]" + "".join(f".{k}" for k in loc[1:]) if loc else ""
    if kind == "missing":
        return WorkloadError(f"{origin}: missing key {where}")
    if kind == "extra_forbidden":
        table = f"[{loc[0]}]" + "".join(f".{k}" for k in loc[1:-1]) if len(loc) > 1 else "the top level"
        model: Any = _WorkloadFile
        for k in loc[:-1]:
            model = model.model_fields[k].annotation
        known = [*model.model_fields, *(RANGE_KEYS if len(loc) > 1 else ()), "source..."]
        return WorkloadError(f"{origin}: unknown key {loc[-1]!r} in {table} (known: {', '.join(known)})")
    if kind == "value_error":
        return WorkloadError(f"{origin}: {err.get('ctx', {}).get('error', err['msg'])}")
    if kind in _BOUND:
        return WorkloadError(f"{origin}: {where} must be {_BOUND[kind].format(**err['ctx'])}, got {value!r}")
    if kind in _EXPECTED:
        return WorkloadError(f"{origin}: bad value: {where}: expected {_EXPECTED[kind]}, got {value!r}")
    return WorkloadError(f"{origin}: bad value: {where}: {err['msg']}")


def _parse_central(data: dict[str, Any], origin: str) -> WorkloadParams:
    try:
        f = _WorkloadFile.model_validate(_without_sources(data))
    except ValidationError as e:
        raise _schema_error(e, origin) from None
    pt = f.prep_time
    return WorkloadParams(
        name=f.name,
        description=f.description,
        system_tokens=f.system.tokens,
        first_user_template_tokens=f.first_user.template_tokens,
        issue_tokens=f.first_user.issue.build(),
        turns=f.turns.build(),
        output_tokens=f.output_tokens.build(),
        observation_tokens=f.observation_tokens.build(),
        tool_time=ToolTime(f.tool_time.short.build(), f.tool_time.long.build(), float(f.tool_time.long_probability),
                           float(f.tool_time.max)),
        prep_time=PrepTime(tuple(pt.programs), tuple(float(x) for x in pt.mean_s), float(pt.sigma)),
        sources={k: str(v[key]) for k, v in data.items() if isinstance(v, dict)
                 for key in v if key.startswith("source")},
    )


def available_workloads() -> list[str]:
    return sorted(p.stem for p in WORKLOADS_DIR.glob("*.toml"))


def load_workload_params(agent: str) -> WorkloadParams:
    """The parameters for `agent` ("openhands", "miniswe", aliases "mini-swe-agent"/"mini") or a path
    to a TOML file with the same structure."""
    aliases = {"mini-swe-agent": "miniswe", "mini": "miniswe", "mini_swe_agent": "miniswe",
               "openhands-sdk": "openhands", "codeact": "openhands"}
    path = Path(agent)
    if not (path.suffix == ".toml" and path.exists()):
        path = WORKLOADS_DIR / f"{aliases.get(agent, agent)}.toml"
    if not path.exists():
        raise WorkloadError(f"unknown workload {agent!r}: choose one of {', '.join(available_workloads())} "
                            f"or pass a path to a .toml file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise WorkloadError(f"{path}: invalid TOML: {e}") from None
    return parse_workload_params(data, str(path))


def context_stats(params: WorkloadParams, samples: int = 2000, seed: int = 0) -> dict[str, float]:
    """What the KV cache has to hold per program, from trajectories sampled with `params`:
    the mean context of an LLM call (prompt + output, averaged over calls: a program's KV is resident
    while it runs and pinned or cached while its tool runs), the part of it that is not the shared prefix,
    and the deepest context. Programs x mean non-shared context + one shared prefix ~ KV tokens is where
    vLLM starts evicting the contexts of programs that are still working."""
    ts = sample_trajectories(params, [f"ctx{i}" for i in range(samples)], seed)
    ctx = np.concatenate([[t.prompt_tokens(k) + t.turns[k].output_tokens for k in range(len(t.turns))] for t in ts])
    deepest = np.array([t.prompt_tokens(len(t.turns) - 1) + t.turns[-1].output_tokens for t in ts])
    return {"mean_context": float(ctx.mean()), "mean_nonshared_context": float(ctx.mean() - params.system_tokens),
            "shared_prefix": float(params.system_tokens), "deepest_p50": float(np.median(deepest)),
            "turns_mean": float(np.mean([len(t.turns) for t in ts]))}


def kv_limited_programs(params: WorkloadParams, kv_tokens: int, samples: int = 2000, seed: int = 0) -> float:
    """Programs whose mean contexts fill `kv_tokens` (one shared prefix, the rest per program): where vLLM's
    curve is expected to break (the knee), before scheduling effects."""
    st = context_stats(params, samples, seed)
    return max(0.0, (kv_tokens - st["shared_prefix"]) / st["mean_nonshared_context"])


def trajectory_rng(seed: int, instance_id: str, attempt: int = 0) -> np.random.Generator:
    """The random stream for one (instance, attempt): independent of the order instances are drawn in,
    so a resumed or reordered run samples the same trajectory for the same instance."""
    digest = int.from_bytes(hashlib.sha1(f"{instance_id}:{attempt}".encode()).digest()[:8], "big")
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, digest]))


def sample_trajectory(params: WorkloadParams, instance_id: str, rng: np.random.Generator, *,
                      programs: int | None = None) -> Trajectory:
    """Sample one trajectory. `programs` (parallel workflows) sets the environment-preparation mean
    (ThunderAgent Fig. 2c grows with parallelism); None uses the lowest measured point."""
    n = int(round(float(params.turns.sample(rng))))
    n = max(int(params.turns.min), min(int(params.turns.max), n))
    issue = int(round(float(params.issue_tokens.sample(rng))))
    outs = np.rint(params.output_tokens.sample(rng, n)).astype(int)
    obs = np.rint(params.observation_tokens.sample(rng, n)).astype(int)
    tools = params.tool_time.sample(rng, n)
    prep = params.prep_time.sample(rng, programs)
    turns = tuple(Turn(int(o), int(b), float(t)) for o, b, t in zip(outs, obs, tools))
    return Trajectory(instance_id=instance_id, system_tokens=params.system_tokens,
                      first_user_tokens=params.first_user_template_tokens + issue,
                      prep_time_s=prep, turns=turns)


def sample_trajectories(params: WorkloadParams, instance_ids: Iterable[str], seed: int, *,
                        programs: int | None = None, attempt: int = 0) -> list[Trajectory]:
    """One trajectory per instance id, each from its own stream (`trajectory_rng(seed, id, attempt)`)."""
    return [sample_trajectory(params, iid, trajectory_rng(seed, iid, attempt), programs=programs)
            for iid in instance_ids]


def describe(trajectories: Iterable[Trajectory]) -> dict[str, float]:
    """Summary statistics of a set of trajectories (what the TOML sources are compared against)."""
    ts = list(trajectories)
    if not ts:
        return {}
    turns = np.array([len(t.turns) for t in ts])
    deepest = np.array([t.prompt_tokens(len(t.turns) - 1) for t in ts])
    outs = np.concatenate([[x.output_tokens for x in t.turns] for t in ts])
    obs = np.concatenate([[x.observation_tokens for x in t.turns] for t in ts])
    tools = np.concatenate([[x.tool_time_s for x in t.turns] for t in ts])
    return {
        "trajectories": float(len(ts)), "turns_mean": float(turns.mean()), "turns_p50": float(np.median(turns)),
        "deepest_prompt_p50": float(np.median(deepest)), "deepest_prompt_p95": float(np.percentile(deepest, 95)),
        "output_tokens_mean": float(outs.mean()), "observation_tokens_mean": float(obs.mean()),
        "tool_time_mean_s": float(tools.mean()), "tool_time_p50_s": float(np.median(tools)),
        "tool_time_p99_s": float(np.percentile(tools, 99)),
        "prep_time_mean_s": float(np.mean([t.prep_time_s for t in ts])),
    }
