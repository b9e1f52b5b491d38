"""The app template (deploy/templates/app) as the scaffold activity renders it: each combination
of modules gets its files, a lockfile matching its pyproject.toml and a manifest with a typed
environment contract; a `backend,tg_bot` project installs from its lockfile with the real uv and
passes its own `make test` against a real PostgreSQL, and a broken change fails it with the
failing test named in the JUnit XML; a backend runs as its manifest says."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest
import yaml
from temporalio.testing import ActivityEnvironment

from activities.forge import ForgeActivities, ScaffoldRequest
from core.paths import APP_TEMPLATE_DIR
from infra.env_analyzer import Allocation, TestSpec, analyze, read_manifest, read_test_spec
from infra.forges.local import LocalForge
from infra.test_reports import TestReport, parse_junit
from testing import servers
from testing.waiting import eventually
from testing.workflows import git_out
from tests.conftest import fresh_postgres_database

COMBINATIONS = [["backend"], ["tg_bot"], ["backend", "tg_bot"]]
EVERY_PROJECT = {
    "pyproject.toml",
    "uv.lock",
    "Dockerfile",
    "compose.yaml",
    ".orchestrator.yml",
    "Makefile",
    "README.md",
    "AGENTS.md",
    "CLAUDE.md",
    ".gitignore",
    ".copier-answers.yml",
    "app/settings.py",
    "tests/conftest.py",
}
BACKEND = {
    "app/api.py",
    "app/__main__.py",
    "app/models.py",
    "app/routes/items.py",
    "alembic.ini",
    "migrations/env.py",
    "migrations/versions/0001_create_items.py",
    "tests/test_health.py",
    "tests/test_items.py",
    "tests/test_migrations.py",
}
TG_BOT = {"app/bot/handlers.py", "app/bot/runner.py", "tests/fake_telegram.py", "tests/test_bot.py"}
# The packages that tell a lockfile's modules apart.
BACKEND_PACKAGES = {"fastapi", "sqlalchemy", "alembic", "psycopg"}
TG_BOT_PACKAGES = {"aiogram"}


# A person's description, with what could break a file it lands in: quotes, markup, a long line.
DESCRIPTION = 'Keeps "notes" & <lists> for the team\'s café, ' + "and much more besides " * 8


async def render(tmp_path: Path, modules: list[str]) -> Path:
    """Scaffold through the activity, then clone: what a Developer stage checks out."""
    activities = ForgeActivities(APP_TEMPLATE_DIR, LocalForge(tmp_path / "forge"))
    request = ScaffoldRequest(
        project_id="p", project_name="notes", description=DESCRIPTION, modules=modules
    )
    result = await ActivityEnvironment().run(activities.scaffold_repository, request)
    clone = tmp_path / "clone"
    git_out(tmp_path, "clone", "--quiet", result.repository, str(clone))
    return clone


def uv_env(project: Path | None = None) -> dict[str, str]:
    """uv (a dev dependency, beside this interpreter) with one cache for the whole suite, kept
    between runs, so the template's packages download once. With a project: its environment
    kept by its lockfile's hash (as the Tester keeps one per lockfile), so a second run finds
    it installed and compiled."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "DATABASE_URL")}
    cache = servers.test_images_root()
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "UV_CACHE_DIR": str(cache / "uv-cache"),
        "UV_PYTHON_DOWNLOADS": "never",  # the interpreter on PATH; no download from outside PyPI
        "UV_NO_PROGRESS": "1",
    }
    if project is not None:
        lock_hash = hashlib.sha256((project / "uv.lock").read_bytes()).hexdigest()[:16]
        env["UV_PROJECT_ENVIRONMENT"] = str(cache / "uv-envs" / lock_hash)
    return env


