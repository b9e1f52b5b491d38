"""A real application through the engineering pipeline: a project scaffolded from the ``app``
template (FastAPI on PostgreSQL, an aiogram bot) passes its own ``make test`` in its Worker.

Real parts throughout: the real worker (Temporal dev server, podman), the scripted agent in its
sealed Worker, the lockfile's packages installed through the registry path from the session's
package caches, the test PostgreSQL beside the Worker, JUnit XML from pytest, the local forge.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import docker
from redis.asyncio import Redis
from temporalio.client import Client, WorkflowFailureError

from core.enums import EventType
from core.paths import APP_TEMPLATE_DIR
from core.settings import Settings
from db.engine import Database
from db.tables import Project
from gateway import Gateway, GatewaySettings
from infra.containers import TASK_ID, ContainerRuntime
from testing.servers import PackageCaches
from testing.workflows import (
    events,
    make_project,
    make_task,
    running_worker,
    start_engineering,
)

# The template's tests of a project with both modules (the backend's and the bot's).
TEMPLATE_TESTS = 9


def big_runtime(docker_client: docker.DockerClient) -> ContainerRuntime:
    # uv, pytest and FastAPI in one Worker need more room than the suite's smallest.
    return ContainerRuntime(docker_client, Settings(worker_memory="1g", worker_pids=256))


def caches_for(package_caches: PackageCaches) -> GatewaySettings:
    return GatewaySettings(
        pypi_cache_url=package_caches.settings.pypi_cache_url,
        npm_cache_url=package_caches.settings.npm_cache_url,
    )


async def test_a_scaffolded_backend_and_bot_passes_its_own_make_test_in_its_worker(
    temporal_client: Client,
    docker_client: docker.DockerClient,
    scripted_image: str,
    sqlite_database: Database,
    redis: Redis,
    package_caches: PackageCaches,
    short_dir: Path,
) -> None:
    project = await make_project(sqlite_database, name="both", modules=["backend", "tg_bot"])
    home = short_dir / "home"
    async with (
        Gateway(sqlite_database, caches_for(package_caches)) as gateway,
        running_worker(
            temporal_client,
            sqlite_database,
            redis,
            home,
            template_dir=APP_TEMPLATE_DIR,
            runtime=big_runtime(docker_client),
            gateway=gateway,
        ) as queue,
    ):
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
