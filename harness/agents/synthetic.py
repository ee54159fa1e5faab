"""The synthetic agent: plays a sampled (or replayed) SWE-bench trajectory against an OpenAI-compatible
endpoint — raw vLLM, the simulator server, or ThunderAgent — exactly like an agent would, minus the tools.

Per instance: wait the environment-preparation time, then for each turn send the whole conversation so
far (shared system prompt, the instance's first user message, then assistant replies and observations),
ask for exactly the planned number of output tokens (`max_tokens` = `min_tokens` = n, `ignore_eos`, so
vLLM and the simulator generate that many), wait the sampled tool time, append an observation of the
planned size, repeat. One StepRecord per call goes to the sink; POST /programs/release runs in `finally`.

Message sizes: text is built from short common words (" the", " and", ...: about one token each with BPE
tokenizers and 4 characters each, i.e. ~1 token under a chars/4 estimate too). After each response the
agent compares the engine's `usage.prompt_tokens` with the plan and sizes the next observation so the
next prompt lands on the planned length (the chat template's per-message overhead is learnt the same way),
and learns the tokenizer's tokens-per-word ratio from the first calls (so a tokenizer that splits the filler
words, e.g. a tiny test model's, still gets prompts of the planned size after the first few programs).
Content is deterministic per program (seeded by program id), so re-sent prefixes are byte-identical
(prefix caching works as with a real agent) and no two programs share more than the system prompt.

`asyncio.sleep` stands in for tool execution and sandbox preparation; `time_scale` divides those waits
for accelerated runs against a simulator whose clock runs `time_scale` times faster.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import httpx
import numpy as np

from harness.agents.base import Endpoint, Instance, InstanceResult, StepSink, release_program
from harness.workload import Trajectory, WorkloadParams, sample_trajectory, trajectory_rng
from ThunderAgent.records import StepRecord

# 3-letter words: " xyz" is 4 characters and one token in common BPE vocabularies.
_WORDS = np.array((
    "the and for are but not you all any can had her was one our out day get has him his how man new now "
    "old see two way who boy did its let put say she too use act add age ago air art ask bad bag bed big "
    "bit box bus buy car cat cup cut dog dry eat egg end eye far fat few fit fix fly fun gas god got gun "
    "guy hat hit hot ice job key kid lab law lay leg lie lot low map mix mom net nor odd off oil own pay "
    "pen per pet pop raw red rid row run sad sat sea set sit six sky son sun tax tea ten tie tip top toy "
    "try war wet win yes yet"
).split())
SYSTEM_SEED = "thunderbench-shared-system-prompt"


def filler(n_tokens: int, seed: str) -> str:
    """About `n_tokens` tokens of deterministic text for `seed` (same seed, same text). Prefix-stable:
    filler(n, s) is a prefix of filler(m, s) for n < m, so the shared system prompt stays a shared prefix
    while the tokens-per-word estimate is still settling."""
    if n_tokens <= 0:
        return ""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha1(seed.encode()).digest()[:8], "big"))
    return " ".join(_WORDS[rng.integers(0, len(_WORDS), n_tokens)].tolist())


KEEPALIVE_EXPIRY_S = 2.0
# what a request sent on a connection the server has just closed fails with (the keep-alive race)
STALE_CONNECTION_ERRORS = (httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError)


@dataclass
class _Usage:
    prompt: int | None = None
    completion: int | None = None
    cached: int | None = None


class CallError(Exception):
    def __init__(self, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class SyntheticAgent:
    """Implements harness.agents.base.Agent. One shared httpx.AsyncClient for all programs."""

    name = "synthetic"

    def __init__(self, params: WorkloadParams | None = None, *, traces: Sequence[Trajectory] | None = None,
                 seed: int = 0, programs: int | None = None, time_scale: float = 1.0, stream: bool = True,
                 request_timeout_s: float = 3600.0, clock: Callable[[], float] = time.time,
                 client: httpx.AsyncClient | None = None, resample: bool = False) -> None:
        if params is None and not traces:
            raise ValueError("SyntheticAgent needs workload params or traces")
        if time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        self.params = params
        self.traces = list(traces or [])
        self._by_id = {t.instance_id: t for t in self.traces}
        self.seed = seed
        self.resample = resample  # traces are a pool: draw per (instance, round) from the seed's stream
        self.programs = programs
        self.time_scale = time_scale
        self.stream = stream
        self.clock = clock
        self._client = client
        self._own_client = client is None
        self._timeout = httpx.Timeout(request_timeout_s, connect=30.0)
        self._tpw = 1.0
        self._tpw_n = 0

    @property
    def tokens_per_word(self) -> float:
        """Tokens per filler word for the engine's tokenizer: 1.0 until the first responses tell (a
        running mean over the first 32 programs' first calls, then fixed so the shared system prompt stays
        byte-identical across programs)."""
        return self._tpw

    def _learn_tokens_per_word(self, observed: float) -> None:
        if self._tpw_n >= 32 or not 0.2 <= observed <= 8.0:
            return
        self._tpw_n += 1
        self._tpw += (observed - self._tpw) / self._tpw_n if self._tpw_n > 1 else observed - self._tpw

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            # pooled connections expire before the server's keep-alive timeout (uvicorn, which serves vLLM and
            # the proxy: 5 s, httpx's default expiry too), so the client rarely picks one the server is closing
            self._client = httpx.AsyncClient(timeout=self._timeout,
                                             limits=httpx.Limits(max_connections=None, max_keepalive_connections=None,
                                                                 keepalive_expiry=KEEPALIVE_EXPIRY_S))
        return self._client

    async def aclose(self) -> None:
        if self._client is not None and self._own_client:
            await self._client.aclose()
            self._client = None

    def trajectory_for(self, instance: Instance) -> Trajectory:
        """Replayed trace (by instance id, else deterministic pick), or a sample for (instance, round)."""
        iid = str(instance["instance_id"])
        rnd = int(instance.get("thunderbench_round", 0))
        if self.traces:
            if iid in self._by_id and rnd == 0 and not self.resample:
                return self._by_id[iid]
            if self.resample:
                t = self.traces[int(trajectory_rng(self.seed, iid, rnd).integers(len(self.traces)))]
            else:
                h = int.from_bytes(hashlib.sha1(f"{iid}:{rnd}".encode()).digest()[:4], "big")
                t = self.traces[h % len(self.traces)]
            return Trajectory(iid, t.system_tokens, t.first_user_tokens, t.prep_time_s, t.turns, t.censored)
        assert self.params is not None
        return sample_trajectory(self.params, iid, trajectory_rng(self.seed, iid, rnd), programs=self.programs)

    async def run_instance(self, instance: Instance, program_id: str, endpoint: Endpoint,
                           sink: StepSink) -> InstanceResult:
        traj = self.trajectory_for(instance)
        iid = traj.instance_id
        steps = 0
        try:
            if traj.prep_time_s > 0:
                await asyncio.sleep(traj.prep_time_s / self.time_scale)
            overhead = 4  # chat-template tokens per message (learnt below)
            tpw = self.tokens_per_word
            first_words = (max(1, round((traj.system_tokens - overhead) / tpw)),
                           max(1, round((traj.first_user_tokens - overhead) / tpw)))
            messages: list[dict[str, str]] = [
                {"role": "system", "content": filler(first_words[0], SYSTEM_SEED)},
                {"role": "user", "content": filler(first_words[1], f"{program_id}:user")},
            ]
            last: tuple[int, int] | None = None  # (tokens before the last 2 messages, words added)
            for k, turn in enumerate(traj.turns):
                rec, text, usage = await self._call(endpoint, program_id, iid, k + 1, messages,
                                                    turn.output_tokens)
                sink(rec)
                if k == 0 and usage.prompt is not None:
                    self._learn_tokens_per_word((usage.prompt - 2 * overhead) / sum(first_words))
                    tpw = self.tokens_per_word
                if last is not None and usage.prompt is not None:  # learn the per-message overhead
                    overhead = max(0, min(64, round((usage.prompt - last[0] - tpw * last[1]) / 2)))
                steps += 1
                if rec.status != "ok":
                    return InstanceResult(iid, program_id, "error", steps=steps, error=rec.error)
                if k + 1 == len(traj.turns):
                    break
                if turn.tool_time_s > 0:
                    await asyncio.sleep(turn.tool_time_s / self.time_scale)
                # size the observation so the next prompt hits the plan (usage tells us where we are)
                target = traj.prompt_tokens(k + 1)
                have = ((usage.prompt or 0) + (usage.completion or turn.output_tokens)) if usage.prompt else None
                tokens = (target - have - 2 * overhead) if have is not None else turn.observation_tokens
                words = max(1, round(tokens / tpw))
                messages.append({"role": "assistant",
                                 "content": text or filler(max(1, round(turn.output_tokens / tpw)), f"{program_id}:a{k}")})
                last = (have, words) if have is not None else None
                messages.append({"role": "user", "content": filler(words, f"{program_id}:o{k}")})
            return InstanceResult(iid, program_id, "ok", steps=steps,
                                  extra={"turns": len(traj.turns), "prep_time_s": traj.prep_time_s})
        except asyncio.CancelledError:
            raise
        except Exception as e:  # never raise for an agent-level failure: report it
            return InstanceResult(iid, program_id, "error", steps=steps, error=f"{type(e).__name__}: {e}")
        finally:
            await release_program(endpoint, program_id, self.client)

    async def _call(self, endpoint: Endpoint, program_id: str, instance_id: str, step: int,
                    messages: list[dict[str, str]], out_tokens: int) -> tuple[StepRecord, str, _Usage]:
        body: dict[str, Any] = {
            "model": endpoint.model, "messages": messages, "max_tokens": out_tokens, "min_tokens": out_tokens,
            "ignore_eos": True, "temperature": 0.0, "stream": self.stream,
        }
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        if endpoint.thunderagent:
            body["program_id"] = program_id
        rec = StepRecord(program_id=program_id, step=step, arrival=self.clock(), start=0.0, end=0.0,
                         instance_id=instance_id)
        rec.start = rec.arrival  # the client cannot see a proxy's pause; the proxy's own records can
        headers = {"Authorization": f"Bearer {endpoint.api_key}"}
        url = endpoint.base_url.rstrip("/") + "/chat/completions"
        usage, text = _Usage(), ""
        try:
            if self.stream:
                text = await self._stream(url, body, headers, rec, usage)
            else:
                r = await self._post(url, body, headers)
                rec.http_status = r.status_code
                if r.status_code != 200:
                    raise CallError(_error_text(r.text), r.status_code)
                data = r.json()
                _read_usage(data, usage)
                choices = data.get("choices") or [{}]
                text = (choices[0].get("message") or {}).get("content") or ""
            rec.status = "ok"
        except asyncio.CancelledError:
            rec.status, rec.error, rec.end = "cancelled", "cancelled", self.clock()
            _fill(rec, usage)
            raise
        except CallError as e:
            rec.status, rec.error, rec.http_status = "error", str(e), e.http_status
        except (httpx.HTTPError, ValueError, KeyError) as e:
            rec.status, rec.error = "error", f"{type(e).__name__}: {e}"
        rec.end = self.clock()
        _fill(rec, usage)
        return rec, text, usage

    async def _post(self, url: str, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
        """POST, sent once more if the first attempt failed at the connection (the keep-alive race: the server
        closed the pooled connection as the request went out, and the engine never saw it). httpx drops a
        connection that failed, so the second attempt takes another or a fresh one."""
        try:
            return await self.client.post(url, json=body, headers=headers)
        except STALE_CONNECTION_ERRORS:
            return await self.client.post(url, json=body, headers=headers)

    async def _stream(self, url: str, body: dict[str, Any], headers: dict[str, str], rec: StepRecord,
                      usage: _Usage) -> str:
        try:
            return await self._stream_once(url, body, headers, rec, usage)
        except STALE_CONNECTION_ERRORS:
            if rec.http_status is not None:  # the response had begun: not a stale connection, report it
                raise
            return await self._stream_once(url, body, headers, rec, usage)

    async def _stream_once(self, url: str, body: dict[str, Any], headers: dict[str, str], rec: StepRecord,
                           usage: _Usage) -> str:
        parts: list[str] = []
        async with self.client.stream("POST", url, json=body, headers=headers) as r:
            rec.http_status = r.status_code
            if r.status_code != 200:
                raise CallError(_error_text((await r.aread()).decode("utf-8", "replace")), r.status_code)
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if not payload or payload == "[DONE]":
                    continue
                event = json.loads(payload)
                if "error" in event and not event.get("choices"):
                    raise CallError(_error_text(payload), rec.http_status)
                for ch in event.get("choices") or []:
                    piece = (ch.get("delta") or {}).get("content")
                    if piece:
                        if rec.first_token is None:
                            rec.first_token = self.clock()
                        parts.append(piece)
                _read_usage(event, usage)
        return "".join(parts)


def _read_usage(obj: dict[str, Any], usage: _Usage) -> None:
    u = obj.get("usage")
    if not isinstance(u, dict):
        return
    if u.get("prompt_tokens") is not None:
        usage.prompt = int(u["prompt_tokens"])
    if u.get("completion_tokens") is not None:
        usage.completion = int(u["completion_tokens"])
    details = u.get("prompt_tokens_details")
    if isinstance(details, dict) and details.get("cached_tokens") is not None:
        usage.cached = int(details["cached_tokens"])


def _fill(rec: StepRecord, usage: _Usage) -> None:
    rec.prompt_tokens, rec.completion_tokens, rec.cached_tokens = usage.prompt, usage.completion, usage.cached


def _error_text(body: str) -> str:
    try:
        data = json.loads(body)
        err = data.get("error", data)
        msg = err.get("message") if isinstance(err, dict) else err
        return str(msg or body)[:500]
    except (ValueError, AttributeError):
        return body[:500]
