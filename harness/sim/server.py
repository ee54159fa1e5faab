"""The simulator as an HTTP server that speaks vLLM's OpenAI-compatible API and its /metrics.

    thunderbench sim serve --profile tiny-cpu --port 8100 [--time-scale 20] [--num-gpu-blocks 24]

(`python -m harness.entry sim serve ARGS` in a subprocess.)

One asyncio task runs the engine model (harness/sim/engine/) on an accelerated clock: virtual time =
wall time since start x time_scale. The engine keeps its own clock (harness/sim/liveclock.py): a request joins
when engine time reaches its arrival, each step starts where the previous one ended, the loop sleeps until the
step is due and then delivers its first tokens and finished requests; late wake-ups delay deliveries but never
stretch the engine, so live mode computes the discrete-event mode's timeline. Responses are timed by the engine
model, never by per-token sleeps.

Tokens (harness/sim/tokenizer.py): where the profile names a tokenizer (`tokenizer = "tiny"` or a model
directory) messages are rendered with that model's chat template and encoded by its tokenizer, as vLLM does, so
prompt_tokens equal the real engine's. Otherwise, or when the directory is missing, a deterministic regex
estimator counts them (a word with its leading space, a run of punctuation, or whitespace = one token, over a
ChatML-like rendering); the startup line and /v1/models (`tokenizer`) say which is in use and why. Either way
identical prefixes give identical ids, so the prefix cache sees a conversation's reuse as vLLM would. The output
is deterministic text of exactly `max_tokens` tokens (with `ignore_eos`, or whenever max_tokens is given;
otherwise `default_output_tokens`, 64, and finish_reason "stop"); sent back as the next assistant message it
encodes to the same ids, so turn k+1 reuses turn k's output blocks. `--script FILE`
(JSON list; entry i answers a request whose conversation already holds i assistant messages; the last entry
repeats) returns scripted content or tool calls so a real agent can be driven.

`SimServer` declares the routes in one table. The two scheduled routes (chat and text completions) share one
handler, `SimServer.scheduled`: read the body, check the model, parse it (harness/sim/openai_api.py, where the
two differ), submit the engine request, then answer in one body or as a stream. Every number here is
simulated; /metrics and /v1/models say which profile they assume.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from contextlib import aclosing, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import httpx
import uvicorn
from fastapi import FastAPI, Request as HttpRequest
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from harness.sim.engine.stats import render_metrics
from harness.sim.liveclock import Pending, SimEngineRunner
from harness.sim.openai_api import (
    VERSION, Api, ApiError, ChatApi, CompletionsApi, ServedModel, load_script, render_messages,
)
from harness.sim.timing import Profile, load_profile
from harness.sim.tokenizer import SimTokenizer, load_tokenizer


def profile_tokenizer(profile: Profile) -> SimTokenizer:
    """The tokenizer the profile names (or the estimator, with the reason in its info)."""
    base = Path(profile.source_path).parent if profile.source_path else None
    return load_tokenizer(profile.tokenizer, base=base, profile=profile.name)


class SimServer:
    """The simulated vLLM server's state (engine runner, tokenizer, served model) and its route handlers."""

    def __init__(self, profile: Profile, *, time_scale: float = 1.0, model_name: str | None = None,
                 script: list[dict[str, Any]] | None = None, default_output_tokens: int = 64,
                 slice_s: float = 0.005, num_gpu_blocks_override: int | None = None,
                 tokenizer: SimTokenizer | None = None, kv_offload_gib: float | None = None) -> None:
        self.profile = profile
        self.time_scale = time_scale
        self.num_gpu_blocks_override = num_gpu_blocks_override
        self.runner = SimEngineRunner(profile, time_scale=time_scale, slice_s=slice_s, kv_offload_gib=kv_offload_gib)
        self.tok = tokenizer if tokenizer is not None else profile_tokenizer(profile)
        self.model = ServedModel(
            name=model_name or profile.name, max_len=profile.engine.max_model_len,
            block_size=profile.engine.block_size, num_gpu_blocks=self.runner.engine.num_gpu_blocks, tok=self.tok,
            script=script, default_output_tokens=default_output_tokens)
        self.chat = ChatApi(self.model)
        self.completions = CompletionsApi(self.model)
        self.created = int(time.time())

    def routes(self) -> list[tuple[str, str, Callable[..., Awaitable[Any]]]]:
        """(method, path, handler) of every route."""
        return [
            ("GET", "/health", self.ok),
            ("GET", "/ping", self.ok),
            ("GET", "/version", self.version),
            ("GET", "/load", self.load),
            ("GET", "/v1/models", self.models),
            ("GET", "/metrics", self.metrics),
            ("POST", "/tokenize", self.tokenize),
            ("POST", "/v1/chat/completions", self.scheduled_route(self.chat)),
            ("POST", "/v1/completions", self.scheduled_route(self.completions)),
        ]

    def app(self) -> FastAPI:
        app = FastAPI(title="thunderbench simulated vLLM", lifespan=self.lifespan)
        app.state.runner = self.runner
        app.state.tokenizer = self.tok
        app.add_exception_handler(ApiError, api_error_response)
        for method, path, handler in self.routes():
            app.add_api_route(path, handler, methods=[method])
        return app

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        self.runner.start()
        yield
        await self.runner.stop()

    # ------------------------------------------------------------------ plain routes

    async def ok(self) -> Response:
        return Response(status_code=200)

    async def version(self) -> dict[str, str]:
        return {"version": VERSION}

    async def load(self) -> dict[str, int]:
        return {"server_load": len(self.runner.pending)}

    async def models(self) -> dict[str, Any]:
        name, profile = self.model.name, self.profile
        return {"object": "list", "data": [{
            "id": name, "object": "model", "created": self.created, "owned_by": "vllm",
            "root": f"thunderbench-sim:{profile.name}", "parent": None, "max_model_len": self.model.max_len,
            "simulated": True, "profile": profile.name, "time_scale": self.time_scale,
            "tokenizer": self.tok.info.as_dict(),
        }]}

    async def metrics(self) -> PlainTextResponse:
        runner = self.runner
        eng = runner.engine
        text = render_metrics(
            eng.stats, model_name=self.model.name, num_running=eng.num_running,
            num_waiting=eng.num_waiting + len(runner.clock.arrivals),  # arrived, engine clock not there yet
            kv_cache_usage=eng.kv_usage(), block_size=eng.block_size, num_gpu_blocks=eng.num_gpu_blocks,
            num_gpu_blocks_override=self.num_gpu_blocks_override, max_num_seqs=eng.scheduler.max_num_seqs,
            created=float(self.created), profile=f"{self.profile.name} (time scale {self.time_scale:g})",
            host=eng.host,
        )
        # not a vLLM series: engine time the server gave up because it fell more than max_lag behind its clock
        # (0 unless the machine cannot keep up with --time-scale; live figures are then distorted)
        text += ("# HELP thunderbench_sim_engine_time_lost_seconds_total Simulated engine time given up because "
                 "the server fell behind its clock.\n# TYPE thunderbench_sim_engine_time_lost_seconds_total counter\n"
                 f"thunderbench_sim_engine_time_lost_seconds_total {runner.clock.lost_v}\n")
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def tokenize(self, request: HttpRequest) -> Response:
        body = await self.read_body(request)
        if "messages" in body:
            if not isinstance(body["messages"], list) or not all(isinstance(m, dict) for m in body["messages"]):
                raise ApiError("`messages` must be a list of message objects", param="messages")
            ids = render_messages(self.model, body)
        elif "prompt" in body:
            ids = self.tok.encode_prompt(str(body["prompt"]))
        else:
            raise ApiError("Either `prompt` or `messages` is required")
        return JSONResponse({"count": len(ids), "max_model_len": self.model.max_len, "tokens": ids,
                             "token_strs": None})

    # ------------------------------------------------------------------ the scheduled routes

    def scheduled_route(self, api: Api) -> Callable[[HttpRequest], Awaitable[Response]]:
        async def handle(request: HttpRequest) -> Response:
            return await self.scheduled(request, api)
        return handle

    async def scheduled(self, request: HttpRequest, api: Api) -> Response:
        """Parse the request (`api` says how), submit it to the engine, and answer when the engine delivers: in
        one body, or streamed as its first token and its end come due."""
        body = await self.read_body(request)
        job = api.parse(body)
        pending = self.runner.submit(job.req)
        job.created = int(time.time())
        if body.get("stream"):
            return StreamingResponse(self.stream(api.events(job, pending), pending), media_type="text/event-stream")
        if (gone := await self.await_done(pending, request)) is not None:
            return gone
        return JSONResponse(api.response(job))

    async def stream(self, events: AsyncIterator[str], pending: Pending) -> AsyncIterator[str]:
        """Pass the events on; a stream that ends early (client gone) aborts the request in the engine."""
        try:
            async with aclosing(events):  # type: ignore[type-var]
                async for e in events:
                    yield e
        finally:
            if not pending.done.is_set():
                self.runner.abort(pending)

    async def await_done(self, pending: Pending, request: HttpRequest) -> Response | None:
        """Wait for a non-streaming request to finish in the engine. If the client goes away first the request
        is aborted in the engine (as vLLM does) and a 499 response is returned; cancellation aborts it too."""
        try:
            while not pending.done.is_set():
                try:
                    await asyncio.wait_for(pending.done.wait(), 0.5)
                except TimeoutError:
                    if await request.is_disconnected():
                        self.runner.abort(pending)
                        return Response(status_code=499)
        except asyncio.CancelledError:
            self.runner.abort(pending)
            raise
        return None

    async def read_body(self, request: HttpRequest) -> dict[str, Any]:
        """The request's JSON object, for the served model (a body naming another model is refused with 404)."""
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(f"Invalid JSON body: {e}") from e
        if not isinstance(body, dict):
            raise ApiError("The request body must be a JSON object")
        m, name = body.get("model"), self.model.name
        if m is not None and m != name:
            raise ApiError(f"The model `{m}` does not exist. Valid aliases: {name}.", 404, "NotFoundError", "model")
        return body


