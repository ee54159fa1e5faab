"""The proxy's install stays lean, and a missing extra is one readable line.

The core distribution is what `thunderagent` needs to serve; the bench (pandas, matplotlib, datasets, ...) and
the Docker SDK are extras. Checked three ways: the locked dependency closure of the core, the modules the
proxy actually imports when it builds its app, and the message a user gets when an extra is missing.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# what a proxy-only deployment must never pull or import
HEAVY = ("pandas", "matplotlib", "datasets", "pyarrow", "docker", "numpy", "typer", "rich", "tokenizers")


def _core_closure() -> set[str]:
    """Every locked package the core (no extras) installs, following dependency extras such as uvicorn's."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    packages = {p["name"]: p for p in lock["package"]}
    seen: set[str] = set()
    todo = list(packages["thunderbench"]["dependencies"])
    while todo:
        dep = todo.pop()
        pkg = packages[dep["name"]]
        for extra in dep.get("extra", []):
            todo.extend(pkg.get("optional-dependencies", {}).get(extra, []))
        if dep["name"] in seen:
            continue
        seen.add(dep["name"])
        todo.extend(pkg.get("dependencies", []))
    return seen


def test_locked_core_closure_is_lean():
    closure = _core_closure()
    assert {"fastapi", "uvicorn", "httpx", "aiohttp", "prometheus-client", "sortedcontainers"} <= closure
    assert "uvloop" in closure  # uvicorn[standard] is followed, so the walk does see extras
    assert not closure & set(HEAVY), f"the core install pulls {sorted(closure & set(HEAVY))}"


def test_extras_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    bench = " ".join(extras["bench"])
    for lib in ("pandas", "matplotlib", "datasets", "pydantic", "typer"):
        assert lib in bench
    assert extras["docker"] == ["docker>=7.1,<8"]  # a range, not an exact pin
    assert extras["all"] == ["thunderbench[bench,docker,openhands,miniswe,eval]"]
    assert not any(d.split("[")[0].split(">")[0].split("=")[0].strip() in HEAVY for d in project["dependencies"])
    # the README's set-up command installs everything
    assert "${THUNDERBENCH_EXTRAS-all}" in (ROOT / "scripts/setup/setup.sh").read_text()


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_proxy_import_graph_is_lean():
    """Build the proxy's app (as `thunderagent` does before serving) and list what got imported."""
    r = _run(f"""
        import sys
        from ThunderAgent.cli import parse_config
        from ThunderAgent.app import create_app
        import ThunderAgent.__main__, ThunderAgent.httpserver
        create_app(parse_config(["--backends", "http://127.0.0.1:9", "--router", "tr"]))
        heavy = set({HEAVY!r} + ("harness",)) - {{"rich"}}  # httpx imports rich for its own CLI when present
        print(" ".join(sorted(m for m in sys.modules if m.split(".")[0] in heavy)))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"the proxy imported {r.stdout.strip()}"


# makes `import <name>` fail as it does when the library is not installed
_BLOCK = """
    import sys
    from importlib.abc import MetaPathFinder
    class Block(MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None
    sys.meta_path.insert(0, Block())
"""


@pytest.mark.parametrize("blocked,argv", [
    ("typer", ["recipes"]),  # the CLI itself needs the bench extra
    ("matplotlib", ["plot", "/nonexistent-run-dir", "-o", "/tmp/never.png"]),  # ... and commands importing lazily
])
def test_harness_without_bench_extra_is_one_line(blocked, argv):
    r = _run(f"""
        BLOCKED = {{{blocked!r}}}
        {textwrap.indent(textwrap.dedent(_BLOCK), "        ").strip()}
        from harness.entry import main
        main({argv!r})
    """)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert f"{blocked} is not installed" in lines[0] and "'bench' extra" in lines[0]
    assert "pip install 'thunderbench[bench]'" in lines[0]


def test_unrelated_missing_module_is_not_blamed_on_an_extra():
    from harness.entry import missing_extra_line

    assert missing_extra_line(ModuleNotFoundError("x", name="harness.nope")) is None
    assert "'docker' extra" in missing_extra_line(ModuleNotFoundError("x", name="docker.errors"))


def test_proxy_reclaim_docker_without_sdk_is_one_line_exit_2():
    r = _run("""
        import sys
        sys.modules["docker"] = None  # what find_spec reports for an absent package
        from ThunderAgent.cli import main
        main(["--backends", "http://127.0.0.1:9", "--reclaim", "docker", "--port", "1"])
    """)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "--reclaim docker" in lines[0] and "pip install 'thunderbench[docker]'" in lines[0]
