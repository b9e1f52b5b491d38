"""ReaperWorkflow on a real dev server, a real container service and a real database; the
reaper's Schedule as `up` makes it."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import docker
import docker.errors
import pytest
import pytest_asyncio
from redis.asyncio import Redis
from temporalio.client import (
    Client,
    ScheduleActionStartWorkflow,
    ScheduleOverlapPolicy,
    WorkflowExecutionStatus,
    WorkflowHandle,
)

from core.contracts.workflows import WORKERS_POOL
from core.enums import TaskStatus
from core.schedules import REAPER
from core.settings import Settings
from db.engine import Database
from db.tables import Task
from infra.containers import ContainerRuntime, WorkerSpec, container_name
from stack import podman
from stack.prepare import ensure_schedule
from testing import servers
from testing.images import tiny_image
from testing.turns import ask_turn, pool_state
from testing.waiting import eventually
from testing.workflows import make_project, make_task, running_worker
from workflows.reaper import (
    REAPER_WORKFLOW,
    ReaperInput,
    ReaperOutput,
    ReaperWorkflow,
)

NOBODY_POLLS = "reaper-test-nobody-polls"
DAY = timedelta(hours=24)


@pytest.fixture(scope="module")
def own_docker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[docker.DockerClient]:
    """A container service of this module's own: the reaper judges every Worker of its
    service, and the suite's shared one holds Workers of other sessions (other Temporals)."""
    root = tmp_path_factory.mktemp("podman")
    with servers.podman_service(root) as url:
        client = docker.DockerClient(base_url=url, timeout=120)
        try:
            yield client
        finally:
            client.close()
            podman.stop_containers(root)


@pytest.fixture(scope="module")
def tiny(own_docker: docker.DockerClient) -> str:
    return tiny_image(own_docker)


@pytest.fixture
def runtime(own_docker: docker.DockerClient) -> ContainerRuntime:
    return ContainerRuntime(own_docker, Settings(worker_memory="64m", worker_pids=16))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", temporal_task_queue=f"reaper-{uuid.uuid4().hex[:8]}")


@pytest_asyncio.fixture
async def queue(
    temporal_client: Client,
    sqlite_database: Database,
    redis: Redis,
    settings: Settings,
    runtime: ContainerRuntime,
) -> AsyncIterator[str]:
    async with running_worker(
        temporal_client,
        sqlite_database,
        redis,
        settings.home_dir,
        settings=settings,
        task_queue=settings.temporal_task_queue,
        runtime=runtime,
    ) as task_queue:
        yield task_queue


async def idle_workflow(client: Client) -> WorkflowHandle[None, None]:
    """A workflow that stays RUNNING: no worker polls its queue."""
    return await client.start_workflow(
        "Idle", id=f"idle-{uuid.uuid4().hex[:8]}", task_queue=NOBODY_POLLS
    )


async def reap(client: Client, task_queue: str, **fields: float) -> ReaperOutput:
    return await client.execute_workflow(
        ReaperWorkflow.run,
        ReaperInput(**fields),
        id=f"reaper-{uuid.uuid4().hex[:8]}",
        task_queue=task_queue,
        execution_timeout=timedelta(minutes=2),
    )


def exists(client: docker.DockerClient, worker_id: str) -> bool:
    try:
        client.containers.get(container_name(worker_id))
    except docker.errors.NotFound:
        return False
    return True


