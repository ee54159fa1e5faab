"""Grade predictions (swebench format): resolved or not, per instance.

    thunderbench evaluate RUN_DIR/predictions.jsonl [--dataset toy|lite|PATH] [--split test] ...
    python -m harness.evaluate RUN_DIR/predictions.jsonl

Two graders, chosen per instance:
  * toy fixtures (repo `thunderbench-toy/*`, harness/fixtures): done here, without Docker, the way
    swebench's eval script does it — check out base_commit, apply the model patch (`git apply`, then
    `patch --fuzz=5` as fallback), reset the test files and apply test_patch, run `pytest -rA` on the
    test files, then parse the log with swebench's `parse_log_pytest` and grade it with swebench's
    `get_eval_tests_report` / `get_resolution_status` (resolved = RESOLVED_FULL);
  * everything else: swebench's own harness (`python -m swebench.harness.run_evaluation`), which needs a
    Docker engine and the instance images (or builds them), exactly as upstream.

The summary is written next to the predictions as `<name>.eval.json` and printed as one line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from harness.agents.checkout import git, is_toy, prepare_checkout
from harness.agents.predictions import read_predictions
from harness.datasets import HF_ALIASES, DatasetError, load_instances
from harness.errors import UserError
from harness.fixtures.make_toy import TOY_ORG

Instance = dict[str, Any]


class EvaluateError(UserError, RuntimeError):
    """Evaluation cannot run (the message is one line naming the fix)."""


@dataclass
class InstanceGrade:
    instance_id: str
    resolved: bool
    status: str  # RESOLVED_FULL | RESOLVED_PARTIAL | RESOLVED_NO | empty_patch | patch_failed | error | ...
    grader: str  # "local" | "swebench"
    tests: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # swebench's tests report
    error: str | None = None


@dataclass
class EvalReport:
    predictions: str
    dataset: str
    grades: list[InstanceGrade]
    elapsed_s: float = 0.0

    @property
    def resolved(self) -> int:
        return sum(g.resolved for g in self.grades)

    def summary(self) -> str:
        n = len(self.grades)
        graders = sorted({g.grader for g in self.grades})
        return (f"resolved {self.resolved}/{n} ({100.0 * self.resolved / n if n else 0:.1f}%) "
                f"dataset={self.dataset} grader={'+'.join(graders) or '-'} in {self.elapsed_s:.1f} s")

    def to_json(self) -> dict[str, Any]:
        return {"predictions": self.predictions, "dataset": self.dataset, "resolved": self.resolved,
                "total": len(self.grades), "elapsed_s": round(self.elapsed_s, 3),
                "resolved_ids": sorted(g.instance_id for g in self.grades if g.resolved),
                "instances": [asdict(g) for g in self.grades]}


# --- local grading (toy fixtures) ---------------------------------------------------------------------

def _test_files(test_patch: str) -> list[str]:
    """Files the test patch touches (swebench: the test directives of a pytest repo)."""
    files = []
    for line in test_patch.splitlines():
        if line.startswith("diff --git a/"):
            files.append(line.split(" b/", 1)[1])
    return files


def _apply(repo: Path, patch: str) -> str | None:
    """Apply like swebench's eval script: git apply, then GNU patch with fuzz. Returns an error or None."""
    pf = repo.parent / "model.patch"
    pf.write_text(patch if patch.endswith("\n") else patch + "\n")
    attempts = (["git", "apply", "--verbose", str(pf)],
                ["git", "apply", "--verbose", "--reject", str(pf)],
                ["patch", "--batch", "--fuzz=5", "-p1", "-i", str(pf)])
    err = ""
    for cmd in attempts:
        if shutil.which(cmd[0]) is None:
            continue
        r = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
        if r.returncode == 0:
            return None
        err = (r.stderr or r.stdout).strip()
        git(repo, "checkout", "-q", "--", ".", check=False)
        git(repo, "clean", "-qfd", check=False)
    return err[-500:] or "patch did not apply"