def run(
    command: list[str], project: Path, env: dict[str, str], timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=project, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("modules", COMBINATIONS, ids="+".join)
async def test_each_combination_has_its_files_lockfile_and_contract(
    tmp_path: Path, modules: list[str]
) -> None:
    project = await render(tmp_path, modules)
    files = set(git_out(project, "ls-files").splitlines())
    assert files >= EVERY_PROJECT
    for module, module_files in (("backend", BACKEND), ("tg_bot", TG_BOT)):
        assert module_files <= files if module in modules else not (module_files & files)

    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["description"] == f"notes: {DESCRIPTION}"
    assert DESCRIPTION in (project / "README.md").read_text()

    # The committed lockfile is the one of these modules, and uv agrees it matches the project.
    locked = {p["name"] for p in tomllib.loads((project / "uv.lock").read_text())["package"]}
    assert (BACKEND_PACKAGES <= locked) == ("backend" in modules)
    assert (TG_BOT_PACKAGES <= locked) == ("tg_bot" in modules)
    checked = await asyncio.to_thread(run, ["uv", "lock", "--check"], project, uv_env())
    assert checked.returncode == 0, checked.stderr

    manifest = read_manifest((project / ".orchestrator.yml").read_text())
    assert read_test_spec((project / ".orchestrator.yml").read_text()) == TestSpec(
        command="make test", junit="reports/junit.xml"
    )
    kinds = {name: var.kind for name, var in manifest.env.items()}
    assert kinds["LOG_LEVEL"] == "literal"
    spec = analyze(project)
    assert spec.env_contract == manifest.env
    if "backend" in modules:
        assert manifest.backing_services == ["postgresql"]
        assert spec.service == "backend" and spec.port_env == "PORT"
        assert spec.health_path == "/health" and spec.command == "python -m app"
        assert kinds["SECRET_KEY"] == "generated_secret"
        allocated = {
            name: var.resource for name, var in manifest.env.items() if isinstance(var, Allocation)
        }
        assert allocated == {"PORT": "port", "DATABASE_URL": "postgresql"}
    else:
        assert manifest.backing_services == [] and "DATABASE_URL" not in kinds
        assert spec.service == "tg_bot" and spec.port is None
    if "tg_bot" in modules:
        assert kinds["TELEGRAM_BOT_TOKEN"] == "user_secret"
        # Only what a person must give is required of them; the deploy supplies the rest.
        assert [name for name, kind in kinds.items() if kind == "user_secret"] == [
            "TELEGRAM_BOT_TOKEN"
        ]

    compose = yaml.safe_load((project / "compose.yaml").read_text())
    expected = (["app", "db"] if "backend" in modules else []) + (
        ["bot"] if "tg_bot" in modules else []
    )
    assert sorted(compose["services"]) == sorted(expected)
    dockerfile = (project / "Dockerfile").read_text()
    assert dockerfile.startswith("# ") and "FROM python:3.12-slim" in dockerfile
    assert "uv sync --locked" in dockerfile and "\nUSER app\n" in dockerfile
    assert "AGENTS.md" in (project / "CLAUDE.md").read_text()

    # What `make lint` checks holds of the code as rendered (ruff with the project's settings).
    for lint in (["check", "."], ["format", "--check", "."]):
        linted = await asyncio.to_thread(
            run, [sys.executable, "-m", "ruff", *lint], project, dict(os.environ)
        )
        assert linted.returncode == 0, linted.stdout + linted.stderr


async def test_a_backend_and_bot_project_passes_its_own_make_test(
    tmp_path: Path, postgres_server_url: str
) -> None:
    project = await render(tmp_path, ["backend", "tg_bot"])
    env = uv_env(project)
    started = time.monotonic()
    synced = await asyncio.to_thread(run, ["uv", "sync", "--locked"], project, env)
    assert synced.returncode == 0, synced.stderr
    sync_seconds = time.monotonic() - started

    database = await fresh_postgres_database(postgres_server_url)
    env["TEST_DATABASE_URL"] = database.replace("postgresql+asyncpg://", "postgresql://")
    started = time.monotonic()
    report = await asyncio.to_thread(make_test, project, env)
    assert report.passed, report.output
    assert report.tests_run == 9 and report.failures == report.errors == 0
    print(f"uv sync --locked {sync_seconds:.1f}s, make test {time.monotonic() - started:.1f}s")

    # The contract names every setting the app reads, and its literals are the app's defaults.
    defaults = await asyncio.to_thread(settings_defaults, project, env)
    contract = read_manifest((project / ".orchestrator.yml").read_text()).env
    assert set(contract) == set(defaults)
    for name, var in contract.items():
        if var.kind == "literal":
            assert var.value == defaults[name], name

    linted = await asyncio.to_thread(run, ["make", "lint"], project, env)
    assert linted.returncode == 0, linted.stdout + linted.stderr

    # Without a database the tests that need one fail, saying what to set.
    no_database = {k: v for k, v in env.items() if k != "TEST_DATABASE_URL"}
    no_database["PYTEST_ARGS"] = "tests/test_items.py"
    refused = await asyncio.to_thread(make_test, project, no_database)
    assert not refused.passed and refused.errors == refused.tests_run == 3
    assert all("set TEST_DATABASE_URL" in m for m in refused.failure_messages.values())

    # A broken change: creating an item answers 200 instead of 201.
    items = project / "app" / "routes" / "items.py"
    items.write_text(items.read_text().replace("HTTP_201_CREATED", "HTTP_200_OK"))
    broken = await asyncio.to_thread(make_test, project, env)
    assert not broken.passed and broken.failures == 1 and broken.tests_run == 9
    assert broken.failing_tests == ["tests.test_items.test_an_item_is_created_and_listed"]
    assert "201" in broken.failure_messages[broken.failing_tests[0]]


def make_test(project: Path, env: dict[str, str]) -> TestReport:
    """`make test` as the Tester runs it: the outcome read from the JUnit XML the manifest
    names, which the run must have (re)written."""
    spec = read_test_spec((project / ".orchestrator.yml").read_text())
    assert spec.junit is not None
    junit = project / spec.junit
    junit.unlink(missing_ok=True)
    done = run(["make", "test"], project, env)
    assert junit.is_file(), done.stdout + done.stderr
    return parse_junit(junit.read_text(), done.returncode, done.stdout + done.stderr)


def settings_defaults(project: Path, env: dict[str, str]) -> dict[str, str]:
    """The app's settings by variable name with their defaults as the environment spells them,
    from the project's own interpreter."""
    script = (
        "import json; from app.settings import Settings\n"
        "def text(v):\n"
        "    v = getattr(v, 'get_secret_value', lambda: v)()\n"
        "    return str(v).lower() if isinstance(v, bool) else str(v)\n"
        "print(json.dumps({n.upper(): text(f.default) for n, f in Settings.model_fields.items()}))"
    )
    clean = {k: v for k, v in env.items() if k != "TEST_DATABASE_URL"}
    done = run(["uv", "run", "--locked", "python", "-c", script], project, clean, timeout=120)
    assert done.returncode == 0, done.stderr
    defaults: dict[str, str] = json.loads(done.stdout)
    return defaults


async def test_the_backend_runs_as_its_manifest_says(
    tmp_path: Path, postgres_server_url: str
) -> None:
    """The manifest's command, in the project's locked environment, on a fresh database: the
    backend migrates it, answers its health path and keeps what it is given."""
    project = await render(tmp_path, ["backend"])
    env = uv_env(project)
    synced = await asyncio.to_thread(run, ["uv", "sync", "--locked", "--no-dev"], project, env)
    assert synced.returncode == 0, synced.stderr
    spec = analyze(project)
    assert spec.command and spec.port_env
    port = servers.free_port()
    database = await fresh_postgres_database(postgres_server_url)
    venv_bin = Path(env["UV_PROJECT_ENVIRONMENT"]) / "bin"
    env |= {
        "PATH": f"{venv_bin}{os.pathsep}{env['PATH']}",  # as a deploy runs it: the env first
        "DATABASE_URL": database.replace("postgresql+asyncpg://", "postgresql://"),
        spec.port_env: str(port),
        "HOST": "127.0.0.1",
    }
    log = tmp_path / "backend.log"
    with log.open("w") as output:
        backend = await asyncio.create_subprocess_exec(
            *shlex.split(spec.command), cwd=project, env=env, stdout=output, stderr=output
        )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

            async def health() -> httpx.Response | None:
                assert backend.returncode is None, f"the backend exited: {log.read_text()}"
                try:
                    return await client.get(spec.health_path)
                except httpx.TransportError:
                    return None

            response = await eventually(health, "the backend's health path", within=60)
            assert response.status_code == 200, response.text
            assert response.json() == {"status": "ok", "database": "ok"}
            created = await client.post("/items", json={"name": "kept"})
            assert created.status_code == 201, created.text
            assert (await client.get("/items")).json() == [created.json()]
    finally:
        backend.terminate()
        await asyncio.wait_for(backend.wait(), 10)
    # uvicorn stops cleanly on SIGTERM (and then exits by the signal, as it came).
    assert "Application shutdown complete" in log.read_text()