async def test_the_reaper_removes_containers_and_turns_of_closed_workflows_only(
    temporal_client: Client,
    queue: str,
    runtime: ContainerRuntime,
    own_docker: docker.DockerClient,
    tiny: str,
    redis: Redis,
) -> None:
    ended = await idle_workflow(temporal_client)
    await ended.terminate("a worker process died before removing its container")
    running = await idle_workflow(temporal_client)
    made: dict[str, str] = {}
    try:
        for name, workflow_id in {
            "terminated": ended.id,
            "unknown": f"engineering-{uuid.uuid4().hex[:8]}",
            "running": running.id,
        }.items():
            worker_id = f"{name}-{uuid.uuid4().hex[:8]}"
            made[name] = worker_id
            await runtime.create_worker(
                WorkerSpec(image=tiny, worker_id=worker_id, task_id="t", workflow_id=workflow_id)
            )
        for holder, worker_id in ((ended, made["terminated"]), (running, made["running"])):
            taken = await ask_turn(temporal_client, queue, WORKERS_POOL, holder.id, worker_id)
            assert taken.granted

        output = await reap(temporal_client, queue)

        assert sorted(output.workers_removed) == sorted([made["terminated"], made["unknown"]])
        assert not exists(own_docker, made["terminated"])
        assert not exists(own_docker, made["unknown"])
        assert exists(own_docker, made["running"])
        mine = {ended.id, running.id}
        given_back = [t.holder for t in output.turns_given_back if t.holder in mine]
        assert given_back == [ended.id]
        holding = (await pool_state(temporal_client, queue, WORKERS_POOL)).holding
        assert [t.holder for t in holding] == [running.id]
        assert output.errors == []
        # Nothing left to reap: a second run removes nothing.
        assert (await reap(temporal_client, queue)).workers_removed == []
    finally:
        await running.terminate("test over")
        for worker_id in made.values():
            await runtime.remove(worker_id)


async def set_task(db: Database, task_id: str, status: TaskStatus, ended: datetime | None) -> None:
    async with db.session() as session:
        task = await session.get(Task, task_id)
        assert task is not None
        task.status = status
        task.completed_at = ended
        task.updated_at = ended or datetime.now(UTC) - 2 * DAY  # RUNNING since long ago
        session.add(task)
        await session.commit()


def workspace(settings: Settings, name: str, *, age: timedelta = timedelta(0)) -> Path:
    """A checkout-like directory; parts owned by the Worker's uid, as an agent leaves them."""
    path = settings.home_dir / "workspaces" / name
    (path / "src" / "generated").mkdir(parents=True)
    (path / "src" / "app.py").write_text("print('hi')\n")
    (path / "src" / "generated" / "out.txt").write_text("made in the Worker\n")
    if os.geteuid() == 0:
        for part in (path / "src" / "generated", path / "src" / "generated" / "out.txt"):
            os.chown(part, 1000, 1000)
        (path / "src" / "generated").chmod(0o700)
    then = time.time() - age.total_seconds()
    os.utime(path, (then, then))
    return path


async def test_the_reaper_removes_workspaces_of_tasks_finished_long_ago_only(
    temporal_client: Client,
    queue: str,
    settings: Settings,
    sqlite_database: Database,
    redis: Redis,
) -> None:
    project = await make_project(sqlite_database)
    tasks = {name: await make_task(sqlite_database, redis, project) for name in range(4)}
    now = datetime.now(UTC)
    done_long_ago, failed_lately, running, waiting = (t.id for t in tasks.values())
    await set_task(sqlite_database, done_long_ago, TaskStatus.completed, now - 2 * DAY)
    await set_task(sqlite_database, failed_lately, TaskStatus.failed, now - timedelta(hours=1))
    await set_task(sqlite_database, running, TaskStatus.running, None)
    await set_task(sqlite_database, waiting, TaskStatus.waiting_human, None)
    old = 3 * DAY
    paths = {
        "done long ago": workspace(settings, done_long_ago),
        "its half-made clone": workspace(settings, f".{done_long_ago}.clone"),
        "failed lately": workspace(settings, failed_lately, age=old),
        "running": workspace(settings, running, age=old),
        "waiting": workspace(settings, waiting, age=old),
        "of no task, old": workspace(settings, "stray-old", age=old),
        "of no task, new": workspace(settings, "stray-new"),
    }

    output = await reap(temporal_client, queue)

    removed = {"done long ago", "its half-made clone", "of no task, old"}
    assert sorted(output.workspaces.removed) == sorted(paths[name].name for name in removed)
    assert output.workspaces.kept == len(paths) - len(removed)
    assert output.workspaces.failed == []
    assert {name for name, path in paths.items() if not path.exists()} == removed

    # A shorter retention (the input's, over the settings') takes the lately failed one too.
    output = await reap(temporal_client, queue, workspace_retention_hours=0.5)
    assert output.workspaces.removed == [failed_lately]
    assert paths["running"].is_dir() and paths["waiting"].is_dir()
    assert paths["of no task, new"].is_dir()


