"""SWE-bench instances from a Hugging Face dataset name, a local jsonl/json/parquet file or directory,
the bundled toy fixtures, or a deterministic offline stand-in for synthetic runs.

    load_instances("lite")                      princeton-nlp/SWE-bench_Lite via `datasets` (HF cache;
                                                set HF_HUB_OFFLINE=1 to forbid network access)
    load_instances("path/to/lite.parquet")      a local copy (jsonl, json, parquet, or a dir holding
                                                <split>.jsonl / <split>.parquet)
    load_instances("toy")                       harness/fixtures/toy/instances.jsonl (real tiny repos)
    load_instances("lite-synthetic")            300 ids "synthetic-lite__0001".. (test; dev: 23): no
                                                rows, only ids, for synthetic/simulated runs offline
Synthetic stand-ins are labelled as such in every row ("synthetic": true) and in the run manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

from harness.errors import UserError

Instance = dict[str, Any]

HF_ALIASES = {
    "lite": "princeton-nlp/SWE-bench_Lite",
    "swe-bench-lite": "princeton-nlp/SWE-bench_Lite",
    "swe-bench_lite": "princeton-nlp/SWE-bench_Lite",
    "verified": "princeton-nlp/SWE-bench_Verified",
}
# SWE-bench Lite sizes (the dataset card of princeton-nlp/SWE-bench_Lite): test 300, dev 23.
SYNTHETIC_SIZES = {"test": 300, "dev": 23}
TOY_PATH = Path(__file__).parent / "fixtures" / "toy" / "instances.jsonl"


class DatasetError(UserError, RuntimeError):
    """The instances cannot be loaded; the message names the source and the fix (one line)."""


def program_id_for(instance_id: str, attempt: int = 0, run_id: str | None = None) -> str:
    """ "swe-" + sha1(f"{instance_id}:{attempt}")[:16] as in the ThunderAgent recipe, or with the run id
    prefixed (f"{run_id}:{instance_id}:{attempt}") so two runs sharing one proxy never collide."""
    key = f"{instance_id}:{attempt}" if run_id is None else f"{run_id}:{instance_id}:{attempt}"
    return "swe-" + hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]


def is_synthetic_source(source: str) -> bool:
    return source.split(":", 1)[0] == "lite-synthetic"


def _synthetic(source: str, split: str) -> list[Instance]:
    _, _, n_text = source.partition(":")
    try:
        n = int(n_text) if n_text else SYNTHETIC_SIZES.get(split, SYNTHETIC_SIZES["test"])
    except ValueError:
        raise DatasetError(f"bad source {source!r}: use lite-synthetic or lite-synthetic:N") from None
    if n < 1:
        raise DatasetError(f"bad source {source!r}: N must be >= 1")
    width = max(4, len(str(n)))
    return [{"instance_id": f"synthetic-lite__{i:0{width}d}", "repo": "synthetic/lite", "split": split,
             "problem_statement": "", "synthetic": True} for i in range(1, n + 1)]


def _read_jsonl(path: Path) -> list[Instance]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DatasetError(f"{path}:{n}: invalid JSON ({e.msg})") from None
    return rows


def _read_file(path: Path) -> list[Instance]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}: invalid JSON ({e.msg})") from None
        rows = list(data.values()) if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise DatasetError(f"{path}: expected a list of instances")
        return rows
    if suffix == ".parquet":
        import pandas as pd

        try:
            return pd.read_parquet(path).to_dict(orient="records")
        except ImportError as e:
            raise DatasetError(f"{path}: reading parquet needs pyarrow ({e}); run: uv sync") from None
    raise DatasetError(f"{path}: unsupported file type {suffix!r} (use .jsonl, .json or .parquet)")


def _read_dir(path: Path, split: str) -> list[Instance]:
    names = [split] + (["validation"] if split == "dev" else [])
    for name in names:
        for suffix in (".jsonl", ".parquet", ".json"):
            for cand in (path / f"{name}{suffix}", path / "data" / f"{name}{suffix}"):
                if cand.exists():
                    return _read_file(cand)
        found = sorted(path.glob(f"**/{name}-*.parquet"))  # HF layout: data/test-00000-of-00001.parquet
        if found:
            return [r for f in found for r in _read_file(f)]
    raise DatasetError(f"{path}: no {split}.jsonl / {split}.parquet / data/{split}-*.parquet inside")


def _load_hf(name: str, split: str) -> list[Instance]:
    try:
        import datasets  # noqa: F401  (heavy import, only for HF names)
        from datasets import load_dataset
    except ImportError:
        raise DatasetError(f"loading {name!r} needs the `datasets` package: run `uv sync` "
                           f"(or pass a local .jsonl/.parquet file, or lite-synthetic for synthetic runs)") from None
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        ds = load_dataset(name, split=split)
    except Exception as e:  # datasets raises many types (ConnectionError, DatasetNotFoundError, ValueError...)
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()
        hint = ("it is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading it"
                if offline else "the Hugging Face hub could not be reached or the name/split is wrong")
        raise DatasetError(
            f"cannot load {name!r} split {split!r}: {hint} ({why}). Fix: download it once where the hub is "
            f"reachable (python -c \"from datasets import load_dataset; load_dataset('{name}', split='{split}')\"), "
            f"or pass a local copy (.jsonl/.parquet path), or use lite-synthetic for synthetic runs") from None
    return [dict(r) for r in ds]


def apply_slice(rows: list[Instance], sl: str | slice | None) -> list[Instance]:
    if sl is None or sl == "":
        return rows
    if isinstance(sl, slice):
        return rows[sl]
    try:
        parts = [int(p) if p.strip() else None for p in str(sl).split(":")]
    except ValueError:
        raise DatasetError(f"bad slice {sl!r}: use START:STOP[:STEP], e.g. 0:5") from None
    if not 1 <= len(parts) <= 3 or (len(parts) == 1 and parts[0] is None):
        raise DatasetError(f"bad slice {sl!r}: use START:STOP[:STEP], e.g. 0:5")
    if len(parts) == 1:  # "5" means the first 5
        return rows[: parts[0]]
    return rows[slice(*parts)]


def load_instances(source: str, *, split: str = "test", slice: str | slice | None = None,  # noqa: A002
                   instances: Iterable[str] | None = None) -> list[Instance]:
    """Rows with at least `instance_id`, in the source's order; `instances` keeps only those ids (in the
    source's order; an unknown id is an error), then `slice` applies."""
    if not source:
        raise DatasetError("no dataset source given: use lite, a .jsonl/.parquet path, toy or lite-synthetic")
    path = Path(source).expanduser()
    if is_synthetic_source(source):
        rows = _synthetic(source, split)
    elif source == "toy":
        if not TOY_PATH.exists():
            raise DatasetError(f"toy fixtures not found at {TOY_PATH} (they ship with the repository; "
                               f"a partial checkout?)")
        rows = _read_jsonl(TOY_PATH)
    elif path.is_file():
        rows = _read_file(path)
    elif path.is_dir():
        rows = _read_dir(path, split)
    elif source.lower() in HF_ALIASES or ("/" in source and not source.startswith((".", "/", "~"))
                                          and path.suffix.lower() not in (".jsonl", ".json", ".parquet")):
        rows = _load_hf(HF_ALIASES.get(source.lower(), source), split)
    else:
        raise DatasetError(f"dataset source {source!r} is neither an existing file/directory nor a known "
                           f"name (lite, verified, toy, lite-synthetic, or an HF name like org/name)")
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not r.get("instance_id"):
            raise DatasetError(f"{source}: row {i + 1} has no instance_id")
    if instances is not None:
        wanted = list(dict.fromkeys(instances))
        have = {r["instance_id"] for r in rows}
        missing = [i for i in wanted if i not in have]
        if missing:
            raise DatasetError(f"{source}: unknown instance id(s): {', '.join(missing[:5])}"
                               + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""))
        keep = set(wanted)
        rows = [r for r in rows if r["instance_id"] in keep]
    return apply_slice(rows, slice)
