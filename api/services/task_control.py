"""Tasks as Temporal sees them: cancelling a task's run, and delivering a person's answer."""

from __future__ import annotations

from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from api.problems import Conflict
from api.services.temporal_calls import delivering, temporal_unavailable
from core.contracts.events import TASK_RESPOND, HumanAnswer
from core.enums import TaskStatus
from db.tables import Task
from db.tasks import TaskService

# How long an answer may wait for the workflow to take it (a worker must be polling).
RESPOND_TIMEOUT = 30.0


async def cancel(client: Client, tasks: TaskService, task: Task) -> None:
    """Ask the task's run to stop; a task whose run has not started (or is gone) is finished
    here. The run records CANCELLED itself once it has stopped."""
    await _cancel(client.get_workflow_handle(task.workflow_id), tasks, task)


async def respond(client: Client, task: Task, answer: HumanAnswer) -> None:
    """Run the workflow's ``respond`` update; its refusals become 409s."""
    await _deliver(client.get_workflow_handle(task.workflow_id), task, answer)


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


async def _deliver(handle: WorkflowHandle[Any, Any], task: Task, answer: HumanAnswer) -> None:
    async with delivering(
        f"task {task.id}",
        "the answer",
        within_s=RESPOND_TIMEOUT,
        not_running=f"the run of task {task.id} is not running",
    ):
        await handle.execute_update(TASK_RESPOND, answer, result_type=str)
