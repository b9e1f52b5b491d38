"""Activities that read and change tasks and projects in the database.

Tasks move through their states with the same TaskService the API uses; each change also writes
its progress event to ``task_progress:{task_id}`` through the outbox.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from redis.asyncio import Redis
from temporalio import activity
from temporalio.exceptions import ApplicationError

from core.contracts.scaffolder import ScaffoldResult
from core.enums import TERMINAL_STATUSES, EventType, ProjectStatus, ProjectTemplate, TaskStatus
from db import projects
from db.engine import Database
from db.errors import NotFound
from db.tasks import TaskNotFound, TaskService


class StartTaskResult(BaseModel):
    should_run: bool = Field(description="False when the task was cancelled or done before start")
    status: TaskStatus


class TaskEventInput(BaseModel):
    task_id: str
    type: EventType
    message: str
    stage: str | None = None
    progress: float | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class FinishTaskInput(BaseModel):
    task_id: str
    status: TaskStatus
    message: str
    result: dict[str, Any] | None = None
    error: str | None = None


class QuestionInput(BaseModel):
    task_id: str
    question: str
    stage: str | None = None


class ProjectInfo(BaseModel):
    """What the workflows need to know about a project."""

    id: str
    name: str
    description: str = ""
    modules: list[str] = Field(default_factory=list)
    template: ProjectTemplate | None = None
    status: ProjectStatus
    repository: str | None = None
    repo_full_name: str | None = None


class ProjectStatusInput(BaseModel):
    project_id: str
    status: ProjectStatus


def _not_found(kind: str, identifier: str) -> ApplicationError:
    # No retry brings a missing row back: fail the workflow with a sentence a person can act on.
    return ApplicationError(
        f"{kind} {identifier} does not exist",
        type=f"{kind.capitalize()}NotFound",
        non_retryable=True,
    )


class TaskActivities:
    def __init__(self, db: Database, redis: Redis) -> None:
        self.db = db
        self.tasks = TaskService(db, redis)

    @activity.defn
    async def start_task(self, task_id: str) -> StartTaskResult:
        """QUEUED -> RUNNING (idempotent: a retried start finds the task RUNNING and runs it)."""
        try:
            task = await self.tasks.start(task_id)
        except TaskNotFound:
            raise _not_found("task", task_id) from None
        if task is not None:
            return StartTaskResult(should_run=True, status=task.status)
        current = await self.tasks.get(task_id)
        return StartTaskResult(
            should_run=current.status not in TERMINAL_STATUSES, status=current.status
        )

    @activity.defn
    async def record_event(self, event: TaskEventInput) -> int:
        """Add a progress event; returns its sequence number."""
        if activity.info().attempt > 1:
            # An earlier attempt may have committed before its completion got lost. The workflow
            # records events one at a time, so such a duplicate can only be the latest event.
            seq = await self._latest_matching_event(event)
            if seq is not None:
                return seq
        try:
            written = await self.tasks.add_event(
                event.task_id,
                event.type,
                event.message,
                stage=event.stage,
                progress=event.progress,
                data=event.data,
            )
        except TaskNotFound:
            raise _not_found("task", event.task_id) from None
        return written.seq

    async def _latest_matching_event(self, event: TaskEventInput) -> int | None:
        latest = await self.tasks.latest_event(event.task_id)
        if latest is None:
            return None
        same = (latest.type, latest.stage, latest.message) == (
            event.type,
            event.stage,
            event.message,
        )
        return latest.seq if same else None

    @activity.defn
    async def finish_task(self, finish: FinishTaskInput) -> bool:
        """Move the task to its terminal status once; False when it already was terminal."""
        try:
            return await self.tasks.finish(
                finish.task_id,
                finish.status,
                message=finish.message,
                result=finish.result,
                error=finish.error,
            )
        except TaskNotFound:
            raise _not_found("task", finish.task_id) from None

    @activity.defn
    async def wait_for_human(self, request: QuestionInput) -> bool:
        """RUNNING -> WAITING_HUMAN, with the question in the event (idempotent)."""
        try:
            return await self.tasks.wait_for_human(
                request.task_id, request.question, stage=request.stage
            )
        except TaskNotFound:
            raise _not_found("task", request.task_id) from None

    @activity.defn
    async def answered(self, request: QuestionInput) -> bool:
        """WAITING_HUMAN -> RUNNING once the question is answered (idempotent)."""
        try:
            return await self.tasks.answered(request.task_id, request.question, stage=request.stage)
        except TaskNotFound:
            raise _not_found("task", request.task_id) from None

    @activity.defn
    async def get_project(self, project_id: str) -> ProjectInfo:
        async with self.db.session() as session:
            try:
                project = await projects.get_project_by_id(session, project_id)
            except NotFound:
                raise _not_found("project", project_id) from None
        return ProjectInfo.model_validate(project, from_attributes=True)

    @activity.defn
    async def set_project_status(self, change: ProjectStatusInput) -> None:
        """SCAFFOLDING / FAILED / NEW while a repository is being made; READY is never undone."""
        async with self.db.session() as session:
            try:
                await projects.set_status(session, change.project_id, change.status)
            except NotFound:
                raise _not_found("project", change.project_id) from None

    @activity.defn
    async def record_repository(self, result: ScaffoldResult) -> None:
        """The project has its repository: remember where, and mark it READY."""
        async with self.db.session() as session:
            try:
                await projects.set_repository(
                    session, result.project_id, result.repository, result.repo_full_name
                )
            except NotFound:
                raise _not_found("project", result.project_id) from None
