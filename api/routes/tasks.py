"""Tasks: create (the queue message goes through the outbox), read, cancel, retry, respond,
events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import col, select
from sse_starlette import EventSourceResponse, ServerSentEvent
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from api.deps import AppRuntime, CurrentUser, DbSession, KeyChat, Runtime, Tasks
from api.models import Task, TaskCreate, TaskEventRead, TaskRead, TaskType
from api.problems import Conflict, Unprocessable, problem_responses
from api.services import events, projects
from api.services.tasks import TaskService
from api.services.temporal_calls import delivering, temporal_unavailable
from core.contracts.deploy import DeployOptions
from core.contracts.engineering import (
    ENGINEERING_RESPOND,
    EngineeringOptions,
    HumanAnswer,
)
from core.contracts.events import TERMINAL_STATUSES, TaskStatus
from core.ids import chat_stream
from core.logging import bind_context

router = APIRouter(prefix="/tasks", tags=["tasks"])

RETRYABLE = (TaskStatus.failed, TaskStatus.cancelled)
EVENT_STREAM = "text/event-stream"
# How long an answer may wait for the workflow to take it (a worker must be polling).
RESPOND_TIMEOUT = 30.0


async def load_task(task_id: str, tasks: Tasks) -> Task:
    task = await tasks.get(task_id)
    bind_context(task_id=task.id, workflow_id=task.workflow_id)
    return task


PathTask = Annotated[Task, Depends(load_task)]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Create a task; its workflow id is known at once",
    responses=problem_responses(404),
)
async def create_task(
    data: TaskCreate,
    request: Request,
    user: CurrentUser,
    key_chat: KeyChat,
    session: DbSession,
    tasks: Tasks,
) -> TaskRead:
    project = await projects.get_project_by_id(session, data.project_id)
    if key_chat is not None and data.callback_stream is None:
        # Started by a chat's PO: its progress goes back to that chat.
        data = data.model_copy(update={"callback_stream": chat_stream(key_chat)})
    correlation_id = getattr(request.state, "client_correlation_id", None)
    try:
        task = await tasks.create(
            data, user_id=user.id, project=project, correlation_id=correlation_id
        )
    except ValueError as exc:
        raise Unprocessable(str(exc)) from None
    bind_context(task_id=task.id, workflow_id=task.workflow_id)
    return TaskRead.model_validate(task)


@router.get("", summary="Tasks, newest first")
async def list_tasks(
    session: DbSession,
    project_id: str | None = None,
    status: TaskStatus | None = None,
    type: TaskType | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[TaskRead]:
    query = select(Task).order_by(col(Task.created_at).desc(), col(Task.id).desc()).limit(limit)
    if project_id is not None:
        query = query.where(Task.project_id == project_id)
    if status is not None:
        query = query.where(Task.status == status)
    if type is not None:
        query = query.where(Task.type == type)
    return [TaskRead.model_validate(task) for task in (await session.exec(query)).all()]


@router.get("/{task_id}", summary="One task", responses=problem_responses(404))
async def get_task(task: PathTask) -> TaskRead:
    return TaskRead.model_validate(task)


@router.post(
    "/{task_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Cancel a task: its workflow records CANCELLED once it has stopped",
    responses=problem_responses(404, 409, 503),
)
async def cancel_task(task: PathTask, tasks: Tasks, runtime: AppRuntime) -> TaskRead:
    if task.status in TERMINAL_STATUSES:
        raise Conflict(f"task {task.id} is already {task.status}")
    client = await runtime.temporal_client()  # here, not as a dependency: a 409 needs no Temporal
    await _cancel(client.get_workflow_handle(task.workflow_id), tasks, task)
    return TaskRead.model_validate(await tasks.get(task.id))


async def _cancel(handle: WorkflowHandle[Any, Any], tasks: TaskService, task: Task) -> None:
    # A second round covers a bridge starting the workflow between our two calls.
    for _ in range(2):
        # Temporal accepts a cancel request for a closed run too: describe() tells them apart.
        requested = await _rpc_found(handle.cancel())
        try:
            description = await handle.describe()
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise temporal_unavailable(exc) from exc
            if not requested:
                # Not started yet: mark it. A workflow a bridge starts later finds the task
                # CANCELLED when it tries to start it, and ends at once.
                message = "Cancelled before it started"
                await tasks.finish(task.id, TaskStatus.cancelled, message=message)
            return
        if description.status != WorkflowExecutionStatus.RUNNING:
            await _closed_workflow(tasks, task, description.status)
            return
        if requested:
            return  # the workflow records CANCELLED itself once it has stopped


async def _rpc_found(call: Any) -> bool:
    try:
        await call
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise temporal_unavailable(exc) from exc
        return False
    return True


async def _closed_workflow(
    tasks: TaskService, task: Task, workflow_status: WorkflowExecutionStatus | None
) -> None:
    """The workflow ended without recording it on the task (terminated, cancelled from outside)."""
    if workflow_status in (WorkflowExecutionStatus.CANCELED, WorkflowExecutionStatus.TERMINATED):
        name = workflow_status.name.lower()
        await tasks.finish(task.id, TaskStatus.cancelled, message=f"The workflow was {name}")
        return
    raise Conflict(f"the workflow of task {task.id} has already finished")


@router.post(
    "/{task_id}/retry",
    status_code=status.HTTP_201_CREATED,
    summary="Run a failed or cancelled task again, as a new task",
    responses=problem_responses(404, 409),
)
async def retry_task(
    task: PathTask, user: CurrentUser, session: DbSession, tasks: Tasks
) -> TaskRead:
    if task.status not in RETRYABLE:
        raise Conflict(
            f"only failed or cancelled tasks can be retried; task {task.id} is {task.status}"
        )
    earlier = (await session.exec(select(Task.id).where(Task.retry_of == task.id))).first()
    if earlier is not None:
        # A repeated click (or a client retrying a timed-out call) must not run the work twice.
        raise Conflict(f"task {task.id} was already retried as task {earlier}")
    project = await projects.get_project_by_id(session, task.project_id)
    data = TaskCreate(
        type=task.type,
        project_id=task.project_id,
        spec=task.spec,
        callback_stream=task.callback_stream,
        engineering=_engineering_options(task),
        deploy=_deploy_options(task),
        # A deploy's action is in its deploy options; an engineering task's is its own.
        **({"action": task.action} if task.type == TaskType.engineering else {}),
    )
    retry = await tasks.create(
        data,
        user_id=user.id,
        project=project,
        retry_of=task.id,
        correlation_id=task.correlation_id,
    )
    return TaskRead.model_validate(retry)


def _engineering_options(task: Task) -> EngineeringOptions | None:
    """The original's agent and limits, so a retry runs the way the first run did."""
    options = (task.details or {}).get("engineering")
    return EngineeringOptions.model_validate(options) if options is not None else None


