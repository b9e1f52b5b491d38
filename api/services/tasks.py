"""Tasks: creation with their queue message, status changes and progress events.

The API routes and the Temporal activities both change tasks through this one service, so a task
moves through its states the same way whoever moves it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from api.db import Database
from api.models import Project, Task, TaskCreate, TaskEventRow, TaskType, utcnow
from api.services import outbox
from core.contracts.deploy import DEPLOY_QUEUE, DeployAction, DeployMessage, DeployOptions
from core.contracts.engineering import ENGINEERING_QUEUE, EngineeringAction, EngineeringMessage
from core.contracts.events import TERMINAL_STATUSES, EventType, TaskEvent, TaskStatus
from core.ids import deploy_workflow_id, engineering_workflow_id, new_id, task_progress_stream
from core.logging import get_logger

log = get_logger(__name__)

TERMINAL_EVENT_OF = {
    TaskStatus.completed: EventType.completed,
    TaskStatus.failed: EventType.failed,
    TaskStatus.cancelled: EventType.cancelled,
}


class TaskNotFound(LookupError):
    pass


class TaskService:
    def __init__(self, db: Database, redis: Redis) -> None:
        self.db = db
        self.redis = redis

    async def get(self, task_id: str) -> Task:
        async with self.db.session() as session:
            task = await session.get(Task, task_id)
        if task is None:
            raise TaskNotFound(task_id)
        return task

    async def create(
        self,
        data: TaskCreate,
        *,
        user_id: str,
        project: Project,
        retry_of: str | None = None,
        correlation_id: str | None = None,
    ) -> Task:
        """Write the task and its queue message in one transaction, then try to send it.

        ``correlation_id`` ties the task to the conversation that asked for it (a new one if None).
        """
        task_id = new_id()
        task = Task(
            id=task_id,
            correlation_id=correlation_id or new_id(),
            type=data.type,
            project_id=project.id,
            user_id=user_id,
            action=_action(data),
            spec=data.spec or _deploy_spec(data, project),
            workflow_id=_workflow_id(data.type, task_id),
            callback_stream=data.callback_stream,
            retry_of=retry_of,
            details=_details(data),
        )
        queue, message = _message(task)
        async with self.db.session() as session:
            session.add(task)
            queued = outbox.enqueue(session, queue, message.to_fields())
            await session.commit()
        await self._publish([queued.id])
        log.info("task created", task_id=task.id, workflow_id=task.workflow_id)
        return task

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


def _details(data: TaskCreate) -> dict[str, Any]:
    """The task's metadata: its engineering or deploy options, read by the workflow's plan
    activity."""
    if data.type is TaskType.deploy:
        options = data.deploy or DeployOptions()
        return {"deploy": options.model_dump(mode="json", exclude_none=True)}
    if data.engineering is None:
        return {}
    return {"engineering": data.engineering.model_dump(mode="json", exclude_none=True)}


def _action(data: TaskCreate) -> str:
    if data.type is TaskType.deploy:
        return (data.deploy or DeployOptions()).action.value
    return data.action.value


def _deploy_spec(data: TaskCreate, project: Project) -> str:
    options = data.deploy or DeployOptions()
    ref = f" ({options.ref})" if options.ref else ""
    return f"{options.action.value.capitalize()} {project.name}{ref}"


def _workflow_id(type: TaskType, task_id: str) -> str:
    if type is TaskType.deploy:
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
