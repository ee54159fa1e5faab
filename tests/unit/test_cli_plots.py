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


def test_labels_say_simulated_with_profile(tmp_path, monkeypatch):
    seen = {}
    real_savefig = matplotlib.figure.Figure.savefig

    def spy(self, *a, **k):
        seen["legend"] = [t.get_text() for ax in self.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
        seen["titles"] = [ax.get_title() for ax in self.axes]
        seen["texts"] = [t.get_text() for ax in self.axes for t in ax.texts]
        return real_savefig(self, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    out = plots.plot_summary(_rows(), tmp_path / "f.png", title="t")
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "ThunderAgent (simulated, glm4.6-8xh100)" in seen["legend"]
    assert "vLLM (simulated, glm4.6-8xh100)" in seen["legend"]
    assert all("SIMULATED (glm4.6-8xh100)" in t for t in seen["titles"])
    assert any("3.00× vLLM" in t for t in seen["texts"]) and any("1.22× vLLM" in t for t in seen["texts"])
    plt.close("all")


def test_real_and_simulated_recipes_get_their_own_rows(tmp_path, monkeypatch):
    seen = {}
    real_savefig = matplotlib.figure.Figure.savefig

    def spy(self, *a, **k):
        seen["titles"] = [ax.get_title() for ax in self.axes]
        return real_savefig(self, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    plots.plot_summary(_rows(True, "glm4.6") + _rows(False, "qwen3-235b"), tmp_path / "f.png")
    assert len(seen["titles"]) == 6
    assert sum("SIMULATED" in t for t in seen["titles"]) == 3 and sum("real engine" in t for t in seen["titles"]) == 3


def test_nothing_to_plot():
    with pytest.raises(ValueError, match="nothing to plot"):
        plots.plot_summary([{"arm": "vllm", "programs": 4, "status": "failed", "steps_per_min": None}], "x.png")
