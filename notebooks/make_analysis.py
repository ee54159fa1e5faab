"""Writes notebooks/analysis.ipynb (kept as code so the notebook's source is reviewable and reproducible).

Run: .venv/bin/python notebooks/make_analysis.py   (the committed notebook is its output, unexecuted)
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    new_markdown_cell(
        "# thunderbench results: ThunderAgent vs vLLM\n\n"
        "Loads every sweep under `results/` (each `summary.json` written by `thunderbench reproduce`, including "
        "the committed `results/reference/`) into one pandas table and draws the comparison: steps/min vs "
        "parallel workflows per arm, the ThunderAgent/vLLM ratio, the prefix-cache hit rate and per-step latency.\n\n"
        "Simulated rows carry `simulated=True` and their hardware/model `profile`; every figure says so.\n\n"
        "Set `THUNDERBENCH_RESULTS` to read another directory."
    ),
    new_code_cell(
        "import json, os\n"
        "from pathlib import Path\n"
        "import pandas as pd\n"
        "import matplotlib.pyplot as plt\n"
        "%matplotlib inline\n\n"
        "here = Path.cwd()\n"
        "root = Path(os.environ.get('THUNDERBENCH_RESULTS') or (here.parent / 'results' if (here.parent / 'results').exists() else here / 'results'))\n"
        "summaries = sorted(root.rglob('summary.json'))\n"
        "assert summaries, f'no summary.json under {root}: run `thunderbench reproduce glm4.6` first'\n"
        "frames = []\n"
        "for p in summaries:\n"
        "    df = pd.DataFrame(json.loads(p.read_text())['rows'])\n"
        "    df['sweep'] = str(p.parent.relative_to(root))\n"
        "    frames.append(df)\n"
        "rows = pd.concat(frames, ignore_index=True)\n"
        "print(f'{len(summaries)} sweeps, {len(rows)} points from {root}')\n"
        "rows[['sweep', 'recipe', 'arm', 'programs', 'status', 'steps_per_min', 'prefix_hit_rate', 'simulated', 'profile']]"
    ),
    new_markdown_cell("## Steps/min per arm and concurrency, and ThunderAgent's ratio over vLLM"),
    new_code_cell(
        "ok = rows[rows.status == 'ok'].copy()\n"
        "table = ok.pivot_table(index=['sweep', 'programs'], columns='arm', values='steps_per_min')\n"
        "for arm in [a for a in ('thunderagent', 'continuum') if a in table.columns and 'vllm' in table.columns]:\n"
        "    table[f'{arm}/vllm'] = table[arm] / table['vllm']\n"
        "table.round(2)"
    ),
    new_markdown_cell("## The comparison figure (one row per sweep)"),
    new_code_cell(
        "style = {'vllm': ('vLLM', '#d62728', 'o'), 'continuum': ('Continuum-style', '#ff7f0e', 's'),\n"
        "         'thunderagent': ('ThunderAgent', '#1f77b4', '^')}\n"
        "sweeps = list(dict.fromkeys(ok['sweep']))\n"
        "fig, axes = plt.subplots(len(sweeps), 3, figsize=(15, 4.2 * len(sweeps)), squeeze=False)\n"
        "for i, sweep in enumerate(sweeps):\n"
        "    d = ok[ok.sweep == sweep]\n"
        "    sim = d.simulated.all()\n"
        "    tag = f\"SIMULATED ({', '.join(sorted(set(d.profile.dropna())))})\" if sim else 'real engine'\n"
        "    for arm, g in d.sort_values('programs').groupby('arm'):\n"
        "        label, color, marker = style.get(arm, (arm, None, 'x'))\n"
        "        label += ' (simulated)' if sim else ' (real)'\n"
        "        axes[i][0].plot(g.programs, g.steps_per_min, marker=marker, color=color, label=label)\n"
        "        axes[i][0].fill_between(g.programs, g.ci_low, g.ci_high, color=color, alpha=0.15)\n"
        "        axes[i][1].plot(g.programs, 100 * g.prefix_hit_rate, marker=marker, color=color, label=label)\n"
        "        axes[i][2].plot(g.programs, g.p50_step_latency_s, marker=marker, color=color, label=label + ' p50')\n"
        "        axes[i][2].plot(g.programs, g.p95_step_latency_s, marker=marker, color=color, ls=':')\n"
        "    for ax, what in zip(axes[i], ('steps/min', 'prefix-cache hit rate (%)', 'per-step latency (s), p95 dotted')):\n"
        "        ax.set_title(f'{sweep} — {tag}', fontsize=9)\n"
        "        ax.set_xlabel('parallel workflows'); ax.set_ylabel(what); ax.grid(alpha=0.3)\n"
        "        ax.set_xticks(sorted(d.programs.unique()))\n"
        "    axes[i][0].legend(fontsize=8)\n"
        "fig.tight_layout()"
    ),
    new_markdown_cell("## Throughput over time within one point (when the run directory kept its step records)"),
    new_code_cell(
        "from harness.throughput import RunData, timeline\n"
        "runs = sorted(p.parent for p in root.rglob('steps.jsonl'))\n"
        "if runs:\n"
        "    fig, ax = plt.subplots(figsize=(9, 3.5))\n"
        "    for d in runs[:6]:\n"
        "        run = RunData.load(d)\n"
        "        tl = timeline(run)\n"
        "        lab = f\"{run.manifest.arm} x {run.manifest.programs}\" + (f' (simulated, {run.manifest.profile})' if run.manifest.simulated else '')\n"
        "        ax.plot([t for t, _ in tl], [v for _, v in tl], label=lab)\n"
        "    ax.set_xlabel('minutes since start'); ax.set_ylabel('steps/min'); ax.legend(fontsize=7); ax.grid(alpha=0.3)\n"
        "else:\n"
        "    print('no step records under', root, '(reference results keep summaries only)')"
    ),
]


def build() -> nbformat.NotebookNode:
    nb = new_notebook(cells=CELLS)
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i}"  # stable ids: regenerating gives the same file
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


if __name__ == "__main__":
    out = Path(__file__).with_name("analysis.ipynb")
    nbformat.write(build(), out)
    print(out)
