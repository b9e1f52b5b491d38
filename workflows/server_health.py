"""ServerHealthWorkflow: one tick of the server-health Schedule (core/schedules.py).

Each provisioned server is read over SSH (``HealthActivities.check_server_health``, on a host
with Ansible): reachable or not, load, memory, disk, container engine. The same activity records
its status (READY, DEGRADED, UNREACHABLE) with ``last_checked_at``, counts the failed checks in a
row and opens or resolves the server's incidents, telling the admins' chats once each
(db/incidents.py). Checks run concurrently, at most ``health_check_concurrency`` at a time.

A server whose check fails for good in this tick (its key unreadable, the worker lost three
times) is named in the output and does not stop the others; the next tick tries again.
"""

from __future__ import annotations

from temporalio import workflow

from workflows.policies import CHECK_HEARTBEAT, FEW_RETRIES, SERVER_CHECK_TIMEOUT
from workflows.toolkit import bounded_each, host_with, read_plan

with workflow.unsafe.imports_passed_through():
    from activities.health import CheckReport, HealthActivities, ServerCheckInput, Tick
    from activities.health import ServerCheckOutput as ServerCheck
    from core.schedules import SERVER_HEALTH
    from core.task_queues import ANSIBLE

ServerHealthOutput = CheckReport[ServerCheck]


@workflow.defn(name=SERVER_HEALTH.workflow)
class ServerHealthWorkflow:
    @workflow.run
    async def run(self, request: Tick) -> CheckReport[ServerCheck]:
        plan = await read_plan(HealthActivities.plan_server_health, "The servers to check")
        # The tick's id: a retried check of this run counts once.
        tick = workflow.info().workflow_id

        async def check(handle: str) -> ServerCheck:
            return await workflow.execute_activity_method(
                HealthActivities.check_server_health,
                ServerCheckInput(handle=handle, tick=tick),
                task_queue=host_with(ANSIBLE),
                start_to_close_timeout=SERVER_CHECK_TIMEOUT,
                heartbeat_timeout=CHECK_HEARTBEAT,
                retry_policy=FEW_RETRIES,
                summary=f"Check server {handle}",
            )

        checked, failed = await bounded_each(plan.subjects, plan.concurrency, check)
        return ServerHealthOutput(
            checked=sorted(checked, key=lambda one: one.handle), errors=dict(failed)
        )
