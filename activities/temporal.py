"""Activities that talk to Temporal itself, for what a workflow cannot do from inside.

A workflow can wait for its own children, not for a run someone else started. When the scaffold
run of a project is already going (started from ``scaffolder:queue`` or by another task), the
engineering workflow waits for that run's result here.
"""

from __future__ import annotations

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.heartbeat import heartbeating
from core.contracts.scaffolder import ScaffoldResult


class TemporalActivities:
    def __init__(self, client: Client) -> None:
        self.client = client

    @activity.defn
    async def wait_for_scaffold(self, workflow_id: str) -> ScaffoldResult:
        """The result of the scaffold run ``workflow_id`` (following continue-as-new and retries).

        Heartbeats while it waits, so the wait is cancelled with its workflow and a dead worker's
        wait moves to another worker.
        """
        handle = self.client.get_workflow_handle(workflow_id, result_type=ScaffoldResult)
        async with heartbeating(workflow_id):
            try:
                return await handle.result()
            except WorkflowFailureError as exc:
                reason = failure_reason(exc)
                raise ApplicationError(
                    f"the scaffold run {workflow_id} did not succeed: {reason}",
                    type="ScaffoldFailed",
                    non_retryable=True,
                ) from None


async def workflow_status(client: Client, workflow_id: str) -> WorkflowExecutionStatus | None:
    """The status of the workflow's latest run; None when there is no such workflow."""
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return description.status


async def is_running(client: Client, workflow_id: str) -> bool:
    return await workflow_status(client, workflow_id) == WorkflowExecutionStatus.RUNNING


def failure_reason(error: WorkflowFailureError) -> str:
    """Why a run failed, in its own words (its application error's message)."""
    cause = error.cause
    return getattr(cause, "message", None) or str(cause or error)
