"""Runner + synthetic agent against real HTTP engines on an accelerated clock: the engine-metrics
scraper, the step records and the throughput computation agree end to end."""

from __future__ import annotations

from collections import Counter

import pytest

from harness.agents.base import Endpoint
from harness.agents.synthetic import SyntheticAgent
from harness.datasets import load_instances
from harness.records import read_engine_samples, read_step_records
from harness.runner import RunConfig, Runner
from harness.throughput import summarize_run
from harness.workload import LogNormal, load_workload_params


def _short_workload():
    """mini-swe-agent's model with short trajectories (2-6 turns), so a few wall seconds hold many."""
    return load_workload_params("miniswe").scaled(turns=LogNormal(4.0, 0.3, 2, 6))


@pytest.mark.timeout(120)
async def test_runner_against_fake_vllm_counts_agree(tmp_path, fake_vllm):
    """Count mode (24 instances, 8 in flight) on a 100x clock: load-independent. Over the whole run both
    counts must be exactly the engine's completions; over an inner window within a few percent."""
    from harness.throughput import RunData, Window, summarize

    fake_vllm.completion_tokens = 4000  # the request's max_tokens (the planned output) caps it
    scale = 100.0
    params = _short_workload()
    agent = SyntheticAgent(params, seed=3, programs=8, time_scale=scale, stream=False)
    cfg = RunConfig(run_dir=tmp_path / "run", arm="vllm", programs=8,
                    endpoint=Endpoint(fake_vllm.url + "/v1", "tiny", thunderagent=False),
                    instances=load_instances("lite-synthetic:24"), metrics_urls=[fake_vllm.url],
                    scrape_interval_s=0.02, time_scale=scale, engine="fake-vllm", simulated=True,
                    profile="fake", dataset="lite-synthetic:24", workload=params.name, progress=False,
                    handle_signals=False)
    res = await Runner(cfg, agent).run()
    assert res.ok == 24 and res.errors == 0 and res.steps >= 48 and res.scrapes >= 3
    recs = read_step_records(tmp_path / "run" / "steps.jsonl")
    assert len(recs) == res.steps and {r.status for r in recs} == {"ok"}
    planned = Counter(b["max_tokens"] for b in fake_vllm.requests)  # the engine generated exactly the plan
    assert Counter(r.completion_tokens for r in recs) == planned
    samples = read_engine_samples(tmp_path / "run" / "engine_metrics.jsonl")
    assert samples[-1].values["vllm:request_success_total"] == fake_vllm.completed == res.steps
    run = RunData.load(tmp_path / "run")
    last_scrape = run.rel(run.samples[-1].t)  # taken after the last program ended
    assert run.rel(run.samples[0].t) <= 0 < last_scrape
    whole = summarize(run, Window(0.0, last_scrape))
    assert whole.engine_steps_per_min == pytest.approx(whole.record_steps_per_min) and whole.agree
    assert whole.steps_in_window == res.steps
    assert whole.simulated and whole.profile == "fake" and whole.programs == 8


@pytest.mark.timeout(120)
async def test_runner_through_thunderagent_proxy_releases_every_program(tmp_path, fake_vllm):
    """Arm thunderagent: the real proxy (create_app, router tr, served over HTTP) in front of the fake
    engine. program_id reaches the proxy and never the engine; every program is released at the end."""
    import httpx

    from tests.fakes.server import ServerThread
    from ThunderAgent.app import create_app
    from ThunderAgent.config import Config

    fake_vllm.completion_tokens = 4000
    scale = 100.0
    proxy = ServerThread(create_app(Config(backends=(fake_vllm.url,), router="tr", scheduler_interval=0.05))).start()
    try:
        agent = SyntheticAgent(_short_workload(), seed=5, programs=6, time_scale=scale, stream=True)
        cfg = RunConfig(run_dir=tmp_path / "run", arm="thunderagent", programs=6,
                        endpoint=Endpoint(proxy.url + "/v1", "tiny", thunderagent=True),
                        instances=load_instances("lite-synthetic:12"), metrics_urls=[fake_vllm.url],
                        scrape_interval_s=0.05, time_scale=scale, engine="fake-vllm", simulated=True, profile="fake",
                        dataset="lite-synthetic:12", progress=False, handle_signals=False)
        res = await Runner(cfg, agent).run()
        assert res.ok == 12 and res.errors == 0 and res.cancelled == 0
        recs = read_step_records(tmp_path / "run" / "steps.jsonl")
        assert len(recs) == res.steps and all(r.status == "ok" and r.arm == "thunderagent" for r in recs)
        assert fake_vllm.requests and not any("program_id" in b for b in fake_vllm.requests)
        async with httpx.AsyncClient() as c:
            live = (await c.get(proxy.url + "/programs")).json()
        assert live == {}  # released in the agent's finally
        assert len({r.program_id for r in recs}) == 12
    finally:
        proxy.stop()