def chattr(flag: str, path: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["chattr", flag, str(path)], capture_output=True, check=False)


async def test_a_workspace_the_worker_may_not_remove_is_reported_and_the_rest_removed(
    temporal_client: Client,
    queue: str,
    settings: Settings,
    sqlite_database: Database,
    redis: Redis,
) -> None:
    """As a worker that is not root meets files of the Worker's uid: here an immutable file
    (root may not remove it either) stands in for them."""
    project = await make_project(sqlite_database)
    stuck = await make_task(sqlite_database, redis, project)
    other = await make_task(sqlite_database, redis, project)
    for task in (stuck, other):
        await set_task(sqlite_database, task.id, TaskStatus.cancelled, datetime.now(UTC) - DAY)
    locked = workspace(settings, stuck.id) / "src" / "app.py"
    workspace(settings, other.id)
    made = chattr("+i", locked)
    if made.returncode != 0:
        pytest.skip(f"cannot make a file immutable here: {made.stderr.decode().strip()}")
    try:
        output = await reap(temporal_client, queue, workspace_retention_hours=1)
        assert output.workspaces.failed == [stuck.id]
        assert output.workspaces.removed == [other.id]
        assert locked.exists()
        assert output.errors == []  # reported, not a failed run: the next run tries again
    finally:
        chattr("-i", locked).check_returncode()


async def test_the_reaper_schedule_is_made_once_and_follows_the_settings(
    temporal_client: Client, queue: str, settings: Settings, runtime: ContainerRuntime
) -> None:
    schedule_id = REAPER.schedule_id(settings)
    assert schedule_id == f"{queue}-reaper"
    handle = temporal_client.get_schedule_handle(schedule_id)
    try:
        assert await ensure_schedule(temporal_client, settings, REAPER) is True
        assert await ensure_schedule(temporal_client, settings, REAPER) is False
        described = await handle.describe()
        action = described.schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        assert (action.workflow, action.task_queue) == (REAPER_WORKFLOW, queue)
        assert [i.every for i in described.schedule.spec.intervals] == [timedelta(minutes=5)]
        assert described.schedule.policy.overlap == ScheduleOverlapPolicy.SKIP

        # Another interval updates it; a pause made by an operator stays.
        await handle.pause(note="kept paused")
        slower = settings.model_copy(update={"reaper_interval_minutes": 10.0})
        assert await ensure_schedule(temporal_client, slower, REAPER) is True
        described = await handle.describe()
        assert [i.every for i in described.schedule.spec.intervals] == [timedelta(minutes=10)]
        assert described.schedule.state.paused
        assert await ensure_schedule(temporal_client, slower, REAPER) is False

        # Its action starts a ReaperWorkflow on the settings' queue that this worker runs.
        await handle.trigger(overlap=ScheduleOverlapPolicy.ALLOW_ALL)

        async def completed_run() -> str | None:
            # From the runs themselves, not the Schedule's recent actions: a trigger in the same
            # second as a scheduled time shares its workflow id, and only one shows there.
            query = f'WorkflowType="{REAPER_WORKFLOW}" AND TaskQueue="{queue}"'
            async for run in temporal_client.list_workflows(query):
                if run.status == WorkflowExecutionStatus.COMPLETED:
                    return run.id
            return None

        run = await eventually(completed_run, "a triggered reaper run to complete", within=60)
        assert run is not None and run.startswith(schedule_id)
    finally:
        await handle.delete()