def grade_local(instance: Instance, model_patch: str, *, timeout_s: float = 300.0,
                python: str = sys.executable) -> InstanceGrade:
    """Grade one toy-fixture prediction with swebench's log parser and grading functions."""
    from swebench.harness.grading import get_eval_tests_report, get_resolution_status
    from swebench.harness.log_parsers.python import parse_log_pytest

    iid = instance["instance_id"]
    if not model_patch or not model_patch.strip():
        return InstanceGrade(iid, False, "empty_patch", "local")
    tmp = Path(tempfile.mkdtemp(prefix="grade-"))
    try:
        repo = prepare_checkout(instance, tmp / "repo")
        err = _apply(repo, model_patch)
        if err is not None:
            return InstanceGrade(iid, False, "patch_failed", "local", error=err)
        tests = _test_files(instance["test_patch"])
        git(repo, "checkout", "-q", instance["base_commit"], "--", *tests, check=False)
        err = _apply(repo, instance["test_patch"])
        if err is not None:
            return InstanceGrade(iid, False, "test_patch_failed", "local", error=err)
        # toy fixtures need pytest only: no third-party plugin start-up (seconds each on a busy machine)
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
        env.pop("PYTHONPATH", None)
        try:
            r = subprocess.run([python, "-m", "pytest", "-rA", "-p", "no:cacheprovider", *tests], cwd=repo,
                               env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return InstanceGrade(iid, False, "timeout", "local", error=f"tests ran over {timeout_s} s")
        log = r.stdout + r.stderr
        if "No module named pytest" in log:
            raise EvaluateError(f"pytest is not installed for {python}: grading toy fixtures runs pytest")
        status_map = parse_log_pytest(log, None)
        gold = {"FAIL_TO_PASS": _json_list(instance["FAIL_TO_PASS"]),
                "PASS_TO_PASS": _json_list(instance["PASS_TO_PASS"])}
        report = get_eval_tests_report(status_map, gold)
        status = get_resolution_status(report)
        return InstanceGrade(iid, status == "RESOLVED_FULL", status, "local", tests=report)
    except EvaluateError:
        raise
    except Exception as e:  # noqa: BLE001 - one instance's failure is its grade, not the run's
        return InstanceGrade(iid, False, "error", "local", error=f"{type(e).__name__}: {e}"[:500])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _json_list(v: Any) -> list[str]:
    return list(json.loads(v)) if isinstance(v, str) else list(v)


# --- swebench's harness (real instances, Docker) -----------------------------------------------------

def _docker_ok() -> str | None:
    """None when a Docker engine answers, else the reason."""
    if shutil.which("docker") is None:
        return "the docker CLI is not installed"
    try:
        r = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                           text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    return None if r.returncode == 0 else (r.stderr.strip().splitlines() or ["docker info failed"])[-1]


def grade_swebench(preds: list[dict[str, Any]], dataset: str, split: str, *, run_id: str, max_workers: int,
                   timeout_s: int, report_dir: Path) -> list[InstanceGrade]:
    """Run swebench.harness.run_evaluation on `preds` (needs Docker) and read its report."""
    reason = _docker_ok()
    if reason is not None:
        raise EvaluateError(f"grading real SWE-bench instances needs a Docker engine ({reason}); "
                            "toy fixtures are graded locally")
    report_dir.mkdir(parents=True, exist_ok=True)
    pred_file = report_dir / f"predictions.{run_id}.jsonl"
    pred_file.write_text("".join(json.dumps(p) + "\n" for p in preds))
    dataset_name = HF_ALIASES.get(dataset, dataset)
    cmd = [sys.executable, "-m", "swebench.harness.run_evaluation", "--dataset_name", dataset_name,
           "--split", split, "--predictions_path", str(pred_file), "--run_id", run_id,
           "--max_workers", str(max_workers), "--timeout", str(timeout_s), "--report_dir", str(report_dir),
           "--instance_ids", *[p["instance_id"] for p in preds]]
    r = subprocess.run(cmd, cwd=report_dir)
    if r.returncode != 0:
        raise EvaluateError(f"swebench's run_evaluation exited {r.returncode} (logs under {report_dir})")
    model = preds[0]["model_name_or_path"].replace("/", "__")
    report_file = report_dir / f"{model}.{run_id}.json"
    if not report_file.exists():
        raise EvaluateError(f"swebench wrote no report at {report_file}")
    rep = json.loads(report_file.read_text())
    resolved, empty = set(rep.get("resolved_ids", [])), set(rep.get("empty_patch_ids", []))
    errors = set(rep.get("error_ids", [])) | set(rep.get("infra_failure_ids", []))
    out = []
    for p in preds:
        iid = p["instance_id"]
        status = ("RESOLVED_FULL" if iid in resolved else "empty_patch" if iid in empty
                  else "error" if iid in errors else "RESOLVED_NO")
        out.append(InstanceGrade(iid, iid in resolved, status, "swebench"))
    return out


# --- the entry points ----------------------------------------------------------------------------------

def _infer_dataset(predictions_path: Path, ids: Iterable[str]) -> str:
    """The run manifest's dataset when the predictions sit in a run dir; toy when every id is a toy id."""
    manifest = predictions_path.parent / "manifest.json"
    if manifest.exists():
        try:
            ds = json.loads(manifest.read_text()).get("dataset")
            if ds:
                return str(ds)
        except ValueError:
            pass
    return "toy" if all(i.startswith(TOY_ORG + "__") for i in ids) else "lite"


def evaluate(predictions_path: str | os.PathLike[str], dataset_source: str | None = None, *,
             split: str = "test", run_id: str | None = None, max_workers: int = 4, timeout_s: int = 1800,
             report_dir: str | os.PathLike[str] | None = None, write_report: bool = True) -> EvalReport:
    """Grade every prediction in `predictions_path` against the instances of `dataset_source`
    (anything harness.datasets.load_instances accepts; inferred when None)."""
    t0 = time.time()
    path = Path(predictions_path)
    if not path.exists():
        raise EvaluateError(f"{path} does not exist")
    try:
        preds = read_predictions(path)
    except ValueError as e:
        raise EvaluateError(str(e)) from None
    if not preds:
        raise EvaluateError(f"{path} holds no predictions")
    dataset = dataset_source or _infer_dataset(path, preds)
    try:
        rows = {r["instance_id"]: r for r in load_instances(dataset, split=split)}
    except DatasetError as e:
        raise EvaluateError(str(e)) from None
    missing = sorted(set(preds) - set(rows))
    if missing:
        raise EvaluateError(f"{len(missing)} predicted instance(s) are not in dataset {dataset!r} "
                            f"(e.g. {missing[0]}): pass --dataset")
    local = [iid for iid in preds if is_toy(rows[iid])]
    remote = [iid for iid in preds if not is_toy(rows[iid])]
    grades = [grade_local(rows[iid], preds[iid].get("model_patch") or "") for iid in local]
    if remote:
        rid = run_id or f"thunderbench-{int(t0)}"
        rdir = Path(report_dir) if report_dir else path.parent / f"eval-{rid}"
        grades += grade_swebench([preds[i] for i in remote], dataset, split, run_id=rid,
                                 max_workers=max_workers, timeout_s=timeout_s, report_dir=rdir)
    order = {iid: k for k, iid in enumerate(preds)}
    grades.sort(key=lambda g: order[g.instance_id])
    report = EvalReport(str(path), dataset, grades, time.time() - t0)
    if write_report:
        out = path.with_name(path.stem + ".eval.json")
        out.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="thunderbench evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("predictions", help="predictions.jsonl (or .json) in swebench format")
    ap.add_argument("--dataset", default=None,
                    help="toy | lite | a .jsonl/.parquet path | an HF name (default: the run's manifest, "
                         "else toy when every id is a toy fixture, else lite)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--run-id", default=None, help="swebench run id (real instances)")
    ap.add_argument("--max-workers", type=int, default=4, help="swebench parallel containers")
    ap.add_argument("--timeout", type=int, default=1800, help="swebench per-instance timeout (s)")
    ap.add_argument("--report-dir", default=None, help="swebench logs/report directory")
    args = ap.parse_args(argv)
    try:
        report = evaluate(args.predictions, args.dataset, split=args.split, run_id=args.run_id,
                          max_workers=args.max_workers, timeout_s=args.timeout, report_dir=args.report_dir)
    except EvaluateError as e:
        print(f"thunderbench evaluate: error: {e}", file=sys.stderr)
        return 1
    for g in report.grades:
        print(f"{g.instance_id}\t{g.status}\t{g.grader}" + (f"\t{g.error}" if g.error else ""))
    print(report.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
