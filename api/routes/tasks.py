"""Tasks: create (the queue message goes through the outbox), read, cancel, retry, respond,
events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, status
from pydantic import Field
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.deps import AppRuntime, CurrentUser, DbSession, KeyChat, Runtime, Tasks
from api.problems import Conflict, problem_responses
from api.schemas import RequestBody, TaskCreate, TaskEventRead, TaskRead
from api.services import task_control
from core.contracts.events import HumanAnswer
from core.enums import TERMINAL_STATUSES, TaskStatus, TaskType
from core.ids import chat_stream
from core.logging import bind_context
from db import events, projects
from db.tables import Task

router = APIRouter(prefix="/tasks", tags=["tasks"])

EVENT_STREAM = "text/event-stream"
# Event numbers are a 32-bit column (task_events.seq): a larger one is invalid input, not a query
# the database fails.
MAX_SEQ = 2**31 - 1


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
    new = data.new_task(project_name=project.name, user_id=user.id, correlation_id=correlation_id)
    task = await tasks.create(new)
    bind_context(task_id=task.id, workflow_id=task.workflow_id)
    return TaskRead.model_validate(task)


@router.get("", summary="Tasks, newest first")
async def list_tasks(
    tasks: Tasks,
    project_id: str | None = None,
    status: TaskStatus | None = None,
    type: TaskType | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[TaskRead]:
    found = await tasks.list_tasks(project_id=project_id, status=status, type=type, limit=limit)
    return [TaskRead.model_validate(task) for task in found]


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
    await task_control.cancel(client, tasks, task)
    return TaskRead.model_validate(await tasks.get(task.id))


@router.post(
    "/{task_id}/retry",
    status_code=status.HTTP_201_CREATED,
    summary="Run a failed or cancelled task again, as a new task",
    responses=problem_responses(404, 409),
)
async def retry_task(task: PathTask, user: CurrentUser, tasks: Tasks) -> TaskRead:
    return TaskRead.model_validate(await tasks.retry(task.id, user_id=user.id))


class TaskAnswer(RequestBody):
    """A person's answer to the question of a task in WAITING_HUMAN."""

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
    await task_control.respond(client, task, answer)
    # The workflow moves the task back to RUNNING itself, a moment later.
    return TaskRead.model_validate(await tasks.get(task.id))


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
    after: Annotated[int, Query(ge=0, le=MAX_SEQ, description="Only events with a larger seq")] = 0,
    # 0, not None, when absent: a header has no null, and the schema must not offer one.
    last_event_id: Annotated[
        int, Header(ge=0, le=MAX_SEQ, description="Set by EventSource when it reconnects")
    ] = 0,
) -> Any:
    if EVENT_STREAM not in request.headers.get("accept", ""):
        rows = await events.list_events(runtime.db, task.id, after=after)
        return [TaskEventRead.model_validate(row) for row in rows]
    start = max(after, last_event_id)
    return EventSourceResponse(_event_stream(runtime, task.id, start), ping=runtime.sse_ping)


async def _event_stream(
    runtime: Runtime, task_id: str, after: int
) -> AsyncIterator[ServerSentEvent]:
    runtime.sse_streams += 1
    try:
        async for event in events.follow(
            runtime.db, runtime.redis, task_id, after=after, wait=runtime.sse_wait
        ):
            data = TaskEventRead.model_validate(event).model_dump_json()
            yield ServerSentEvent(data=data, event="task_event", id=str(event.seq))
    finally:
        runtime.sse_streams -= 1