@pytest.mark.timeout(120)
def test_des_run_dir_reads_back_through_throughput_and_trace_replay(tmp_path):
    """The DES writes the same run directory: both step counts agree on it, and its steps.jsonl replays
    as trajectories whose token/tool statistics are the workload's."""
    from harness.sim.des import run_des
    from harness.workload import describe, load_traces

    params = load_workload_params("miniswe")
    run_des("glm4.6-8xh100", arm="vllm", programs=8, duration_s=20 * 60, seed=1, workload=params,
            out_dir=tmp_path / "des")
    s = summarize_run(tmp_path / "des", "2m-18m")
    assert s.agree is True and s.steps_in_window > 100 and s.simulated and s.profile == "glm4.6-8xh100"
    assert s.prefix_hit_rate is not None and 0.5 < s.prefix_hit_rate <= 1.0
    traces = load_traces(tmp_path / "des" / "steps.jsonl")
    # the shared prefix, recovered from the first calls' cached_tokens (block-aligned, so within one block)
    assert all(params.system_tokens - 128 < t.system_tokens <= params.system_tokens for t in traces)
    d = describe(traces)
    assert d["output_tokens_mean"] == pytest.approx(params.output_tokens.mean(), rel=0.15)
    assert d["tool_time_mean_s"] == pytest.approx(params.tool_time.mean(), rel=0.5)


# ------------------------------------------------------------------ the simulator server (+ the real proxy)

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(make_argv, log_path, what: str):
    """Start a server process on a free port (`make_argv(port)`) and poll its /health until it answers
    (deadline 60 s). A start that exits at once is retried on another port (a port taken between
    choosing and binding it); the third failure fails the test with the log. Returns (proc, log, url)."""
    for attempt in range(3):
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        started = _try_start(make_argv(port), url, log_path, what, last=attempt == 2)
        if started is not None:
            return (*started, url)
    raise AssertionError("unreachable")


def _try_start(argv: list[str], url: str, log_path, what: str, last: bool):
    import subprocess
    import sys
    import time

    import httpx

    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, *argv], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.close()
            if not last:
                return None
            pytest.fail(f"{what} exited with {proc.returncode}: {open(log_path).read()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                return proc, log
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"{what} did not become healthy in 60 s: {open(log_path).read()[-2000:]}")


def _stop(proc, log) -> None:
    import os
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except Exception:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    log.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("arm", ["vllm", "thunderagent"])
async def test_runner_against_the_simulator_server(tmp_path, arm):
    """12 synthetic mini-swe-agent instances (<= 20 turns), 8 in flight, GLM-4.6 profile on a 60x clock, against
    The simulator server (harness/sim/server.py, its own process), directly or through the ThunderAgent
    proxy (`python -m ThunderAgent`, router tr): engine and record counts agree, nothing errors, the
    prefix cache sees the conversations' reuse, every program is released."""
    import httpx

    scale = 60.0
    sim, sim_log, sim_url = _start(lambda port: ["-m", "harness.sim.server", "--profile", "glm4.6-8xh100",
                                                 "--port", str(port), "--time-scale", str(scale),
                                                 "--served-model-name", "glm"], tmp_path / "sim.log", "sim")
    procs = [(sim, sim_log)]
    try:
        base = sim_url
        if arm == "thunderagent":
            px, px_log, base = _start(lambda port: ["-m", "ThunderAgent", "--backends", sim_url, "--port", str(port),
                                                    "--router", "tr", "--scheduler-interval", str(5.0 / scale),
                                                    "--metrics", "--metrics-interval", str(5.0 / scale)],
                                      tmp_path / "proxy.log", "proxy")
            procs.append((px, px_log))
        from dataclasses import replace

        from harness.throughput import RunData, Window, summarize

        base_params = load_workload_params("miniswe")
        params = base_params.scaled(turns=replace(base_params.turns, max=20.0))  # bounded: a few sim minutes
        agent = SyntheticAgent(params, seed=11, programs=8, time_scale=scale)
        cfg = RunConfig(run_dir=tmp_path / "run", arm=arm, programs=8,
                        endpoint=Endpoint(base + "/v1", "glm", thunderagent=arm == "thunderagent"),
                        instances=load_instances("lite-synthetic:12"), metrics_urls=[sim_url],
                        scrape_interval_s=5.0 / scale, time_scale=scale, engine="sim", simulated=True,
                        profile="glm4.6-8xh100", dataset="lite-synthetic:12", workload="miniswe", progress=False,
                        handle_signals=False)
        res = await Runner(cfg, agent).run()
        assert res.ok == 12 and res.errors == 0 and res.steps > 30, res
        recs = read_step_records(tmp_path / "run" / "steps.jsonl")
        assert len(recs) == res.steps and all(r.status == "ok" and r.completion_tokens >= 16 for r in recs)
        # prompts follow the workload plan (the simulator counts a filler word as one token) and the
        # prefix cache sees each conversation's reuse
        later = [r for r in recs if r.step >= 2 and r.cached_tokens is not None]
        assert later and sum(r.cached_tokens for r in later) / sum(r.prompt_tokens for r in later) > 0.8
        run = RunData.load(tmp_path / "run")
        whole = summarize(run, Window(0.0, run.rel(run.samples[-1].t)))  # the last scrape follows the last step
        print(f"\n{arm}: {whole.as_dict()}")
        assert whole.steps_in_window == res.steps and whole.agree is True
        assert whole.engine_steps_per_min == pytest.approx(whole.record_steps_per_min)
        if arm == "thunderagent":
            async with httpx.AsyncClient() as c:
                assert (await c.get(base + "/programs")).json() == {}
    finally:
        for proc, log in reversed(procs):
            _stop(proc, log)
