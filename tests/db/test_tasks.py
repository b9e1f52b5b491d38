"""The task service: crash-safe creation, one-way status changes, events stored and published."""

import json

import pytest
from sqlmodel import select

from api.schemas import TaskCreate
from core.contracts.engineering import EngineeringMessage
from core.contracts.events import TaskEvent
from core.enums import EventType, TaskStatus
from db.tables import OutboxMessage, Project, TaskEventRow, User
from db.tasks import TaskService


@pytest.fixture
async def project(database):
    async with database.session() as session:
        user = User(name="ada")
        session.add(user)
        await session.flush()
        project = Project(name="todo", owner_id=user.id)
        session.add(project)
        await session.commit()
    return project


async def test_create_commits_the_task_and_sends_its_message(database, redis, project):
    tasks = TaskService(database, redis)
    task = await tasks.create(
        TaskCreate(project_id=project.id, spec="a todo API", callback_stream="chat:1").new_task(
            project_name=project.name, user_id=project.owner_id
        )
    )
    assert task.workflow_id == f"engineering-{task.id}"
    entries = await redis.xrange("engineering:queue")
    assert len(entries) == 1
    message = EngineeringMessage.from_fields(entries[0][1])
    assert (message.task_id, message.callback_stream) == (task.id, "chat:1")
    assert message.correlation_id == task.correlation_id


async def test_a_message_redis_could_not_take_waits_in_the_outbox(database, redis, project):
    broken = TaskService(database, type(redis).from_url("redis://127.0.0.1:1/0"))
    task = await broken.create(
        TaskCreate(project_id=project.id, spec="x").new_task(
            project_name=project.name, user_id=project.owner_id
        )
    )
    async with database.session() as session:
        pending = (await session.exec(select(OutboxMessage))).all()
    assert [m.published_at for m in pending] == [None]
    await TaskService(database, redis).flush()
    entries = await redis.xrange("engineering:queue")
    assert [EngineeringMessage.from_fields(e[1]).task_id for e in entries] == [task.id]


async def test_status_moves_forward_only_and_events_are_published(database, redis, project):
    tasks = TaskService(database, redis)
    task = await tasks.create(
        TaskCreate(project_id=project.id, spec="x", callback_stream="chat:9").new_task(
            project_name=project.name, user_id=project.owner_id
        )
    )
    assert (await tasks.start(task.id)).status == TaskStatus.running
    await tasks.add_event(task.id, EventType.stage_started, "Scaffolding", stage="scaffold")
    assert await tasks.finish(task.id, TaskStatus.completed, message="done", result={"a": 1})
    assert not await tasks.finish(task.id, TaskStatus.failed, message="late", error="boom")
    assert await tasks.start(task.id) is None

    final = await tasks.get(task.id)
    assert (final.status, final.result, final.error) == (TaskStatus.completed, {"a": 1}, None)
    async with database.session() as session:
        rows = (await session.exec(select(TaskEventRow).order_by(TaskEventRow.seq))).all()
    assert [(r.seq, r.type) for r in rows] == [
        (1, EventType.started),
        (2, EventType.stage_started),
        (3, EventType.completed),
    ]
    for stream in (f"task_progress:{task.id}", "chat:9"):
        published = [
            TaskEvent.model_validate(json.loads(f[b"data"])) for _, f in await redis.xrange(stream)
        ]
        assert [e.seq for e in published] == [1, 2, 3]
        assert published[-1].is_terminal and published[-1].status == TaskStatus.completed


async def test_a_task_cancelled_before_it_started_does_not_start(database, redis, project):
    tasks = TaskService(database, redis)
    task = await tasks.create(
        TaskCreate(project_id=project.id, spec="x").new_task(
            project_name=project.name, user_id=project.owner_id
        )
    )
    assert await tasks.finish(task.id, TaskStatus.cancelled, message="cancelled by user")
    assert await tasks.start(task.id) is None
    assert (await tasks.get(task.id)).status == TaskStatus.cancelled


async def test_project_names_are_unique_in_the_database_whatever_their_case(database):
    from sqlalchemy.exc import IntegrityError

    async with database.session() as session:
        user = User(name="bo")
        session.add(user)
        await session.flush()
        session.add(Project(name="Shop", owner_id=user.id))
        await session.commit()
        session.add(Project(name="shop", owner_id=user.id))
        with pytest.raises(IntegrityError):
            await session.commit()
