"""A PO Worker drives the real ``orchestrator`` CLI against the real API, with no network.

The API app serves in this process on a Unix socket (as ``python -m api`` does); the Worker is the
scripted image made by ``WorkerActivities.create_container`` with ``ApiAccess``: the socket's
directory and the CLI bundle are mounted into it, the forwarder exposes the socket on a loopback
port, and a key scoped to the chat is written where the CLI finds it, and nowhere else.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
import pytest_asyncio
from redis.asyncio import Redis
from sqlmodel import select
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.workers import ApiAccess, CreateContainerInput, WorkerActivities
from api.app import create_app
from core.settings import Settings
from db.engine import Database
from db.tables import Project, Task
from db.tasks import TaskService
from db.users import create_user, parse_prefix
from gateway import Gateway
from infra.containers import ContainerRuntime, ExecResult, container_name
from infra.workers import API_MOUNT, CLI_KEY_FILE, CLI_MOUNT
from testing.workflows import small_runtime
from tests.api.conftest import live_server


@pytest.fixture
def home(short_dir: Path) -> Path:
    """Short: the API's socket lives under it."""
    return short_dir


@dataclass
class PO:
    settings: Settings
    db: Database
    activities: WorkerActivities
    runtime: ContainerRuntime
    image: str
    user_id: str
    made: list[str]

    async def create(self, worker_id: str, chat_id: int, allowed: str = "PRODUCT_OWNER") -> str:
        request = CreateContainerInput(
            worker_id=worker_id,
            task_id=f"po-{chat_id}",
            workflow_id=f"po-{chat_id}",
            agent="scripted",
            image=self.image,
            api=ApiAccess(user_id=self.user_id, chat_id=chat_id, allowed_commands=allowed),
        )
        self.made.append(worker_id)
        return await ActivityEnvironment().run(self.activities.create_container, request)

    async def run(self, worker_id: str, *argv: str, **env: str) -> ExecResult:
        """The CLI as the Worker's agent runs it: by name, from PATH, as the Worker's user."""
        return await self.runtime.exec(
            worker_id, ["orchestrator", *argv], env=env, workdir="/workspace", timeout=60
        )

    async def json(self, worker_id: str, *argv: str, expect: int = 0, **env: str) -> Any:
        done = await self.run(worker_id, *argv, "--json", **env)
        assert done.exit_code == expect, (done.exit_code, done.stdout, done.stderr)
        return json.loads(done.stdout)


@pytest_asyncio.fixture
async def po(
    home: Path,
    docker_client: docker.DockerClient,
    scripted_image: str,
    sqlite_database: Database,
    redis: Redis,
    temporal_client: Client,
) -> AsyncIterator[PO]:
    settings = Settings(home=home, worker_memory="256m", worker_pids=128)
    app = create_app(settings, database=sqlite_database, redis=redis, temporal=temporal_client)
    runtime = small_runtime(docker_client)
    gateway = Gateway(sqlite_database)  # every Worker's way to its package registries
    activities = WorkerActivities(
        settings,
        redis=redis,
        client=temporal_client,
        gateway=gateway,
        runtime=runtime,
        tasks=TaskService(sqlite_database, redis),
    )
    async with sqlite_database.session() as session:
        user = await create_user(session, name=f"po-{uuid.uuid4().hex[:6]}")
    made: list[str] = []
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(gateway)
        await stack.enter_async_context(app.router.lifespan_context(app))
        await stack.enter_async_context(live_server(app, uds=settings.api_socket))
        try:
            yield PO(settings, sqlite_database, activities, runtime, scripted_image, user.id, made)
        finally:
            for worker_id in made:
                await runtime.remove(worker_id)


def new_chat() -> int:
    return int(uuid.uuid4().int % 10**9)


async def test_the_po_worker_drives_the_cli_as_its_user(
    po: PO, docker_client: docker.DockerClient
) -> None:
    worker = f"po-{uuid.uuid4().hex[:8]}"
    chat = new_chat()
    container_id = await po.create(worker, chat)

    created = await po.json(worker, "project", "create", "--name", "todo")
    assert created["name"] == "todo"
    assert created["owner_id"] == po.user_id
    async with po.db.session() as session:
        project = await session.get(Project, created["id"])
    assert project is not None and project.owner_id == po.user_id
    assert [p["name"] for p in await po.json(worker, "project", "list")] == ["todo"]

    allowed = await po.json(worker, "permissions")
    assert allowed["variable"] == "ALLOWED_COMMANDS" and allowed["value"] == "PRODUCT_OWNER"
    assert "engineering.start" in allowed["allowed"]

    # The key: a 0600 file of the Worker's user, where the CLI looks; in no environment.
    stat = await po.runtime.exec(worker, ["stat", "-c", "%a %u", CLI_KEY_FILE], workdir="/")
    assert stat.stdout.split() == ["600", "1000"]
    key = (await po.runtime.exec(worker, ["cat", CLI_KEY_FILE], workdir="/")).stdout.strip()
    assert parse_prefix(key) is not None and key not in container_id
    container = docker_client.containers.get(container_name(worker))
    assert key not in json.dumps(container.attrs)
    environment = (await po.runtime.exec(worker, ["env"], workdir="/")).stdout
    assert key not in environment
    assert "ORCHESTRATOR_API_URL=http://127.0.0.1:8789" in environment
    assert f"ORCHESTRATOR_CHAT_ID={chat}" in environment
    assert f"PATH={CLI_MOUNT}/bin:" in environment
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    assert not mounts[API_MOUNT]["RW"] and not mounts[CLI_MOUNT]["RW"]
    assert container.attrs["HostConfig"]["NetworkMode"] == "none"

    # The Worker cannot write into the bundle it runs.
    touched = await po.runtime.exec(worker, ["touch", f"{CLI_MOUNT}/x"], workdir="/")
    assert touched.exit_code != 0


async def test_a_new_key_each_creation_revokes_the_last(po: PO) -> None:
    worker = f"po-{uuid.uuid4().hex[:8]}"
    chat = new_chat()
    first_id = await po.create(worker, chat)

    async def key() -> str:
        return (await po.runtime.exec(worker, ["cat", CLI_KEY_FILE], workdir="/")).stdout.strip()

    first = await key()
    # A retried creation finds the container and gives it a fresh key.
    assert await po.create(worker, chat) == first_id
    second = await key()
    assert second != first
    refused = await po.json(worker, "project", "list", expect=1, ORCHESTRATOR_API_KEY=first)
    assert refused["error"]["status"] == 401
    assert await po.json(worker, "project", "list") == []

    # A new container for the chat: the old one's key stops working.
    await po.runtime.remove(worker)
    assert await po.create(worker, chat) != first_id
    third = await key()
    assert third not in (first, second)
    gone = await po.json(worker, "project", "list", expect=1, ORCHESTRATOR_API_KEY=second)
    assert gone["error"]["status"] == 401
    assert await po.json(worker, "project", "list") == []


async def test_allowed_commands_limit_the_worker(po: PO) -> None:
    worker = f"po-{uuid.uuid4().hex[:8]}"
    await po.create(worker, new_chat(), allowed="project.*")
    await po.json(worker, "project", "create", "--name", "shop")
    refused = await po.run(
        worker, "engineering", "start", "--project", "shop", "--spec", "add a cart"
    )
    assert refused.exit_code == 1, (refused.stdout, refused.stderr)
    assert "`engineering start` is not allowed here (ALLOWED_COMMANDS=project.*)" in refused.stderr
    assert "Allowed: project.*, permissions" in refused.stderr
    async with po.db.session() as session:
        assert (await session.exec(select(Task))).all() == []  # refused before the API
