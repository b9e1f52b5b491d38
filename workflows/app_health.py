"""AppHealthWorkflow: one tick of the app-health Schedule (core/schedules.py).

Every project's live release is asked from the orchestrator, as its users reach it: its health
URL through its server's edge, or, for an app without a port (a bot), its process on its server
(``HealthActivities.check_app_health``, on a host with Ansible: a down app is looked at, and
started again, over SSH). Found down for the first time in a row, it is started again once
(``ORCHESTRATOR_APP_RESTART_BEFORE_INCIDENT``) and asked again; still down, the failure counts,
and ``incident_after_failures`` of them in a row open an ``app_down`` incident with its last log
lines, told to the project's chat. A TLS certificate running out within
``certificate_expiry_days`` opens ``certificate_expiring``.

The releases are checked in batches of ``APP_BATCH`` per activity (a tick of hundreds of apps
stays a few dozen events in its history), each batch ``health_check_concurrency`` at a time, and
``plan.concurrency // APP_BATCH`` batches (at least one) at once.
"""

from __future__ import annotations

from temporalio import workflow

from workflows.policies import APP_CHECK_TIMEOUT, CHECK_HEARTBEAT, FEW_RETRIES
from workflows.toolkit import bounded_each, host_with, read_plan

with workflow.unsafe.imports_passed_through():
    from activities.health import AppBatchInput, AppCheckOutput, CheckReport, HealthActivities, Tick
    from core.schedules import APP_HEALTH
    from core.task_queues import ANSIBLE

# Releases per activity.
APP_BATCH = 25
AppHealthOutput = CheckReport[AppCheckOutput]


@workflow.defn(name=APP_HEALTH.workflow)
class AppHealthWorkflow:
    @workflow.run
    async def run(self, request: Tick) -> CheckReport[AppCheckOutput]:
        plan = await read_plan(HealthActivities.plan_app_health, "The serving apps to check")
        tick = workflow.info().workflow_id
        ids = plan.subjects
        batches = [ids[i : i + APP_BATCH] for i in range(0, len(ids), APP_BATCH)]

        async def check(batch: list[str]) -> CheckReport[AppCheckOutput]:
            return await workflow.execute_activity_method(
                HealthActivities.check_app_health,
                AppBatchInput(deployment_ids=batch, tick=tick),
                task_queue=host_with(ANSIBLE),
                start_to_close_timeout=APP_CHECK_TIMEOUT,
                heartbeat_timeout=CHECK_HEARTBEAT,
                retry_policy=FEW_RETRIES,
                summary=f"Check {len(batch)} apps",
            )

        done, failed = await bounded_each(batches, plan.concurrency // APP_BATCH, check)
        output = AppHealthOutput()
        for batch_output in done:
            output.checked += batch_output.checked
            output.errors.update(batch_output.errors)
        for batch, why in failed:
            output.errors.update(dict.fromkeys(batch, why))
        output.checked.sort(key=lambda one: one.deployment_id)
        return output
