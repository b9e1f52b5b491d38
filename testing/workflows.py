"""Rows, workers and waits shared by the workflow and activity tests."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import uuid
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import docker
import docker.errors
from redis.asyncio import Redis
from sqlmodel import col, select
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError

from api.schemas import TaskCreate
from bridges.consumer import Bridge
from bridges.routes import routes
from core.contracts.engineering import EngineeringOptions
from core.contracts.workflows import (
    PO_WORKERS_POOL,
    TURNS_WORKFLOW,
    WORKERS_POOL,
    EngineeringInput,
    EngineeringOutput,
)
from core.enums import ProjectTemplate
from core.ids import turns_workflow_id
from core.settings import Settings
from core.temporal import search_attributes
from db.engine import Database
from db.tables import Project, Task, TaskEventRow, User
from db.tasks import TaskService
from infra.containers import ContainerRuntime, container_name, vanishing
from stack.temporal_worker import build_worker
from workflows.engineering import EngineeringWorkflow


async def make_project(
    db: Database,
    name: str | None = None,
    modules: list[str] | None = None,
    template: ProjectTemplate | None = None,
) -> Project:
    async with db.session() as session:
        user = User(name="tester")
        session.add(user)
        await session.flush()
        project = Project(
            name=name or f"demo-{uuid.uuid4().hex[:6]}",
            description="A demo project",
            modules=modules or ["backend"],
            template=template,
            owner_id=user.id,
        )
        session.add(project)
        await session.commit()
    return project


async def make_task(
    db: Database, redis: Redis, project: Project, spec: str = "Add a /time endpoint", **options: Any
) -> Task:
    """A task as the API makes it; ``options`` are its EngineeringOptions (agent, script...)."""
    engineering = EngineeringOptions(**options) if options else None
    return await TaskService(db, redis).create(
        TaskCreate(project_id=project.id, spec=spec, engineering=engineering).new_task(
            project_name=project.name, user_id=project.owner_id
        )
    )


async def make_scripted_task(
    db: Database, redis: Redis, project: Project, script: dict[str, Any], **options: Any
) -> Task:
    """A task for the scripted agent following ``script``."""
    return await make_task(
        db, redis, project, "Add greet()", agent="scripted", script=script, **options
    )


async def start_engineering(
    client: Client, task: Task, task_queue: str
) -> WorkflowHandle[Any, EngineeringOutput]:
    return await client.start_workflow(
        EngineeringWorkflow.run,
        EngineeringInput(task_id=task.id, project_id=task.project_id, user_id=task.user_id),
        id=task.workflow_id,
        task_queue=task_queue,
        search_attributes=search_attributes(
            task_id=task.id, project_id=task.project_id, task_type="engineering"
        ),
    )


async def get_task(db: Database, task_id: str) -> Task:
    async with db.session() as session:
        task = await session.get(Task, task_id)
    assert task is not None
    return task


async def get_project(db: Database, project_id: str) -> Project:
    async with db.session() as session:
        project = await session.get(Project, project_id)
    assert project is not None
    return project


async def events(db: Database, task_id: str) -> list[TaskEventRow]:
    async with db.session() as session:
        rows = await session.exec(
            select(TaskEventRow)
            .where(TaskEventRow.task_id == task_id)
            .order_by(col(TaskEventRow.seq))
        )
        return list(rows.all())


@asynccontextmanager
async def running_worker(
    client: Client,
    db: Database,
    redis: Redis,
    home: Path,
    *,
    task_queue: str | None = None,
    settings: Settings | None = None,
    **options: Any,
) -> AsyncIterator[str]:
    """The real Temporal worker of ``python -m stack.temporal_worker``, in this process, on a
    queue of its own."""
    queue = task_queue or f"test-{uuid.uuid4().hex}"
    settings = settings or Settings(home=home)
    worker = build_worker(client, settings, db, redis, task_queue=queue, **options)
    async with worker:
        try:
            yield queue
        finally:
            await end_pools(client, await pools_of(client, queue))


async def pools_of(client: Client, task_queue: str) -> list[str]:
    """The running pool workflows (workflows/turns.py) of a task queue."""
    known = [turns_workflow_id(task_queue, pool) for pool in (WORKERS_POOL, PO_WORKERS_POOL)]
    query = (
        f"WorkflowType = '{TURNS_WORKFLOW}' AND TaskQueue = '{task_queue}' "
        "AND ExecutionStatus = 'Running'"
    )
    listed = [execution.id async for execution in client.list_workflows(query)]
    return list(dict.fromkeys([*known, *listed]))


async def end_pools(client: Client, workflow_ids: Collection[str]) -> None:
    """Cancel pools (they run until then) and let them end while their worker still runs: a
    run the worker drops mid-await leaves a coroutine that fails when it is collected."""
    for workflow_id in workflow_ids:
        handle = client.get_workflow_handle(workflow_id)
        with contextlib.suppress(RPCError):
            await handle.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(handle.result(), 10)


@asynccontextmanager
async def running_bridge(
    redis: Redis, client: Client, task_queue: str, queues: Collection[str] | None = None
) -> AsyncIterator[Bridge]:
    """``python -m bridges`` in this event loop, starting runs on ``task_queue``: every route,
    or those of ``queues``."""
    wanted = [
        route
        for route in routes(Settings(temporal_task_queue=task_queue))
        if queues is None or route.queue in queues
    ]
    bridge = Bridge(redis, client, wanted, claim_idle_ms=500, block_ms=100)
    stop = asyncio.Event()
    running = asyncio.create_task(bridge.run(stop))
    await asyncio.wait_for(bridge.ready.wait(), 10)
    try:
        yield bridge
    finally:
        stop.set()
        await asyncio.wait_for(running, 15)


def container(client: docker.DockerClient, worker_id: str) -> Any:
    """The Worker's container, or None once it is gone (podman's 500s while removing count)."""
    try:
        return client.containers.get(container_name(worker_id))
    except docker.errors.NotFound:
        return None
    except docker.errors.APIError as exc:
        if vanishing(exc):
            return None
        raise


def small_runtime(docker_client: docker.DockerClient) -> ContainerRuntime:
    """The real container runtime, with Worker limits sized for tests."""
    return ContainerRuntime(docker_client, Settings(worker_memory="256m", worker_pids=128))


def git_out(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()


def bare_repositories(forge_dir: Path) -> list[Path]:
    return sorted(p for p in forge_dir.glob("*/*") if p.is_dir())


def commit_count(repo: Path, branch: str = "main") -> int:
    return int(git_out(repo, "rev-list", "--count", branch))
