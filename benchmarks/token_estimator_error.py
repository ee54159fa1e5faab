"""How far the chars/4 token estimator (harness/traces/tokens.py) lands from real tokenizers.

Counts three kinds of text an agent trace is made of — agent prompt templates (mini-swe-agent's shipped
configs), Python source (what file views and test logs look like: mini-swe-agent's own modules) and the
OpenHands V0 fixture's messages — with the estimator, tiktoken's cl100k_base (litellm's bundled copy) and
the tiny model's BPE tokenizer (THUNDERBENCH_TINY_MODEL from scripts/setup/vllm_cpu.sh), and prints the
aggregate and mean per-text errors of the estimator. Run from the repository root:

    THUNDERBENCH_TINY_MODEL=... .venv/bin/python benchmarks/token_estimator_error.py
"""

from __future__ import annotations

import glob
import json
import os
import sysconfig
from pathlib import Path

import numpy as np

from harness.traces.tokens import bundled_cl100k, chars_estimator, hf_tokenizer


def corpus() -> dict[str, dict[str, str]]:
    site = Path(sysconfig.get_paths()["purelib"])
    kinds: dict[str, dict[str, str]] = {"agent prompt templates": {}, "python source": {}, "openhands-v0 fixture": {}}
    for f in sorted(glob.glob(str(site / "minisweagent/config/**/*.yaml"), recursive=True)):
        kinds["agent prompt templates"][f] = Path(f).read_text()
    for f in sorted(glob.glob(str(site / "minisweagent/**/*.py"), recursive=True))[:30]:
        kinds["python source"][f] = Path(f).read_text()
    for line in Path("tests/fixtures/traces/openhands_v0_output.jsonl").read_text().splitlines():
        r = json.loads(line)
        for e in r["history"]:
            t = e.get("content") or (e.get("args") or {}).get("content") or ""
            if t:
                kinds["openhands-v0 fixture"][f"{r['instance_id']}:{e['id']}"] = t
    return kinds


def main() -> None:
    est = chars_estimator()
    refs = {"cl100k_base": bundled_cl100k()}
    if os.environ.get("THUNDERBENCH_TINY_MODEL"):
        refs["tiny model"] = hf_tokenizer(os.environ["THUNDERBENCH_TINY_MODEL"])
    for kind, texts in corpus().items():
        for name, ref in refs.items():
            if ref is None:
                continue
            e = np.array([est.count(t) for t in texts.values()], dtype=float)
            r = np.array([ref.count(t) for t in texts.values()], dtype=float)
            per = e[r >= 20] / r[r >= 20] - 1
            print(f"{kind:24s} vs {name:12s}: {len(texts):3d} texts, {int(r.sum()):7d} tokens; chars/4 aggregate "
                  f"{(e.sum() / r.sum() - 1) * 100:+.1f}%, per text mean {per.mean() * 100:+.1f}% "
                  f"(mean |error| {np.abs(per).mean() * 100:.1f}%)")


if __name__ == "__main__":
    main()
