"""Proxy overhead: latency (p50/p99) and throughput through ThunderAgent vs calling the backend directly.

One run starts a fake vLLM server (tests/fakes/fake_vllm.py, no artificial delays) and the proxy
(`python -m ThunderAgent`, routers "default" and "tr") as separate processes, then drives each target
with N concurrent clients (one program_id per client), non-streaming and streaming, side by side.
Numbers are machine-dependent (this prints them; it asserts nothing about absolute times).

    .venv/bin/python benchmarks/proxy_overhead.py            # 1, 64, 512 concurrent clients
    .venv/bin/python benchmarks/proxy_overhead.py --quick    # CI-sized
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

import _procs  # noqa: E402  (benchmarks/_procs.py, beside this script)
from _procs import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def start(cmd: list[str], url: str, timeout: float = 60.0):  # noqa: ANN201
    return _procs.start(cmd, url, timeout, label="")


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
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
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

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as c:

        async def one(i: int) -> None:
            nonlocal remaining, errors
            while remaining > 0:
                remaining -= 1
                t0 = time.perf_counter()
                try:
                    if stream:
                        async with c.stream("POST", "/v1/chat/completions", json=body(i)) as r:
                            async for _ in r.aiter_raw():
                                pass
                    else:
                        r = await c.post("/v1/chat/completions", json=body(i))
                    ok = r.status_code == 200
                    if not ok:
                        kinds[f"HTTP {r.status_code}"] += 1
                except httpx.HTTPError as e:
                    ok = False
                    kinds[type(e).__name__] += 1
                lat.append(time.perf_counter() - t0)
                errors += 0 if ok else 1

        await asyncio.gather(*(c.post("/v1/chat/completions", json=body(i)) for i in range(clients)))
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
    args = ap.parse_args()
    levels = (
        [int(x) for x in args.clients.split(",")]
        if args.clients
        else ([1, 16] if args.quick else [1, 64, 512])
    )

    py = sys.executable
    fport, dport, tport = free_port(), free_port(), free_port()
    fake_url, default_url, tr_url = (f"http://127.0.0.1:{p}" for p in (fport, dport, tport))
    procs = []
    try:
        procs.append(
            start(
                [py, "-m", "tests.fakes.fake_vllm", "--port", str(fport), "--completion-tokens", "16"],
                fake_url,
            )
        )
        common = ["--backends", fake_url, "--log-level", "warning", "--idle-ttl", "0"]
        procs.append(
            start(
                [py, "-m", "ThunderAgent", "--router", "default", "--port", str(dport), *common], default_url
            )
        )
        procs.append(
            start([py, "-m", "ThunderAgent", "--router", "tr", "--port", str(tport), *common], tr_url)
        )
        targets = [("direct", fake_url), ("proxy default", default_url), ("proxy tr", tr_url)]
        results: list[Result] = []
        rounds = 2 if args.quick else 3
        for stream in (False, True):
            for clients in levels:
                total = max(30 if args.quick else 200, (2 if args.quick else 4) * clients)
                samples: dict[str, list[Sample]] = {name: [] for name, _ in targets}
                # rounds with a rotating order: load drift on a shared machine hits every target alike
                for k in range(rounds):
                    for name, url in targets[k % 3 :] + targets[: k % 3]:
                        samples[name].append(
                            asyncio.run(drive(url, clients, max(1, total // rounds), stream))
                        )
                results.extend(summarize(name, stream, clients, samples[name]) for name, _ in targets)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()

    print(
        f"proxy overhead vs direct fake-vLLM calls ({os.cpu_count()} CPUs; shared machine: absolute numbers are noisy)"
    )
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
