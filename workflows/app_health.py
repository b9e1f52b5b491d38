"""AppHealthWorkflow: one tick of the app-health Schedule (core/schedules.py).

Every project's live release is asked from the orchestrator, as its users reach it: its health
URL through its server's edge, or, for an app without a port (a bot), its process on its server
(``HealthActivities.check_app_health``, on a host with Ansible: a down app is looked at, and
started again, over SSH). Found down for the first time in a row, it is started again once
(``ORCHESTRATOR_APP_RESTART_BEFORE_INCIDENT``) and asked again; still down, the failure counts,
and ``incident_after_failures`` of them in a row open an ``app_down`` incident with its last log
lines, told to the project's chat. A TLS certificate running out within
``certificate_expiry_days`` opens ``certificate_expiring``. Checks run concurrently, at most
``health_check_concurrency`` at a time.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.exceptions import ActivityError

from workflows.policies import APP_CHECK_TIMEOUT, DB_RETRY, FEW_RETRIES, PLAYBOOK_HEARTBEAT, QUICK
from workflows.toolkit import host_with

with workflow.unsafe.imports_passed_through():
    from activities.health import AppCheckInput, AppCheckOutput, HealthActivities
    from core.schedules import APP_HEALTH
    from core.task_queues import ANSIBLE


class AppHealthInput(BaseModel):
    """Nothing: the worker's settings say how (thresholds, restarts, concurrency)."""


class AppHealthOutput(BaseModel):
    checked: list[AppCheckOutput] = Field(default_factory=list)
    errors: dict[str, str] = Field(
        default_factory=dict, description="Releases whose check failed in this tick, and why"
    )


@workflow.defn(name=APP_HEALTH.workflow)
class AppHealthWorkflow:
    @workflow.run
    async def run(self, request: AppHealthInput) -> AppHealthOutput:
        plan = await workflow.execute_activity_method(
            HealthActivities.plan_app_health,
            start_to_close_timeout=QUICK,
            retry_policy=DB_RETRY,
            summary="The serving apps to check",
        )
        output = AppHealthOutput()
        tick = workflow.info().workflow_id
        slots = asyncio.Semaphore(plan.concurrency)

        async def check(deployment_id: str) -> None:
            async with slots:
                try:
                    output.checked.append(
                        await workflow.execute_activity_method(
                            HealthActivities.check_app_health,
                            AppCheckInput(deployment_id=deployment_id, tick=tick),
                            task_queue=host_with(ANSIBLE),
                            start_to_close_timeout=APP_CHECK_TIMEOUT,
                            heartbeat_timeout=PLAYBOOK_HEARTBEAT,
                            retry_policy=FEW_RETRIES,
                            summary=f"Check release {deployment_id}",
                        )
                    )
                except ActivityError as error:
                    output.errors[deployment_id] = str(error.cause or error)

        await asyncio.gather(*(check(deployment_id) for deployment_id in plan.subjects))
        output.checked.sort(key=lambda checked: checked.deployment_id)
        return output
