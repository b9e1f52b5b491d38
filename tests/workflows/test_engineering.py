"""EngineeringWorkflow and ScaffoldWorkflow on a real dev server, worker, database and Redis."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError

from core.contracts.events import TaskEvent
from core.contracts.workflows import ScaffoldInput
from core.enums import EventType, ProjectStatus, TaskStatus
from core.ids import scaffold_workflow_id, task_progress_stream
from core.temporal import search_attributes
from db.engine import Database
from db.tasks import TaskService
from testing.waiting import eventually
from testing.workflows import (
    bare_repositories,
    commit_count,
    events,
    get_project,
    get_task,
    git_out,
    make_project,
    make_task,
    running_worker,
    start_engineering,
)
from workflows.scaffold import ScaffoldWorkflow

TEMPLATE_FILES = {
    ".orchestrator.yml",
    ".copier-answers.yml",
    "Makefile",
    "README.md",
    "app/__init__.py",
    "app/__main__.py",
    "app/server.py",
    "tests/test_server.py",
}


async def test_first_task_scaffolds_the_repository(
    temporal_client: Client, database: Database, redis: Redis, tmp_path: Path
) -> None:
    project = await make_project(database, name="Shop-API")
    task = await make_task(database, redis, project)
    async with running_worker(temporal_client, database, redis, tmp_path) as queue:
        handle = await start_engineering(temporal_client, task, queue)
        await ends_for_want_of_an_agent(handle)

    # The repository: one bare repo, one commit on main, the template's files.
    repos = bare_repositories(tmp_path / "forge")
    assert [p.relative_to(tmp_path / "forge").as_posix() for p in repos] == ["local/shop-api.git"]
    assert commit_count(repos[0]) == 1
    files = set(git_out(repos[0], "ls-tree", "-r", "--name-only", "main").splitlines())
    assert TEMPLATE_FILES <= files
    assert "app/bot.py" not in files  # the tg_bot module was not asked for
    author = git_out(repos[0], "log", "-1", "--format=%an <%ae>", "main")
    assert author == "orchestrator <orchestrator@localhost>"

    stored = await get_project(database, project.id)
    assert stored.status == ProjectStatus.ready
    assert stored.repo_full_name == "local/shop-api"
    assert stored.repository == repos[0].resolve().as_uri()

    # No agent is configured here: the task ends FAILED after its scaffold, saying what to do.
    done = await get_task(database, task.id)
    assert done.status == TaskStatus.failed
    assert done.error is not None and done.error.startswith("No coding agent is configured")
    rows = await events(database, task.id)
    kinds = [(e.type, e.stage) for e in rows]
    assert kinds[:3] == [
        (EventType.started, None),
        (EventType.stage_started, "scaffold"),
        (EventType.stage_completed, "scaffold"),
    ]
    assert kinds[-1] == (EventType.failed, None)
    # RUNNING while it worked, FAILED at the end.
    assert {e.status for e in rows[:-1]} == {TaskStatus.running}
    assert rows[-1].status == TaskStatus.failed
    assert "ANTHROPIC_API_KEY" in rows[-1].message
    progress = [e.progress for e in rows if e.progress is not None]
    assert progress == sorted(progress) and progress[-1] == 1.0

    # The same events went out on the task's progress stream, in order.
    entries: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(
        task_progress_stream(task.id)
    )  # type: ignore[assignment]
    published = [TaskEvent.model_validate_json(fields[b"data"]) for _, fields in entries]
    assert [(e.seq, e.type) for e in published] == [(e.seq, e.type) for e in rows]

    # The child ran under its deterministic ID, findable by project.
    child = await temporal_client.get_workflow_handle(scaffold_workflow_id(project.id)).describe()
    assert child.status is WorkflowExecutionStatus.COMPLETED
    assert child.parent_id == task.workflow_id


async def test_second_task_does_not_scaffold_again(
    temporal_client: Client, sqlite_database: Database, redis: Redis, tmp_path: Path
) -> None:
    db = sqlite_database
    project = await make_project(db)
    first, second = await make_task(db, redis, project), await make_task(db, redis, project)
    async with running_worker(temporal_client, db, redis, tmp_path) as queue:
        await ends_for_want_of_an_agent(await start_engineering(temporal_client, first, queue))
        await ends_for_want_of_an_agent(await start_engineering(temporal_client, second, queue))

    repos = bare_repositories(tmp_path / "forge")
    assert len(repos) == 1 and commit_count(repos[0]) == 1
    rows = await events(db, second.id)
    assert not [e for e in rows if e.type == EventType.stage_started]
    assert any("scaffolding skipped" in e.message for e in rows)


async def test_waits_for_a_scaffold_already_under_way(
    temporal_client: Client, sqlite_database: Database, redis: Redis, tmp_path: Path
) -> None:
    """scaffold-{project} started elsewhere (scaffolder:queue): the task waits for that run."""
    db = sqlite_database
    project = await make_project(db)
    task = await make_task(db, redis, project)
    other_queue = f"scaffolder-{uuid.uuid4().hex}"
    await temporal_client.start_workflow(
        ScaffoldWorkflow.run,
        ScaffoldInput(project_id=project.id),
        id=scaffold_workflow_id(project.id),
        task_queue=other_queue,
        search_attributes=search_attributes(project_id=project.id),
    )
    async with running_worker(temporal_client, db, redis, tmp_path) as queue:
        handle = await start_engineering(temporal_client, task, queue)
        await eventually(lambda: _waits_for_scaffold(handle))
        # Only now does a worker serve the queue the other run was started on.
        async with running_worker(temporal_client, db, redis, tmp_path, task_queue=other_queue):
            await ends_for_want_of_an_agent(handle)

    assert len(bare_repositories(tmp_path / "forge")) == 1
    rows = await events(db, task.id)
    assert any("already under way" in e.message for e in rows)


async def test_cancel_while_waiting(
    temporal_client: Client, sqlite_database: Database, redis: Redis, tmp_path: Path
) -> None:
    """Cancelled while blocked on a real wait: a scaffold run that no worker serves yet."""
    db = sqlite_database
    project = await make_project(db)
    task = await make_task(db, redis, project)
    blocker = await temporal_client.start_workflow(
        ScaffoldWorkflow.run,
        ScaffoldInput(project_id=project.id),
        id=scaffold_workflow_id(project.id),
        task_queue=f"nobody-{uuid.uuid4().hex}",
    )
    try:
        async with running_worker(temporal_client, db, redis, tmp_path) as queue:
            handle = await start_engineering(temporal_client, task, queue)
            await eventually(lambda: _waits_for_scaffold(handle))
            await handle.cancel()
            with pytest.raises(WorkflowFailureError):
                await handle.result()
            assert (await handle.describe()).status is WorkflowExecutionStatus.CANCELED
    finally:
        await blocker.terminate("test over")

    done = await get_task(db, task.id)
    assert done.status == TaskStatus.cancelled
    rows = await events(db, task.id)
    assert rows[-1].type == EventType.cancelled
    assert bare_repositories(tmp_path / "forge") == []


async def test_task_cancelled_before_start_does_nothing(
    temporal_client: Client, sqlite_database: Database, redis: Redis, tmp_path: Path
) -> None:
    db = sqlite_database
    project = await make_project(db)
    task = await make_task(db, redis, project)
    await TaskService(db, redis).finish(task.id, TaskStatus.cancelled, message="cancelled early")
    async with running_worker(temporal_client, db, redis, tmp_path) as queue:
        output = await (await start_engineering(temporal_client, task, queue)).result()

    assert output.status == TaskStatus.cancelled
    assert [e.type for e in await events(db, task.id)] == [EventType.cancelled]
    assert (await get_project(db, project.id)).status == ProjectStatus.new
    assert bare_repositories(tmp_path / "forge") == []


async def test_cancelled_before_any_worker_picked_it_up(
    temporal_client: Client, sqlite_database: Database, redis: Redis, tmp_path: Path
) -> None:
    db = sqlite_database
    project = await make_project(db)
    task = await make_task(db, redis, project)
    queue = f"test-{uuid.uuid4().hex}"
    handle = await start_engineering(temporal_client, task, queue)
    await handle.cancel()  # no worker polls yet: the first activation already carries the cancel
    async with running_worker(temporal_client, db, redis, tmp_path, task_queue=queue):
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    assert (await handle.describe()).status is WorkflowExecutionStatus.CANCELED
    assert (await get_task(db, task.id)).status == TaskStatus.cancelled
    assert [e.type for e in await events(db, task.id)] == [EventType.cancelled]


async def test_failing_scaffold_fails_the_task(
    temporal_client: Client, sqlite_database: Database, redis: Redis, tmp_path: Path
) -> None:
    db = sqlite_database
    project = await make_project(db)
    task = await make_task(db, redis, project)
    missing = tmp_path / "no-such-template"
    async with running_worker(temporal_client, db, redis, tmp_path, template_dir=missing) as queue:
        handle = await start_engineering(temporal_client, task, queue)
        with pytest.raises(WorkflowFailureError) as failed:
            await handle.result()

    assert (await handle.describe()).status is WorkflowExecutionStatus.FAILED
    assert isinstance(failed.value.cause, ApplicationError)
    assert "template is missing" in failed.value.cause.message
    done = await get_task(db, task.id)
    assert done.status == TaskStatus.failed
    assert done.error is not None
    assert done.error.startswith(f"scaffolding project {project.name} failed")
    assert "template is missing" in done.error
    rows = await events(db, task.id)
    assert rows[-1].type == EventType.failed and rows[-1].data == {"error": done.error}
    assert (await get_project(db, project.id)).status == ProjectStatus.failed
    # A failed scaffold may run again: the next task's child starts a fresh scaffold run.
    retry = await make_task(db, redis, project)
    async with running_worker(temporal_client, db, redis, tmp_path) as queue:
        await ends_for_want_of_an_agent(await start_engineering(temporal_client, retry, queue))
    assert (await get_project(db, project.id)).status == ProjectStatus.ready


async def test_scaffold_of_a_missing_project_fails(
    temporal_client: Client, sqlite_database: Database, redis: Redis, tmp_path: Path
) -> None:
    async with running_worker(temporal_client, sqlite_database, redis, tmp_path) as queue:
        handle = await temporal_client.start_workflow(
            ScaffoldWorkflow.run,
            ScaffoldInput(project_id="0" * 32),
            id=f"scaffold-missing-{uuid.uuid4().hex}",
            task_queue=queue,
        )
        with pytest.raises(WorkflowFailureError) as failed:
            await handle.result()
    assert isinstance(failed.value.cause, ApplicationError)
    assert failed.value.cause.message == f"cannot scaffold: project {'0' * 32} does not exist"
    assert failed.value.cause.non_retryable


async def ends_for_want_of_an_agent(handle: WorkflowHandle[Any, Any]) -> None:
    """The run fails after its scaffold stage: no coding agent is configured in these tests."""
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    assert isinstance(failed.value.cause, ApplicationError)
    assert failed.value.cause.message.startswith("No coding agent is configured")


async def _waits_for_scaffold(handle: WorkflowHandle[Any, Any]) -> bool:
    """The task asked the scaffold run to tell it its end and waits, holding no activity."""
    events = [event async for event in handle.fetch_history_events()]
    asked = any(e.HasField("external_workflow_execution_signaled_event_attributes") for e in events)
    described = await handle.describe()
    return asked and not described.raw_description.pending_activities
