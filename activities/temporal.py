"""Activities that talk to Temporal itself, for what a workflow cannot do from inside.

A workflow can wait for its own children, not for a run someone else started. When the scaffold
run of a project is already going (started from ``scaffolder:queue`` or by another task), the
engineering workflow waits for that run's result here.
"""

from __future__ import annotations

from temporalio import activity
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from activities import heartbeating
from core.contracts.scaffolder import ScaffoldResult
from core.temporal import failure_reason


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
