"""TaskActivities on SQLite and PostgreSQL, through Temporal's ActivityEnvironment."""

from __future__ import annotations

import dataclasses

import pytest
from redis.asyncio import Redis
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.tasks import FinishTaskInput, ProjectStatusInput, TaskActivities, TaskEventInput
from core.contracts.scaffolder import ScaffoldResult
from core.enums import EventType, ProjectStatus, TaskStatus
from core.ids import task_progress_stream
from db.engine import Database
from db.tasks import TaskService
from testing.workflows import events, get_project, get_task, make_project, make_task


def attempt(number: int) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=number)
    return env


async def test_task_lifecycle(database: Database, redis: Redis) -> None:
    activities = TaskActivities(database, redis)
    env = ActivityEnvironment()
    project = await make_project(database)
    task = await make_task(database, redis, project)

    started = await env.run(activities.start_task, task.id)
    assert started.should_run and started.status == TaskStatus.running
    # A retried start (its first completion was lost) still runs the task.
    assert (await env.run(activities.start_task, task.id)).should_run

    event = TaskEventInput(
        task_id=task.id, type=EventType.stage_started, message="go", stage="scaffold", progress=0.1
    )
    seq = await env.run(activities.record_event, event)
    # A retry of the same event after its commit does not write it twice...
    assert await attempt(2).run(activities.record_event, event) == seq
    # ...but a first attempt always writes, and a retry of a different event writes it.
    assert await env.run(activities.record_event, event) == seq + 1
    other = event.model_copy(update={"type": EventType.stage_completed})
    assert await attempt(3).run(activities.record_event, other) == seq + 2

    finish = FinishTaskInput(
        task_id=task.id, status=TaskStatus.completed, message="done", result={"stages": []}
    )
    assert await env.run(activities.finish_task, finish) is True
    assert await env.run(activities.finish_task, finish) is False  # once only

    stored = await get_task(database, task.id)
    assert stored.status == TaskStatus.completed and stored.result == {"stages": []}
    assert [e.type for e in await events(database, task.id)] == [
        EventType.started,
        EventType.stage_started,
        EventType.stage_started,
        EventType.stage_completed,
        EventType.completed,
    ]
    assert await redis.xlen(task_progress_stream(task.id)) == 5


async def test_a_task_cancelled_before_start_does_not_run(
    sqlite_database: Database, redis: Redis
) -> None:
    activities = TaskActivities(sqlite_database, redis)
    project = await make_project(sqlite_database)
    task = await make_task(sqlite_database, redis, project)
    await TaskService(sqlite_database, redis).finish(task.id, TaskStatus.cancelled, message="x")
    started = await ActivityEnvironment().run(activities.start_task, task.id)
    assert not started.should_run and started.status == TaskStatus.cancelled


async def test_projects(database: Database, redis: Redis) -> None:
    activities = TaskActivities(database, redis)
    env = ActivityEnvironment()
    project = await make_project(database, modules=["backend", "tg_bot"])

    info = await env.run(activities.get_project, project.id)
    assert (info.name, info.modules, info.repository) == (
        project.name,
        ["backend", "tg_bot"],
        None,
    )
    scaffolding = ProjectStatusInput(project_id=project.id, status=ProjectStatus.scaffolding)
    await env.run(activities.set_project_status, scaffolding)
    assert (await get_project(database, project.id)).status == ProjectStatus.scaffolding

    result = ScaffoldResult(
        project_id=project.id,
        repository="file:///forge/local/demo.git",
        repo_full_name="local/demo",
        commit_sha="a" * 40,
        created=True,
    )
    await env.run(activities.record_repository, result)
    # READY is never undone by a late status change.
    failed = ProjectStatusInput(project_id=project.id, status=ProjectStatus.failed)
    await env.run(activities.set_project_status, failed)
    stored = await get_project(database, project.id)
    assert stored.status == ProjectStatus.ready
    assert (stored.repository, stored.repo_full_name) == (result.repository, "local/demo")


@pytest.mark.parametrize("name", ["get_project", "start_task"])
async def test_missing_rows_fail_for_good(
    sqlite_database: Database, redis: Redis, name: str
) -> None:
    activities = TaskActivities(sqlite_database, redis)
    with pytest.raises(ApplicationError) as failed:
        await ActivityEnvironment().run(getattr(activities, name), "f" * 32)
    assert failed.value.non_retryable
    assert failed.value.message.endswith(f"{'f' * 32} does not exist")
