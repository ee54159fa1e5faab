"""The comparison figure: ratios at the largest concurrency, simulated labels, failed points skipped."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from harness import plots  # noqa: E402


def _rows(simulated: bool = True, recipe: str = "glm4.6"):
    out = []
    for arm, ys in {"vllm": [100, 180, 150, 90], "thunderagent": [100, 185, 240, 270],
                    "continuum": [105, 190, 170, 110]}.items():
        for n, y in zip((24, 48, 72, 96), ys):
            out.append({"recipe": recipe, "arm": arm, "programs": n, "status": "ok", "steps_per_min": y,
                        "ci_low": y - 5, "ci_high": y + 5, "prefix_hit_rate": 0.9, "p50_step_latency_s": 5.0,
                        "p95_step_latency_s": 9.0, "simulated": simulated,
                        "profile": "glm4.6-8xh100" if simulated else None})
    return out


def test_ratios_at_the_largest_common_concurrency():
    rows = _rows()
    assert plots.ratios_at_max(rows) == pytest.approx({"thunderagent": 3.0, "continuum": 110 / 90})
    # the baseline failed at 96: ratios fall back to the largest level both arms measured
    for r in rows:
        if r["arm"] == "vllm" and r["programs"] == 96:
            r["status"], r["steps_per_min"] = "failed", None
    assert plots.ratios_at_max(rows)["thunderagent"] == pytest.approx(240 / 150)


def _spy(monkeypatch) -> dict:
    seen: dict = {}
    real_savefig = matplotlib.figure.Figure.savefig

    def spy(self, *a, **k):
        seen["suptitle"] = self._suptitle.get_text() if self._suptitle else ""
        seen["legend"] = [t.get_text() for lg in self.legends for t in lg.get_texts()]
        seen["legend"] += [t.get_text() for ax in self.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
        seen["titles"] = [ax.get_title() for ax in self.axes]
        seen["texts"] = [t.get_text() for ax in self.axes for t in ax.texts]
        seen["lines"] = {(i, ln.get_label()): ln for i, ax in enumerate(self.axes) for ln in ax.get_lines()}
        seen["axes"] = list(self.axes)
        return real_savefig(self, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    return seen


def test_simulated_is_said_once_in_the_main_title(tmp_path, monkeypatch):
    seen = _spy(monkeypatch)
    out = plots.plot_summary(_rows(), tmp_path / "f.png", title="glm4.6: ThunderAgent vs vLLM")
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert seen["suptitle"] == "glm4.6: ThunderAgent vs vLLM — SIMULATED (profile glm4.6-8xh100)"
    everything_else = seen["titles"] + seen["legend"] + seen["texts"]
    assert not [t for t in everything_else if "SIMULATED" in t.upper()], everything_else
    assert {"vLLM", "ThunderAgent", "Continuum-style"} <= set(seen["legend"])
    plt.close("all")


def test_a_ratio_panel_gives_every_level(tmp_path, monkeypatch):
    seen = _spy(monkeypatch)
    plots.plot_summary(_rows(), tmp_path / "f.png")
    assert len(seen["axes"]) == 4 and "ratio to vLLM per level" in seen["titles"][1]
    ta = [ln for (i, _), ln in seen["lines"].items() if i == 1 and ln.get_color() == plots.ARM_STYLE[
        "thunderagent"]["color"]]
    (line,) = ta
    assert list(line.get_xdata()) == [24, 48, 72, 96]
    assert list(line.get_ydata()) == pytest.approx([1.0, 185 / 180, 240 / 150, 3.0])
    assert {"1.00×", "1.03×", "1.60×", "3.00×"} <= set(seen["texts"])
    assert plots.ratios_per_level(_rows())["continuum"][-1] == (96, pytest.approx(110 / 90))
    plt.close("all")


def test_palette_is_colour_blind_safe_with_distinct_styles():
    okabe_ito = {"#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"}
    styles = [plots.ARM_STYLE[a] for a in ("vllm", "continuum", "thunderagent", "bound")]
    assert {s["color"] for s in styles} <= okabe_ito and len({s["color"] for s in styles}) == 4
    assert len({s["marker"] for s in styles}) == 4
    # arms that lie on top of each other stay visible: the one drawn first is the widest, with the largest marker
    first = plots.ARM_STYLE[plots.ARM_ORDER[0]]
    assert all(first["lw"] > s["lw"] and first["ms"] > s["ms"] for s in styles if s is not first)
    assert plots.ARM_STYLE["continuum"]["ls"] != plots.ARM_STYLE["vllm"]["ls"]


def test_real_and_simulated_recipes_get_their_own_rows(tmp_path, monkeypatch):
    seen = _spy(monkeypatch)
    plots.plot_summary(_rows(True, "glm4.6") + _rows(False, "qwen3-235b"), tmp_path / "f.png")
    assert len(seen["titles"]) == 8
    assert sum("SIMULATED" in t for t in seen["titles"]) == 4 and sum("real engine" in t for t in seen["titles"]) == 4
    assert "includes SIMULATED series" in seen["suptitle"]
    plt.close("all")


def test_figure_title_comes_from_the_manifests():
    from harness.sweep.summary import figure_title

    rows = [dict(r, agent="synthetic", dataset="lite-synthetic", engine="des") for r in _rows()]
    t = figure_title(rows)
    assert t == ("glm4.6: ThunderAgent vs vLLM, synthetic agent on lite-synthetic, engine des — SIMULATED "
                 "(profile glm4.6-8xh100)")
    assert "OpenHands" not in t and "SWE-bench Lite" not in t
    real = [dict(r, agent="openhands", dataset="lite", engine="vllm") for r in _rows(simulated=False)]
    assert figure_title(real) == "glm4.6: ThunderAgent vs vLLM, openhands agent on lite, engine vllm — real engine"


def test_timeline_reads_compressed_step_records(tmp_path):
    import gzip
    import shutil

    from harness.records import JsonlWriter, RunManifest, RunPaths, StepRecord

    paths = RunPaths.create(tmp_path / "vllm-4")
    RunManifest(run_id="r", arm="vllm", programs=4, agent="synthetic", engine="des", simulated=True,
                profile="glm4.6-8xh100", start_time=0.0).write(paths.manifest)
    with JsonlWriter(paths.steps) as w:
        for i in range(300):
            w.write(StepRecord("p", i + 1, arrival=i * 2.0, start=i * 2.0, end=i * 2.0 + 1))
    with open(paths.steps, "rb") as f, gzip.open(str(paths.steps) + ".gz", "wb") as g:
        shutil.copyfileobj(f, g)
    paths.steps.unlink()
    ax = plots.draw_timeline([paths.root], window=(1, 9))
    (line,) = ax.get_lines()
    assert max(line.get_ydata()) == pytest.approx(30.0)  # one step per 2 s
    assert "SIMULATED" in ax.get_title()
    plt.close("all")


def test_nothing_to_plot():
    with pytest.raises(ValueError, match="nothing to plot"):
        plots.plot_summary([{"arm": "vllm", "programs": 4, "status": "failed", "steps_per_min": None}], "x.png")
