"""A real application through the engineering pipeline: a project scaffolded from the ``app``
template (FastAPI on PostgreSQL, an aiogram bot) passes its own ``make test`` in its Worker, and
a feature that installs a package and writes to the database goes to a pull request.

Real parts throughout: the real worker (Temporal dev server, podman), the scripted agent in its
sealed Worker, ``uv add`` against PyPI through the egress proxy, the lockfile's packages installed
through the registry path from the session's package caches, the test PostgreSQL beside the
Worker, JUnit XML from pytest, the local forge. The scripted agent plays cli/demo_notes.py:
round 1 adds python-slugify and notes with one failing test, round 2 fixes it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import docker
from redis.asyncio import Redis
from sqlmodel import select
from temporalio.client import Client, WorkflowFailureError

from cli.demo_notes import FAILING_TEST, PACKAGE, SPEC, notes_script
from core.enums import EventType, ProjectTemplate, TaskStatus
from core.settings import Settings
from db.engine import Database
from db.tables import Project, PullRequest
from gateway import Gateway, GatewaySettings
from infra.containers import TASK_ID, ContainerRuntime
from testing.servers import PackageCaches
from testing.workflows import (
    bare_repositories,
    events,
    git_out,
    make_project,
    make_task,
    running_worker,
    start_engineering,
)

# The template's own tests (health, items, migrations) and the feature's two.
TESTS_AFTER = 8
# The template's tests of a project with both modules (the backend's and the bot's).
TEMPLATE_TESTS = 9


def big_runtime(docker_client: docker.DockerClient) -> ContainerRuntime:
    # uv, pytest and FastAPI in one Worker need more room than the suite's smallest.
    return ContainerRuntime(docker_client, Settings(worker_memory="1g", worker_pids=256))


@contextlib.asynccontextmanager
async def app_worker(
    client: Client,
    db: Database,
    redis: Redis,
    home: Path,
    docker_client: docker.DockerClient,
    package_caches: PackageCaches,
) -> AsyncIterator[str]:
    """The real worker for app template projects: a gateway to the session's package caches,
    Workers with room for uv, pytest and FastAPI; yields its task queue."""
    caches = GatewaySettings(
        pypi_cache_url=package_caches.settings.pypi_cache_url,
        npm_cache_url=package_caches.settings.npm_cache_url,
    )
    async with (
        Gateway(db, caches) as gateway,
        running_worker(
            client, db, redis, home, runtime=big_runtime(docker_client), gateway=gateway
        ) as queue,
    ):
        yield queue


async def test_a_scaffolded_backend_and_bot_passes_its_own_make_test_in_its_worker(
    temporal_client: Client,
    docker_client: docker.DockerClient,
    scripted_image: str,
    sqlite_database: Database,
    redis: Redis,
    package_caches: PackageCaches,
    short_dir: Path,
) -> None:
    project = await make_project(
        sqlite_database, name="both", modules=["backend", "tg_bot"], template=ProjectTemplate.app
    )
    home = short_dir / "home"
    async with app_worker(
        temporal_client, sqlite_database, redis, home, docker_client, package_caches
    ) as queue:
        first = await run_task(temporal_client, sqlite_database, redis, project, queue, "one")
        environments = list((home / "dependencies" / project.id / "environments").iterdir())
        installed = (environments[0] / ".installed").stat().st_mtime_ns
        second = await run_task(temporal_client, sqlite_database, redis, project, queue, "two")

    for task, summaries in (first, second):
        # The project's make test: the lockfile's packages through the registry path, pytest's
        # JUnit XML, the backend's tests against the test PostgreSQL, the bot's against its
        # stand-in.
        assert summaries == [f"{TEMPLATE_TESTS} tests passed"]
        # The sidecar went with the Worker.
        left = docker_client.containers.list(all=True, filters={"label": f"{TASK_ID}={task}"})
        assert left == []
    # Installed once for this lockfile: the second task found the first one's environment.
    assert len(environments) == 1
    assert list(environments[0].parent.iterdir()) == environments
    assert (environments[0] / ".installed").stat().st_mtime_ns == installed


async def run_task(
    client: Client, db: Database, redis: Redis, project: Project, queue: str, name: str
) -> tuple[str, list[str]]:
    """A task whose agent only writes a note; its id and the summaries of its test runs."""
    note = {"path": f"NOTES-{name}.md", "content": "Scaffolded; nothing changed yet.\n"}
    script = {"rounds": [{"write": note, "report": "completed", "summary": "A note."}]}
    task = await make_task(db, redis, project, "Add a note", agent="scripted", script=script)
    with contextlib.suppress(WorkflowFailureError):  # the summaries say why
        await (await start_engineering(client, task, queue)).result()
    rows = await events(db, task.id)
    tester = [e for e in rows if e.stage == "tester" and e.type == EventType.stage_completed]
    return task.id, [e.data["summary"] for e in tester]


async def test_a_backend_feature_with_a_package_and_the_database_goes_to_a_pull_request(
    temporal_client: Client,
    docker_client: docker.DockerClient,
    scripted_image: str,
    sqlite_database: Database,
    redis: Redis,
    package_caches: PackageCaches,
    short_dir: Path,
) -> None:
    home = short_dir / "home"
    project = await make_project(
        sqlite_database, name="notes", modules=["backend"], template=ProjectTemplate.app
    )
    task = await make_task(
        sqlite_database,
        redis,
        project,
        SPEC,
        agent="scripted",
        script=notes_script("notes"),
        max_rounds=3,
    )
    async with app_worker(
        temporal_client, sqlite_database, redis, home, docker_client, package_caches
    ) as queue:
        output = await (await start_engineering(temporal_client, task, queue)).result()

    assert output.status == TaskStatus.completed, output
    result = output.result
    assert result is not None and result.rounds == 2
    # The dependency is the project's: pyproject.toml and its lockfile are in the pull request,
    # the environment and the test report are not.
    changed = set(result.files_changed)
    assert {"pyproject.toml", "uv.lock", "app/routes/notes.py", "tests/test_notes.py"} <= changed
    assert not {name for name in changed if name.startswith((".venv", "reports/"))}
    # The lockfile stays portable: PyPI's URLs, none of the Worker's registry path.
    [repository] = bare_repositories(home / "forge")
    lock = git_out(repository, "show", f"{result.branch}:uv.lock")
    assert 'name = "python-slugify"' in lock and "127.0.0.1" not in lock
    assert 'source = { registry = "https://pypi.org/simple" }' in lock

    rows = await events(sqlite_database, task.id)
    tester = [e for e in rows if e.stage == "tester" and e.type == EventType.stage_completed]
    assert [e.data["passed"] for e in tester] == [False, True]
    # Round 1: the failing test named from pytest's JUnit XML, against the real database.
    assert tester[0].data["failing_tests"] == [FAILING_TEST]
    assert "no note shopping-list" in tester[0].data["failure_messages"][FAILING_TEST]
    assert tester[1].data["summary"] == f"{TESTS_AFTER} tests passed"
    developer = [e for e in rows if e.stage == "developer" and e.type == EventType.stage_completed]
    assert f"- {FAILING_TEST}:" in developer[1].message

    # The pull request's test outcome counts pytest's tests.
    async with sqlite_database.session() as session:
        stored = (await session.exec(select(PullRequest))).all()
    assert len(stored) == 1 and stored[0].test_outcome is not None
    assert stored[0].test_outcome["passed"] == TESTS_AFTER
    assert stored[0].test_outcome["failed"] == 0

    # The Tester installed the new lockfile's packages through the registry path, once: both
    # rounds used that environment.
    assert f"'{PACKAGE.split('==')[0]}'" in package_caches.pypi.log()
    environments = home / "dependencies" / project.id / "environments"
    assert len(list(environments.iterdir())) == 1
    left = docker_client.containers.list(all=True, filters={"label": f"{TASK_ID}={task.id}"})
    assert left == []
