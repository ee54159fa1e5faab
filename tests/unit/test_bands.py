"""The prediction-band design (harness/sweep/bands.py): a Latin hypercube over the input ranges, band options
that move the workload and the KV capacity, and the band arithmetic over the summary rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.sweep.bands import apply_bands, design_options, knee_sim, latin_hypercube
from harness.recipes import load_recipe
from harness.errors import ReproduceError
from harness.sweep.options import make_options


def test_latin_hypercube_uses_every_stratum_once_and_is_seeded():
    names = ["a", "b", "c"]
    pts = latin_hypercube(names, 8, seed=3)
    assert len(pts) == 8
    for n in names:
        strata = sorted(int(p[n] * 8) for p in pts)
        assert strata == list(range(8)), n
    assert pts == latin_hypercube(names, 8, seed=3)
    assert pts != latin_hypercube(names, 8, seed=4)


def test_design_options_move_workload_and_kv(tmp_path: Path):
    opts = make_options(load_recipe("glm4.6"), engine="des", levels=(4,), duration="4m", window="1m-4m",
                        out=tmp_path / "o", bands=True, band_points=4, jobs=1)
    ds = design_options(opts)
    assert len(ds) == 4 and all(d.arms == ("vllm", "thunderagent") for d in ds)
    assert "kv_capacity" in ds[0].design and "observation_tokens" in ds[0].design
    from harness.sweep.inputs import workload_params
    from harness.sim.timing import load_profile

    lo, c, hi = load_profile("glm4.6-8xh100").kv_blocks_range()
    for d in ds:
        u = d.design["kv_capacity"]
        assert lo <= d.kv_blocks <= hi and (d.kv_blocks < c) == (u < 0.5)
        w = workload_params(d)
        assert w.observation_tokens.median != workload_params(opts).observation_tokens.median
        assert w.turns.max == 50  # the recipe's step cap still applies


def test_bands_need_des_and_vllm(tmp_path: Path):
    r = load_recipe("glm4.6")
    with pytest.raises(ReproduceError, match="--bands needs --engine des"):
        make_options(r, engine="live-sim", bands=True, out=tmp_path / "a")
    with pytest.raises(ReproduceError, match="include vllm"):
        make_options(r, engine="des", bands=True, arms=("thunderagent",), out=tmp_path / "b")
    with pytest.raises(ReproduceError, match="--band-points must be >= 2"):
        make_options(r, engine="des", bands=True, band_points=1, out=tmp_path / "c")


def _rows(spm: dict[tuple[str, int], float]) -> list[dict]:
    return [{"arm": a, "programs": n, "status": "ok", "steps_per_min": v} for (a, n), v in spm.items()]


def test_band_arithmetic(tmp_path: Path, monkeypatch):
    import harness.sweep.bands as bands

    monkeypatch.setattr(bands, "knee_kv", lambda opts: 50.0)
    central = _rows({("vllm", 24): 100, ("thunderagent", 24): 110, ("vllm", 96): 60, ("thunderagent", 96): 150,
                     ("continuum", 96): 66})
    d1 = _rows({("vllm", 24): 70, ("thunderagent", 24): 90, ("vllm", 96): 80, ("thunderagent", 96): 120})
    d2 = _rows({("vllm", 24): 120, ("thunderagent", 24): 150, ("vllm", 96): 40, ("thunderagent", 96): 140})
    designs = [{"design": {"x": 0.2}, "kv_blocks": 10, "rows": d1, "knee_kv": 70.0, "knee_sim": knee_sim(d1)},
               {"design": {"x": 0.8}, "kv_blocks": 20, "rows": d2, "knee_kv": 35.0, "knee_sim": knee_sim(d2)}]
    b = apply_bands(central, designs, opts=None)
    lvl = b["ratio_thunderagent_vs_vllm"]
    assert lvl["96"]["ratio"] == pytest.approx(2.5)
    assert (lvl["96"]["ratio_low"], lvl["96"]["ratio_high"]) == pytest.approx((1.5, 3.5))
    assert (lvl["24"]["ratio_low"], lvl["24"]["ratio_high"]) == pytest.approx((1.1, 90 / 70))
    assert b["knee_kv"] == {**b["knee_kv"], "central": 50.0, "low": 35.0, "high": 70.0}
    assert (b["knee_sim"]["central"], b["knee_sim"]["low"], b["knee_sim"]["high"]) == (24, 24, 96)
    ta96 = next(r for r in central if r["arm"] == "thunderagent" and r["programs"] == 96)
    assert (ta96["steps_per_min_band_low"], ta96["steps_per_min_band_high"]) == (120, 150)
    assert ta96["ratio_band_low"] <= ta96["ratio_vs_vllm"] <= ta96["ratio_band_high"]
    assert np.isclose(ta96["ratio_vs_vllm"], 2.5)
    cont = next(r for r in central if r["arm"] == "continuum")
    assert "ratio_band_low" not in cont and "steps_per_min_band_low" not in cont  # not in the design: no band
