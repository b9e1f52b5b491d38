"""The CLI imports with its client dependencies only, and runs from its bundle
(infra/cli_bundle.py) on a bare system python3, as a PO Worker runs it."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.cli_bundle import (
    REPO_ROOT,
    bundle_hash,
    client_distributions,
    ensure_bundle,
    source_files,
)

SYSTEM_PYTHON = Path("/usr/bin/python3")
# What only the stack, the worker or the image builder need: never imported by the CLI itself.
HEAVY = (
    "activities", "api", "stack", "workflows", "docker", "psutil", "structlog", "temporalio",
    "jinja2", "yaml", "sqlalchemy", "redis", "uvicorn", "fastapi", "copier",
)  # fmt: skip


def system_python_matches() -> bool:
    if not SYSTEM_PYTHON.exists():
        return False
    done = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
    )
    return done.stdout.strip() == str(sys.version_info[:2])


needs_system_python = pytest.mark.skipif(
    not system_python_matches(), reason="no /usr/bin/python3 of this venv's minor version"
)


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="o-tools-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_importing_the_cli_needs_no_heavy_package() -> None:
    code = (
        "import json, sys, cli.main\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout) == []


def test_the_bundle_is_built_once_and_small(root: Path) -> None:
    first = ensure_bundle(root)
    again = ensure_bundle(root)
    assert first.built and not again.built
    assert again.path == first.path and first.path.name.startswith("cli-")
    assert [p.name for p in root.iterdir() if p.is_dir()] == [first.path.name]
    files = [p for p in first.path.rglob("*") if p.is_file()]
    assert not any("__pycache__" in p.parts or p.suffix == ".pyc" for p in files)
    assert sum(p.stat().st_size for p in files) < 40e6
    # Workers run as another uid: everything readable, directories enterable.
    for path in [first.path, *first.path.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o444 == 0o444, path
        if path.is_dir():
            assert mode & 0o111 == 0o111, path
    assert os.access(first.launcher, os.X_OK)
    lib = first.lib
    assert (lib / "cli" / "main.py").is_file() and (lib / "core" / "settings.py").is_file()
    assert not (lib / "core" / "logging.py").exists()  # the CLI does not import it
    names = {p.name.split("-")[0].lower() for p in lib.glob("*.dist-info")}
    assert {"typer", "rich", "pydantic", "pydantic_core", "pydantic_settings"} <= names
    assert not {"docker", "temporalio", "structlog", "httpx"} & names


def test_the_name_follows_the_inputs() -> None:
    dists, sources = client_distributions(), source_files()
    assert bundle_hash(dists, sources) == bundle_hash(dists, sources)
    assert bundle_hash(dists, sources[:-1]) != bundle_hash(dists, sources)
    assert bundle_hash(dists[:-1], sources) != bundle_hash(dists, sources)


def test_two_builders_at_once_make_one_bundle() -> None:
    directory = Path(tempfile.mkdtemp(prefix="o-tools-"))
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from infra.cli_bundle import ensure_bundle\n"
        "b = ensure_bundle(Path(sys.argv[1]))\n"
        "print(json.dumps([str(b.path), b.built]))\n"
    )
    try:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, str(directory)],
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        results = [json.loads(proc.communicate(timeout=120)[0]) for proc in procs]
        assert all(proc.returncode == 0 for proc in procs)
        assert len({path for path, _ in results}) == 1
        assert [built for _, built in results].count(True) == 1
        assert [p.name for p in directory.iterdir() if p.is_dir()] == [Path(results[0][0]).name]
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@needs_system_python
def test_the_launcher_runs_on_the_system_python_alone(root: Path, tmp_path: Path) -> None:
    bundle = ensure_bundle(root)
    # No venv, no site-packages of ours, nothing of the repository: PATH finds /usr/bin/python3.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "ORCHESTRATOR_HOME": str(tmp_path)}
    helped = subprocess.run(
        [str(bundle.launcher), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert helped.returncode == 0, helped.stderr
    assert "Usage: orchestrator" in helped.stdout and "respond" in helped.stdout
    # Every module of the CLI imports there (the lazy imports of stack-only commands aside).
    modules = sorted(
        ".".join(p.relative_to(bundle.lib).with_suffix("").parts)
        for p in (bundle.lib / "cli").glob("*.py")
    )
    imported = subprocess.run(
        [str(SYSTEM_PYTHON), "-I", "-S", "-B", "-c",
         "import importlib, sys; sys.path.insert(0, sys.argv[1]); "
         "[importlib.import_module(m) for m in sys.argv[2:]]; print(sys.path)",
         str(bundle.lib), *modules],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    assert str(REPO_ROOT) not in imported.stdout
    # It talks to an API like the installed CLI: here none answers, which is exit 4.
    unreachable = subprocess.run(
        [str(bundle.launcher), "project", "list", "--json"],
        cwd=tmp_path,
        env={**env, "ORCHESTRATOR_API_URL": "http://127.0.0.1:9"},
        capture_output=True,
        text=True,
    )
    assert unreachable.returncode == 4, unreachable.stderr
    assert "cannot reach the API" in json.loads(unreachable.stdout)["error"]["message"]
    assert not list(bundle.path.rglob("__pycache__"))  # nothing written into it
