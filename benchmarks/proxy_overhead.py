"""Proxy overhead: latency (p50/p99) and throughput through ThunderAgent vs calling the backend directly.

One run starts a fast fake OpenAI backend (benchmarks/_fast_backend.py: canned vLLM-shaped responses from a
bare asyncio protocol, so that under concurrency the proxy, not the fake, sets the pace; `--fake-vllm` uses the
faithful but slower test fake instead) and the proxy (`python -m ThunderAgent`, routers "default" and "tr") as
separate processes, then drives each target with N concurrent clients (one program_id per client; aiohttp on
uvloop, so the load generator is cheap too), non-streaming and streaming, side by side in rotating order.
req/s at 64 and 512 clients is the maximum throughput of each target on this machine. Numbers are
machine-dependent (this prints them; it asserts nothing about absolute times).

    .venv/bin/python benchmarks/proxy_overhead.py            # 1, 64, 512 concurrent clients
    .venv/bin/python benchmarks/proxy_overhead.py --quick    # CI-sized
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

import _procs  # noqa: E402  (benchmarks/_procs.py, beside this script)
from _procs import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

try:
    import uvloop

    run = uvloop.run
except ImportError:
    run = asyncio.run


def start(cmd: list[str], url: str, timeout: float = 60.0, root: Path = ROOT):  # noqa: ANN201
    return _procs.start(cmd, url, timeout, label="", root=root)


@dataclass
class Result:
    target: str
    stream: bool
    clients: int
    n: int
    errors: int
    p50_ms: float
    p99_ms: float
    rps: float
    error_kinds: Counter[str] = field(default_factory=Counter)


@dataclass
class Sample:
    lat: list[float]
    errors: int
    wall: float
    kinds: Counter[str]


async def drive(url: str, clients: int, total: int, stream: bool) -> Sample:
    """`clients` concurrent clients (one program each) send `total` requests; connections are warmed
    first and the warm-up is not timed."""
    lat: list[float] = []
    errors = 0
    kinds: Counter[str] = Counter()
    remaining = total

    def body(i: int) -> dict:
        b = {
            "model": "tiny",
            "messages": [{"role": "user", "content": "benchmark " * 20}],
            "max_tokens": 16,
            "program_id": f"bench-{i}",
        }
        if stream:
            b["stream"] = True
        return b

    endpoint = url + "/v1/chat/completions"
    bodies = [json.dumps(body(i)).encode() for i in range(clients)]
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=clients + 8)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as c:

        async def call(i: int) -> int:
            async with c.post(endpoint, data=bodies[i], headers=headers) as r:
                async for _ in r.content.iter_any():
                    pass
                return r.status

        async def one(i: int) -> None:
            nonlocal remaining, errors
            while remaining > 0:
                remaining -= 1
                t0 = time.perf_counter()
                try:
                    status = await call(i)
                    ok = status == 200
                    if not ok:
                        kinds[f"HTTP {status}"] += 1
                except (aiohttp.ClientError, TimeoutError) as e:
                    ok = False
                    kinds[type(e).__name__] += 1
                lat.append(time.perf_counter() - t0)
                errors += 0 if ok else 1

        await asyncio.gather(*(call(i) for i in range(clients)))
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(clients)))
        wall = time.perf_counter() - t0
    return Sample(lat, errors, wall, kinds)


def summarize(target: str, stream: bool, clients: int, samples: list[Sample]) -> Result:
    lat = sorted(x for s in samples for x in s.lat)
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    rps = len(lat) / sum(s.wall for s in samples)
    errors = sum(s.errors for s in samples)
    kinds = sum((s.kinds for s in samples), Counter())
    return Result(
        target, stream, clients, len(lat), errors, statistics.median(lat) * 1e3, p99 * 1e3, rps, kinds
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small counts for CI")
    ap.add_argument("--clients", type=str, default=None, help="comma-separated concurrency levels")
    ap.add_argument("--fake-vllm", action="store_true", help="use the test fake (tests/fakes/fake_vllm.py) as backend")
    ap.add_argument(
        "--baseline-root",
        type=Path,
        default=None,
        help="also run the proxy from this other checkout (e.g. `git archive <commit>` unpacked) as targets "
        "'base default'/'base tr': before/after figures side by side in one run",
    )
    args = ap.parse_args()
    levels = (
        [int(x) for x in args.clients.split(",")]
        if args.clients
        else ([1, 16] if args.quick else [1, 64, 512])
    )

    py = sys.executable
    fport = free_port()
    fake_url = f"http://127.0.0.1:{fport}"
    procs = []
    try:
        backend = (
            [py, "-m", "tests.fakes.fake_vllm"] if args.fake_vllm else [py, str(ROOT / "benchmarks" / "_fast_backend.py")]
        )
        procs.append(start([*backend, "--port", str(fport), "--completion-tokens", "16"], fake_url))
        common = ["--backends", fake_url, "--log-level", "warning", "--idle-ttl", "0"]
        targets = [("direct", fake_url)]
        roots = [("proxy", ROOT)]
        if args.baseline_root is not None:
            roots.insert(0, ("base", args.baseline_root.resolve()))
        for label, root in roots:
            for router in ("default", "tr"):
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                procs.append(
                    start([py, "-m", "ThunderAgent", "--router", router, "--port", str(port), *common], url, root=root)
                )
                targets.append((f"{label} {router}", url))
        results: list[Result] = []
        rounds = 2 if args.quick else 3
        for stream in (False, True):
            for clients in levels:
                total = max(30, 2 * clients) if args.quick else max(600, 8 * clients)
                samples: dict[str, list[Sample]] = {name: [] for name, _ in targets}
                # rounds with a rotating order: load drift on a shared machine hits every target alike
                for k in range(rounds):
                    for name, url in targets[k % len(targets) :] + targets[: k % len(targets)]:
                        samples[name].append(run(drive(url, clients, max(1, total // rounds), stream)))
                results.extend(summarize(name, stream, clients, samples[name]) for name, _ in targets)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()

    which = "test fake vLLM" if args.fake_vllm else "fast fake backend"
    print(f"proxy overhead vs direct calls to the {which} ({os.cpu_count()} CPUs; absolute numbers are this machine's)")
    print(
        f"{'mode':<10} {'clients':>7} {'target':<14} {'n':>5} {'err':>4} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'+p50 ms':>8} {'+p99 ms':>8}"
    )
    base: dict[tuple[bool, int], Result] = {(r.stream, r.clients): r for r in results if r.target == "direct"}
    for r in results:
        b = base[(r.stream, r.clients)]
        d50 = "" if r.target == "direct" else f"{r.p50_ms - b.p50_ms:+.2f}"
        d99 = "" if r.target == "direct" else f"{r.p99_ms - b.p99_ms:+.2f}"
        mode = "stream" if r.stream else "non-stream"
        print(
            f"{mode:<10} {r.clients:>7} {r.target:<14} {r.n:>5} {r.errors:>4} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} "
            f"{r.rps:>8.1f} {d50:>8} {d99:>8}"
        )
    for r in results:
        if r.error_kinds:
            mode = "stream" if r.stream else "non-stream"
            print(f"errors ({mode}, {r.clients} clients, {r.target}): {dict(r.error_kinds)}")


if __name__ == "__main__":
    main()
