"""ServerHealthWorkflow: one tick of the server-health Schedule (core/schedules.py).

Each provisioned server is read over SSH (``HealthActivities.check_server_health``, on a host with
Ansible): reachable or not, load, memory, disk, container engine. The same activity records its
status (READY, DEGRADED, UNREACHABLE) with ``last_checked_at``, counts the failed checks in a row
and opens or resolves the server's incidents, telling the admins' chats once each
(db/incidents.py). Checks run concurrently, at most ``health_check_concurrency`` at a time.

A server whose check fails for good in this tick (its key unreadable, the worker lost three
times) is named in the output and does not stop the others; the next tick tries again.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.exceptions import ActivityError

from workflows.policies import (
    DB_RETRY,
    FEW_RETRIES,
    PLAYBOOK_HEARTBEAT,
    QUICK,
    SERVER_CHECK_TIMEOUT,
)
from workflows.toolkit import host_with

with workflow.unsafe.imports_passed_through():
    from activities.health import HealthActivities, ServerCheckInput, ServerCheckOutput
    from core.schedules import SERVER_HEALTH
    from core.task_queues import ANSIBLE


class ServerHealthInput(BaseModel):
    """Nothing: the worker's settings say what to check and how (thresholds, concurrency)."""


class ServerHealthOutput(BaseModel):
    checked: list[ServerCheckOutput] = Field(default_factory=list)
    errors: dict[str, str] = Field(
        default_factory=dict, description="Servers whose check failed in this tick, and why"
    )


@workflow.defn(name=SERVER_HEALTH.workflow)
class ServerHealthWorkflow:
    @workflow.run
    async def run(self, request: ServerHealthInput) -> ServerHealthOutput:
        plan = await workflow.execute_activity_method(
            HealthActivities.plan_server_health,
            start_to_close_timeout=QUICK,
            retry_policy=DB_RETRY,
            summary="The servers to check",
        )
        output = ServerHealthOutput()
        # The tick's id: a retried check of this run counts once.
        tick = workflow.info().workflow_id
        slots = asyncio.Semaphore(plan.concurrency)

        async def check(handle: str) -> None:
            async with slots:
                try:
                    output.checked.append(
                        await workflow.execute_activity_method(
                            HealthActivities.check_server_health,
                            ServerCheckInput(handle=handle, tick=tick),
                            task_queue=host_with(ANSIBLE),
                            start_to_close_timeout=SERVER_CHECK_TIMEOUT,
                            heartbeat_timeout=PLAYBOOK_HEARTBEAT,
                            retry_policy=FEW_RETRIES,
                            summary=f"Check server {handle}",
                        )
                    )
                except ActivityError as error:
                    output.errors[handle] = str(error.cause or error)

        await asyncio.gather(*(check(handle) for handle in plan.subjects))
        output.checked.sort(key=lambda checked: checked.handle)
        return output
