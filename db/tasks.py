"""Tasks: creation with their queue message, status changes and progress events.

The API routes and the Temporal activities both change tasks through this one service, so a task
moves through its states the same way whoever moves it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.contracts.base import as_utc
from core.contracts.deploy import DEPLOY_QUEUE, DeployMessage
from core.contracts.engineering import ENGINEERING_QUEUE, EngineeringMessage
from core.contracts.events import TaskEvent
from core.enums import (
    TERMINAL_STATUSES,
    DeployAction,
    EngineeringAction,
    EventType,
    TaskStatus,
    TaskType,
)
from core.ids import deploy_workflow_id, engineering_workflow_id, new_id, task_progress_stream
from core.logging import get_logger
from db import outbox
from db.engine import Database
from db.errors import Conflict, NotFound
from db.tables import OutboxMessage, Task, TaskEventRow, utcnow

log = get_logger(__name__)

RETRYABLE = (TaskStatus.failed, TaskStatus.cancelled)
TERMINAL_EVENT_OF = {
    TaskStatus.completed: EventType.completed,
    TaskStatus.failed: EventType.failed,
    TaskStatus.cancelled: EventType.cancelled,
}


class TaskNotFound(NotFound):
    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id} not found")
        self.task_id = task_id


@dataclass(frozen=True)
class NewTask:
    """A task to create: what it does (its spec, action and options in ``details``), for whom,
    and where its progress goes besides its own stream (``callback_stream``)."""

    type: TaskType
    project_id: str
    user_id: str
    spec: str
    action: str
    details: dict[str, Any] = field(default_factory=dict)
    callback_stream: str | None = None
    retry_of: str | None = None
    # Ties the task to the conversation that asked for it (a new one if None).
    correlation_id: str | None = None


async def get_task(session: AsyncSession, task_id: str) -> Task:
    task = await session.get(Task, task_id)
    if task is None:
        raise TaskNotFound(task_id)
    return task


class TaskService:
    def __init__(self, db: Database, redis: Redis) -> None:
        self.db = db
        self.redis = redis

    async def get(self, task_id: str) -> Task:
        async with self.db.session() as session:
            return await get_task(session, task_id)

    async def create(self, new: NewTask) -> Task:
        """Write the task and its queue message in one transaction, then try to send it."""
        async with self.db.session() as session:
            task, queued = self.add(session, new)
            await session.commit()
        await self._publish([queued.id])
        log.info("task created", task_id=task.id, workflow_id=task.workflow_id)
        return task

    def add(self, session: AsyncSession, new: NewTask) -> tuple[Task, OutboxMessage]:
        """The task and the queue message that starts it, added to ``session``'s transaction:
        both are there once it commits, or neither (``send`` them after the commit)."""
        task_id = new_id()
        task = Task(
            id=task_id,
            correlation_id=new.correlation_id or new_id(),
            type=new.type,
            project_id=new.project_id,
            user_id=new.user_id,
            action=new.action,
            spec=new.spec,
            workflow_id=_workflow_id(new.type, task_id),
            callback_stream=new.callback_stream,
            retry_of=new.retry_of,
            details=new.details,
        )
        queue, message = _message(task)
        session.add(task)
        return task, outbox.enqueue(session, queue, message.to_fields())

    async def send(self, queued: list[int | None]) -> None:
        """Send the committed queue messages ``queued`` now; the relay sends them later if
        Redis is away."""
        await self._publish(queued)

    async def retry(self, task_id: str, *, user_id: str) -> Task:
        """A failed or cancelled task again, as a new task doing the same (its agent, limits,
        deploy action and ref included) in the same conversation."""
        task = await self.get(task_id)
        if task.status not in RETRYABLE:
            raise Conflict(
                f"only failed or cancelled tasks can be retried; task {task.id} is {task.status}"
            )
        async with self.db.session() as session:
            query = select(Task.id).where(Task.retry_of == task.id)
            earlier = (await session.exec(query)).first()
        if earlier is not None:
            # A repeated click (or a client retrying a timed-out call) must not run the work twice.
            raise Conflict(f"task {task.id} was already retried as task {earlier}")
        return await self.create(
            NewTask(
                type=TaskType(task.type),
                project_id=task.project_id,
                user_id=user_id,
                spec=task.spec,
                action=task.action,
                details=dict(task.details or {}),
                callback_stream=task.callback_stream,
                retry_of=task.id,
                correlation_id=task.correlation_id,
            )
        )

    async def list_tasks(
        self,
        *,
        project_id: str | None = None,
        status: TaskStatus | None = None,
        type: TaskType | None = None,
        limit: int = 50,
    ) -> list[Task]:
        """Tasks, newest first."""
        query = select(Task).order_by(col(Task.created_at).desc(), col(Task.id).desc()).limit(limit)
        if project_id is not None:
            query = query.where(Task.project_id == project_id)
        if status is not None:
            query = query.where(Task.status == status)
        if type is not None:
            query = query.where(Task.type == type)
        async with self.db.session() as session:
            return list((await session.exec(query)).all())

    async def end_times(self, task_ids: set[str]) -> dict[str, datetime | None]:
        """Of ``task_ids``, each task that exists: when it ended, None while it has not."""
        if not task_ids:
            return {}
        query = select(Task.id, Task.status, Task.completed_at, Task.updated_at).where(
            col(Task.id).in_(task_ids)
        )
        async with self.db.session() as session:
            found = list((await session.exec(query)).all())
        return {
            task_id: as_utc(completed_at or updated_at) if TaskStatus(status).is_terminal else None
            for task_id, status, completed_at, updated_at in found
        }

    async def latest_event(self, task_id: str) -> TaskEventRow | None:
        async with self.db.session() as session:
            query = (
                select(TaskEventRow)
                .where(TaskEventRow.task_id == task_id)
                .order_by(col(TaskEventRow.seq).desc())
                .limit(1)
            )
            return (await session.exec(query)).first()

    async def start(self, task_id: str) -> Task | None:
        """QUEUED -> RUNNING. None when the task was cancelled (or finished) before it started."""
        async with self.db.session() as session:
            changed = await self._transition(
                session, task_id, TaskStatus.running, [TaskStatus.queued], started_at=utcnow()
            )
            task = await session.get(Task, task_id)
            if task is None:
                raise TaskNotFound(task_id)
            if changed:
                await self._add_event(session, task, EventType.started, "Task started")
            await session.commit()
        await self.flush()
        if task.status in TERMINAL_STATUSES:
            return None
        return task

    async def wait_for_human(self, task_id: str, question: str, *, stage: str | None) -> bool:
        """RUNNING -> WAITING_HUMAN with the question; False when the task was not RUNNING."""
        return await self._pause(
            task_id,
            TaskStatus.waiting_human,
            TaskStatus.running,
            f"Waiting for an answer: {question}",
            stage=stage,
            data={"question": question},
        )

    async def answered(self, task_id: str, question: str, *, stage: str | None) -> bool:
        """WAITING_HUMAN -> RUNNING once answered; False when the task was not waiting."""
        return await self._pause(
            task_id,
            TaskStatus.running,
            TaskStatus.waiting_human,
            "Answered; the work goes on",
            stage=stage,
            data={"question": question},
        )

    async def _pause(
        self,
        task_id: str,
        to: TaskStatus,
        from_: TaskStatus,
        message: str,
        *,
        stage: str | None,
        data: dict[str, Any],
    ) -> bool:
        async with self.db.session() as session:
            changed = await self._transition(session, task_id, to, [from_])
            task = await session.get(Task, task_id)
            if task is None:
                raise TaskNotFound(task_id)
            if changed:
                await self._add_event(
                    session, task, EventType.progress, message, stage=stage, data=data
                )
            await session.commit()
        await self.flush()
        return changed

    async def add_event(
        self,
        task_id: str,
        type: EventType,
        message: str,
        *,
        stage: str | None = None,
        progress: float | None = None,
        data: dict[str, Any] | None = None,
    ) -> TaskEvent:
        async with self.db.session() as session:
            task = await session.get(Task, task_id)
            if task is None:
                raise TaskNotFound(task_id)
            event = await self._add_event(
                session, task, type, message, stage=stage, progress=progress, data=data
            )
            await session.commit()
        await self.flush()
        return event

    async def finish(
        self,
        task_id: str,
        status: TaskStatus,
        *,
        message: str,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> bool:
        """Move a task to a terminal status once; a second call changes nothing."""
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"{status} is not a terminal status")
        allowed = [s for s in TaskStatus if s not in TERMINAL_STATUSES]
        async with self.db.session() as session:
            changed = await self._transition(
                session,
                task_id,
                status,
                allowed,
                result=result,
                error=error,
                completed_at=utcnow(),
            )
            if changed:
                task = await session.get(Task, task_id)
                assert task is not None
                await self._add_event(
                    session,
                    task,
                    TERMINAL_EVENT_OF[status],
                    message,
                    progress=1.0,
                    data={"result": result} if result else {"error": error} if error else {},
                )
            await session.commit()
        await self.flush()
        if changed:
            log.info("task finished", task_id=task_id, status=status.value, error=error)
        return changed

    async def flush(self) -> None:
        """Send what this process committed; the API's relay sends it later if Redis is away."""
        await self._publish(None)

    async def _publish(self, ids: list[int | None] | None) -> None:
        try:
            await outbox.publish(self.db, self.redis, [i for i in ids if i] if ids else None)
        except Exception as exc:  # the relay retries; the commit already made it durable
            log.warning("outbox publish deferred", error=str(exc))

    async def _transition(
        self,
        session: AsyncSession,
        task_id: str,
        to: TaskStatus,
        from_: Iterable[TaskStatus],
        **values: Any,
    ) -> bool:
        result = await session.exec(
            update(Task)
            .where(col(Task.id) == task_id, col(Task.status).in_(list(from_)))
            .values(status=to, updated_at=utcnow(), **values)
        )
        session.expire_all()
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def _add_event(
        self,
        session: AsyncSession,
        task: Task,
        type: EventType,
        message: str,
        *,
        stage: str | None = None,
        progress: float | None = None,
        data: dict[str, Any] | None = None,
    ) -> TaskEvent:
        last = await session.exec(
            select(func.max(TaskEventRow.seq)).where(TaskEventRow.task_id == task.id)
        )
        seq = (last.one() or 0) + 1
        row = TaskEventRow(
            task_id=task.id,
            seq=seq,
            type=type,
            status=task.status,
            stage=stage,
            message=message,
            progress=progress,
            data=data or {},
        )
        session.add(row)
        try:
            await session.flush()
        except IntegrityError:
            raise RuntimeError(f"event {seq} of task {task.id} was written twice") from None
        event = TaskEvent(
            task_id=task.id,
            seq=seq,
            type=type,
            status=task.status,
            stage=stage,
            message=message,
            progress=progress,
            data=data or {},
            correlation_id=task.correlation_id,
            workflow_id=task.workflow_id,
            timestamp=row.created_at,
        )
        fields = {"data": event.model_dump_json()}
        outbox.enqueue(session, task_progress_stream(task.id), fields)
        if task.callback_stream:
            outbox.enqueue(session, task.callback_stream, fields)
        return event


def _workflow_id(type: TaskType, task_id: str) -> str:
    if type == TaskType.deploy:
        return deploy_workflow_id(task_id)
    return engineering_workflow_id(task_id)


def _message(task: Task) -> tuple[str, EngineeringMessage | DeployMessage]:
    """The queue and the message that start the task's workflow."""
    common: dict[str, Any] = {
        "task_id": task.id,
        "project_id": task.project_id,
        "user_id": task.user_id,
        "correlation_id": task.correlation_id,
        "callback_stream": task.callback_stream,
    }
    if task.type == TaskType.deploy:
        return DEPLOY_QUEUE, DeployMessage(**common, action=DeployAction(task.action))
    return ENGINEERING_QUEUE, EngineeringMessage(**common, action=EngineeringAction(task.action))
