"""Local workspaces for the real agents: a git checkout of an instance's repository at `base_commit`.

Toy fixtures (repo `thunderbench-toy/*`) are rebuilt deterministically from harness/fixtures/make_toy.py.
Real SWE-bench repositories cannot be fetched here (no network besides package registries), so a local
run of a real instance needs a directory of mirrors: `--repos-dir DIR` (or THUNDERBENCH_REPOS_DIR) with one
git clone per repository named `<owner>__<name>` (e.g. `django__django`); the checkout is a
`git clone --shared` of it at `base_commit`. Users with Docker use the swebench instance images instead.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from harness.fixtures.make_toy import TOY_ORG, build_repo, toy_by_repo

_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1", "GIT_PAGER": "cat", "PAGER": "cat"}


class CheckoutError(RuntimeError):
    """The instance's repository cannot be prepared locally (the message says how to fix it)."""


def is_toy(instance: dict[str, Any]) -> bool:
    return str(instance.get("repo", "")).startswith(TOY_ORG + "/")


def git(cwd: str | os.PathLike[str], *args: str, check: bool = True) -> str:
    out = subprocess.run(["git", "-c", "core.quotepath=off", *args], cwd=cwd, env={**os.environ, **_GIT_ENV},
                         capture_output=True, text=True)
    if check and out.returncode != 0:
        raise CheckoutError(f"git {' '.join(args)} failed in {cwd}: {out.stderr.strip()}")
    return out.stdout


def prepare_checkout(instance: dict[str, Any], dest: str | os.PathLike[str],
                     repos_dir: str | os.PathLike[str] | None = None) -> Path:
    """Create `dest` holding the instance's repository at its base_commit (clean work tree)."""
    dest = Path(dest)
    base = instance["base_commit"]
    if is_toy(instance):
        toy = toy_by_repo(instance["repo"])
        if toy is None:
            raise CheckoutError(f"unknown toy fixture repo {instance['repo']!r}")
        head = build_repo(toy, dest)
        if head != base:
            raise CheckoutError(f"toy fixture {instance['repo']} rebuilt at {head}, instance expects {base}: "
                                "regenerate with `python -m harness.fixtures.make_toy`")
        return dest
    repos_dir = repos_dir or os.environ.get("THUNDERBENCH_REPOS_DIR")
    mirror = Path(repos_dir) / instance["repo"].replace("/", "__") if repos_dir else None
    if mirror is None or not (mirror / ".git").exists() and not (mirror / "HEAD").exists():
        raise CheckoutError(
            f"no local clone of {instance['repo']} for {instance['instance_id']}: pass --repos-dir DIR with a "
            f"clone at DIR/{instance['repo'].replace('/', '__')}, or use the docker workspace")
    dest.parent.mkdir(parents=True, exist_ok=True)
    git(dest.parent, "clone", "-q", "--shared", "--no-checkout", str(mirror), str(dest))
    git(dest, "checkout", "-q", "--detach", base)
    return dest


def diff_against(repo_dir: str | os.PathLike[str], base_commit: str) -> str:
    """The agent's patch: every change in the work tree against base_commit, new files included
    (`git add -A` then `git diff --cached`), binary diffs left out as swebench cannot apply them."""
    git(repo_dir, "add", "-A")
    patch = git(repo_dir, "diff", "--cached", "--no-color", "--no-ext-diff", base_commit)
    git(repo_dir, "reset", "-q", check=False)
    return remove_binary_diffs(patch)


def remove_binary_diffs(patch: str) -> str:
    """Drop per-file sections that git marks as binary ("Binary files ... differ" / "GIT binary patch")."""
    if "Binary files" not in patch and "GIT binary patch" not in patch:
        return patch
    sections: list[str] = []
    for part in patch.split("diff --git ")[1:]:
        if "\nBinary files " in part or "\nGIT binary patch" in part:
            continue
        sections.append("diff --git " + part)
    return "".join(sections)