def _deploy_options(task: Task) -> DeployOptions | None:
    """A deploy's action and ref, so its retry deploys the same thing."""
    options = (task.details or {}).get("deploy")
    return DeployOptions.model_validate(options) if options is not None else None


class TaskAnswer(BaseModel):
    """A person's answer to the question of a task in WAITING_HUMAN."""

    model_config = ConfigDict(extra="forbid")
    answer: str = Field(min_length=1, max_length=20_000)


@router.post(
    "/{task_id}/respond",
    summary="Answer the question of a task waiting for a person; the work goes on",
    responses=problem_responses(404, 409, 503),
)
async def respond_to_task(
    task: PathTask, body: TaskAnswer, user: CurrentUser, tasks: Tasks, runtime: AppRuntime
) -> TaskRead:
    if task.status != TaskStatus.waiting_human:
        raise Conflict(f"task {task.id} is not waiting for an answer (status {task.status})")
    client = await runtime.temporal_client()
    answer = HumanAnswer(answer=body.answer, user_id=user.id)
    await _deliver(client.get_workflow_handle(task.workflow_id), task, answer)
    # The workflow moves the task back to RUNNING itself, a moment later.
    return TaskRead.model_validate(await tasks.get(task.id))


async def _deliver(handle: WorkflowHandle[Any, Any], task: Task, answer: HumanAnswer) -> None:
    """Run the workflow's ``respond`` update; its refusals become 409s."""
    async with delivering(
        f"task {task.id}",
        "the answer",
        within_s=RESPOND_TIMEOUT,
        not_running=f"the run of task {task.id} is not running",
    ):
        await handle.execute_update(ENGINEERING_RESPOND, answer, result_type=str)


@router.get(
    "/{task_id}/events",
    summary="Progress events; live as Server-Sent Events with Accept: text/event-stream",
    response_model=list[TaskEventRead],
    responses={
        200: {
            "content": {
                EVENT_STREAM: {
                    "schema": {
                        "type": "string",
                        "description": "`event: task_event`, `id: <seq>`, `data: <TaskEventRead>`;"
                        " ends after a terminal event",
                    }
                }
            }
        },
        **problem_responses(404),
    },
)
async def task_events(
    task: PathTask,
    request: Request,
    runtime: AppRuntime,
    after: Annotated[int, Query(ge=0, description="Only events with a larger seq")] = 0,
    last_event_id: Annotated[
        int | None, Header(ge=0, description="Set by EventSource when it reconnects")
    ] = None,
) -> Any:
    if EVENT_STREAM not in request.headers.get("accept", ""):
        return await events.list_events(runtime.db, task.id, after=after)
    start = max(after, last_event_id or 0)
    return EventSourceResponse(_event_stream(runtime, task.id, start), ping=runtime.sse_ping)


async def _event_stream(
    runtime: Runtime, task_id: str, after: int
) -> AsyncIterator[ServerSentEvent]:
    runtime.sse_streams += 1
    try:
        async for event in events.follow(
            runtime.db, runtime.redis, task_id, after=after, wait=runtime.sse_wait
        ):
            yield ServerSentEvent(
                data=event.model_dump_json(), event="task_event", id=str(event.seq)
            )
    finally:
        runtime.sse_streams -= 1
