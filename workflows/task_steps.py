"""The steps every task workflow takes on its task row: start it, record its events, finish it.

Deterministic workflow code (activity calls only), shared by the engineering and deploy
workflows so a task moves through its states the same way whichever department runs it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import FailureError

from workflows.scaffold import DB_RETRY, describe_failure

with workflow.unsafe.imports_passed_through():
    from activities.tasks import FinishTaskInput, StartTaskResult, TaskActivities, TaskEventInput
    from core.contracts.events import EventType, TaskStatus

TASK_ROW_TIMEOUT = timedelta(seconds=30)


async def start_task(task_id: str) -> StartTaskResult:
    """QUEUED -> RUNNING; ``should_run`` is False when the task was cancelled before."""
    return await workflow.execute_activity_method(
        TaskActivities.start_task,
        task_id,
        start_to_close_timeout=TASK_ROW_TIMEOUT,
        retry_policy=DB_RETRY,
        summary="Mark the task RUNNING",
    )


async def record_event(
    task_id: str,
    type: EventType,
    message: str,
    *,
    stage: str | None = None,
    progress: float | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    await workflow.execute_activity_method(
        TaskActivities.record_event,
        TaskEventInput(
            task_id=task_id,
            type=type,
            message=message,
            stage=stage,
            progress=progress,
            data=data or {},
        ),
        start_to_close_timeout=TASK_ROW_TIMEOUT,
        retry_policy=DB_RETRY,
        summary=f"Event {type.value}" + (f" ({stage})" if stage else ""),
    )


async def finish_task(
    task_id: str,
    status: TaskStatus,
    message: str,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    """The terminal status, once. A run already failing or cancelled reports that first
    problem, not a second one met while recording it."""
    try:
        await workflow.execute_activity_method(
            TaskActivities.finish_task,
            FinishTaskInput(
                task_id=task_id, status=status, message=message, result=result, error=error
            ),
            start_to_close_timeout=TASK_ROW_TIMEOUT,
            retry_policy=DB_RETRY,
            summary=f"Mark the task {status.value}",
        )
    except FailureError as failure:
        if status is TaskStatus.completed:
            raise
        workflow.logger.warning("could not record %s: %s", status, describe_failure(failure))