async def api_error_response(request: HttpRequest, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


def create_app(profile: Profile, **kw: Any) -> FastAPI:
    """The FastAPI app (tests mount it; `serve` runs it under uvicorn); keywords as `SimServer`'s: `tokenizer`
    overrides the profile's, `kv_offload_gib` adds the host KV tier (vLLM's --kv-offloading-size)."""
    return SimServer(profile, **kw).app()


def wait_healthy(url: str, timeout_s: float, *, alive: Callable[[], bool]) -> bool | None:
    """Poll `url`/health until it answers 200 (True), the deadline passes (False) or the server is gone
    (`alive()` false: None)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        if not alive():
            return None
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


@contextmanager
def serve_in_thread(profile: str | Profile, *, time_scale: float = 1.0, num_gpu_blocks: int | None = None,
                    startup_timeout_s: float = 20.0, **kw: Any) -> Iterator[str]:
    """Run the server on a free local port in a background thread; yields its base URL (tests, validation)."""
    prof = load_profile(profile, num_gpu_blocks=num_gpu_blocks) if isinstance(profile, str) else (
        profile.with_num_gpu_blocks(num_gpu_blocks))
    app = create_app(prof, time_scale=time_scale, num_gpu_blocks_override=num_gpu_blocks, **kw)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    th = threading.Thread(target=server.run, name="sim-server", daemon=True)
    th.start()
    url = f"http://127.0.0.1:{port}"
    if wait_healthy(url, startup_timeout_s, alive=th.is_alive) is not True:
        server.should_exit = True
        raise RuntimeError(f"simulator server did not become healthy within {startup_timeout_s:g} s")
    try:
        yield url
    finally:
        server.should_exit = True
        th.join(10)


@contextmanager
def serve_in_process(profile: str, *, time_scale: float = 1.0, num_gpu_blocks: int | None = None,
                     model_name: str | None = None, startup_timeout_s: float = 30.0) -> Iterator[str]:
    """Run the server in its own process (as live runs do), so a client in this process does not share the GIL
    with the engine loop; yields its base URL and stops it afterwards."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    argv = [sys.executable, "-m", "harness.entry", "sim", "serve", "--profile", profile, "--port", str(port),
            "--time-scale", str(time_scale)]
    if num_gpu_blocks is not None:
        argv += ["--num-gpu-blocks", str(num_gpu_blocks)]
    if model_name:
        argv += ["--served-model-name", model_name]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        healthy = wait_healthy(url, startup_timeout_s, alive=lambda: proc.poll() is None)
        if healthy is None:
            err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            raise RuntimeError(f"simulator server exited: {err.splitlines()[-1] if err else proc.returncode}")
        if not healthy:
            raise RuntimeError(f"simulator server did not become healthy within {startup_timeout_s:g} s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def serve(
    profile: str | Profile,
    port: int,
    *,
    host: str = "127.0.0.1",
    time_scale: float = 1.0,
    num_gpu_blocks: int | None = None,
    model_name: str | None = None,
    script: str | Path | None = None,
    default_output_tokens: int = 64,
    log_level: str = "warning",
    kv_offload_gib: float | None = None,
) -> None:
    """Run the simulated vLLM server until interrupted (what `thunderbench sim serve` calls)."""
    prof = load_profile(profile, num_gpu_blocks=num_gpu_blocks) if isinstance(profile, str) else (
        profile.with_num_gpu_blocks(num_gpu_blocks))
    tok = profile_tokenizer(prof)
    app = create_app(prof, time_scale=time_scale, model_name=model_name,
                     script=load_script(script) if script else None, default_output_tokens=default_output_tokens,
                     num_gpu_blocks_override=num_gpu_blocks, tokenizer=tok, kv_offload_gib=kv_offload_gib)
    counted = (f"tokenizer {tok.info.source}" if tok.info.kind == "model"
               else "prompt tokens estimated (regex estimator; why: the warning above)")
    print(f"thunderbench simulated vLLM: profile {prof.name} ({prof.engine.num_gpu_blocks} blocks x "
          f"{prof.engine.block_size}), time scale {time_scale:g}, {counted}, http://{host}:{port}",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)

