"""The simulator's token estimator against real BPE tokenizers, by kind of text.

    .venv/bin/python benchmarks/sim_tokenizer_error.py

Profiles that name no tokenizer (the GPU profiles glm4.6-8xh100 and qwen3-235b-8xh100: their tokenizers are not
available offline) count prompt tokens with harness/sim/tokenizer.py's regex estimator. This prints its error,
and that of characters / 4, against the BPEs at hand offline: o200k_base and cl100k_base (200K / 100K
vocabularies, the nearest in size to the 151K of Qwen3 and GLM-4.6; read from the tiktoken files litellm
installs with itself) and the tiny model's 4,096-token BPE. The texts are this repository's own files, one per
kind an agent's prompt is made of: English prose (README.md and docs/*.md: the user guide and design notes),
Python source (harness/sim/engine/engine.py), SWE-bench issues and diffs (the toy fixtures), JSON (a reference run manifest), and shell output (`git log --stat`
of a fixed range is not stable across clones, so a fixed `ls -l`-shaped listing is generated). Prints figures;
asserts nothing. (benchmarks/openhands_prompt.py puts the same columns on the prompts our OpenHands runner sends.)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.sim.tokenizer import TINY, EstimateTokenizer, ModelTokenizer, TokenizerError, resolve_dir  # noqa: E402


def reference_encoders() -> dict[str, Callable[[str], int]]:
    """o200k_base / cl100k_base from the tiktoken cache litellm installs with itself (no download)."""
    import importlib.util

    spec = importlib.util.find_spec("litellm")  # located, not imported: importing it fetches a price map
    try:
        import tiktoken
    except ImportError:
        return {}
    if spec is None or not spec.submodule_search_locations:
        return {}
    cache = Path(list(spec.submodule_search_locations)[0]) / "litellm_core_utils" / "tokenizers"
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(cache))
    out: dict[str, Callable[[str], int]] = {}
    for name in ("o200k_base", "cl100k_base"):
        try:
            enc = tiktoken.get_encoding(name)
        except Exception:  # noqa: BLE001 - not cached: that column reads n/a
            continue
        out[name] = lambda text, enc=enc: len(enc.encode(text, disallowed_special=()))
    return out


def samples() -> dict[str, str]:
    toy = [json.loads(x) for x in (ROOT / "harness/fixtures/toy/instances.jsonl").read_text().splitlines() if x]
    manifest = next(iter(sorted((ROOT / "results/reference").rglob("manifest.json"))), None)
    listing = "\n".join(f"-rw-r--r-- 1 root root {1000 + 37 * i:6d} Dec  6 22:{i % 60:02d} src/module_{i}.py"
                        for i in range(80))
    return {
        "English prose (README + docs)": "\n\n".join(
            p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]),
        "Python source (engine.py)": (ROOT / "harness/sim/engine/engine.py").read_text(encoding="utf-8"),
        "issues (toy problem statements)": "\n\n".join(t["problem_statement"] for t in toy),
        "diffs (toy patches + tests)": "\n".join(t["patch"] + t["test_patch"] for t in toy),
        "JSON (reference manifest)": manifest.read_text(encoding="utf-8") if manifest else "{}",
        "shell listing (ls -l shaped)": listing,
    }


def main() -> int:
    refs: dict[str, Callable[[str], int]] = dict(reference_encoders())
    try:
        tiny = ModelTokenizer(resolve_dir(TINY))
        refs["tiny"] = tiny.count
    except TokenizerError as e:
        print(f"(tiny model tokenizer unavailable: {e})")
    if not refs:
        print("no reference tokenizer available offline (tiktoken files, tiny model): nothing to compare")
        return 1
    est = EstimateTokenizer()
    names = list(refs)
    print("estimator error = estimated / reference tokens - 1 (negative: the estimator counts too few)")
    short = {n: n.replace("_base", "") for n in names}
    print(f"{'text':34s}{'chars':>9s}{'regex est':>10s}{'chars/4':>9s}" + "".join(f"{n:>13s}" for n in names)
          + "".join(f"{'est/' + short[n]:>13s}{'c4/' + short[n]:>13s}" for n in names))
    tot = {k: 0 for k in ["chars", "est", "c4", *names]}
    for label, text in samples().items():
        n_est, n_c4 = est.count(text), round(len(text) / 4)
        ref = {n: f(text) for n, f in refs.items()}
        for k, v in (("chars", len(text)), ("est", n_est), ("c4", n_c4), *ref.items()):
            tot[k] += v
        print(f"{label:34s}{len(text):9,d}{n_est:10,d}{n_c4:9,d}" + "".join(f"{ref[n]:13,d}" for n in names)
              + "".join(f"{n_est / ref[n] - 1:+13.1%}{n_c4 / ref[n] - 1:+13.1%}" for n in names))
    print(f"{'all':34s}{tot['chars']:9,d}{tot['est']:10,d}{tot['c4']:9,d}" + "".join(f"{tot[n]:13,d}" for n in names)
          + "".join(f"{tot['est'] / tot[n] - 1:+13.1%}{tot['c4'] / tot[n] - 1:+13.1%}" for n in names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
