"""ProvisionWorkflow: bootstrap a server for deploys and record what it reported.

Started as ``provision-{server_handle}`` from ``provisioner:queue``, each time the server is
added or provisioning is asked for again. The server goes PROVISIONING, then READY with its
capacity, or FAILED with Ansible's message (a failed playbook is an outcome, not a workflow
failure). Whatever the outcome, the result is published on ``provisioner:result:{request_id}``.

The same message delivered again finds that result and returns it: nothing runs twice.
"""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.exceptions import ApplicationError, FailureError, is_cancelled_exception

from workflows.policies import (
    DB_RETRY,
    FEW_RETRIES,
    PLAYBOOK_HEARTBEAT,
    PROVISION_TIMEOUT,
    QUICK,
)
from workflows.toolkit import describe_failure, host_with

with workflow.unsafe.imports_passed_through():
    from activities.servers import (
        SERVER_NOT_FOUND,
        ProvisionReport,
        ProvisionRequest,
        ServerActivities,
    )
    from core.contracts.provisioner import ProvisionerResult
    from core.contracts.workflows import PROVISION_WORKFLOW, ProvisionInput, ProvisionOutput
    from core.enums import ServerStatus
    from core.task_queues import ANSIBLE


def is_server_missing(error: BaseException) -> bool:
    current: BaseException | None = error
    while current is not None:
        if isinstance(current, ApplicationError) and current.type == SERVER_NOT_FOUND:
            return True
        current = current.cause if isinstance(current, FailureError) else None
    return False


@workflow.defn(name=PROVISION_WORKFLOW)
class ProvisionWorkflow:
    @workflow.run
    async def run(self, request: ProvisionInput) -> ProvisionOutput:
        published = await workflow.execute_activity_method(
            ServerActivities.find_provision_result,
            request.request_id,
            start_to_close_timeout=QUICK,
            retry_policy=DB_RETRY,
            summary=f"Look for the result of request {request.request_id}",
        )
        if published is not None:
            workflow.logger.info("request %s was provisioned before", request.request_id)
            return ProvisionOutput(
                server_handle=published.server_handle,
                status=ServerStatus(published.status),
                error=published.error,
            )
        try:
            report = await self._provision(request)
        except (asyncio.CancelledError, FailureError) as error:
            reason = await self._fail(request, error)
            if is_cancelled_exception(error):
                raise
            raise ApplicationError(
                f"provisioning server {request.server_handle} failed: {reason}",
                type="ProvisionFailed",
                non_retryable=True,
            ) from error
        output = ProvisionOutput(
            server_handle=request.server_handle,
            status=ServerStatus.ready if report.success else ServerStatus.failed,
            capacity=report.capacity,
            error=report.error,
        )
        await self._publish(request, output)
        workflow.logger.info("server %s is %s", request.server_handle, output.status.value)
        return output

    async def _provision(self, request: ProvisionInput) -> ProvisionReport:
        handle = request.server_handle
        await workflow.execute_activity_method(
            ServerActivities.mark_provisioning,
            handle,
            start_to_close_timeout=QUICK,
            retry_policy=DB_RETRY,
            summary=f"Server {handle} PROVISIONING",
        )
        report = await workflow.execute_activity_method(
            ServerActivities.provision_server,
            ProvisionRequest(server_handle=handle, force_reinstall=request.force_reinstall),
            task_queue=host_with(ANSIBLE),
            start_to_close_timeout=PROVISION_TIMEOUT,
            heartbeat_timeout=PLAYBOOK_HEARTBEAT,
            retry_policy=FEW_RETRIES,
            summary=f"Run provision.yml on {handle}"
            + (" (installing missing packages)" if request.force_reinstall else ""),
        )
        await self._record(report)
        return report

    async def _fail(self, request: ProvisionInput, error: BaseException) -> str:
        """A run that could not finish still leaves the server FAILED and publishes why (a
        removed server has no row to mark); returns the reason."""
        cancelled = is_cancelled_exception(error)
        reason = "provisioning was cancelled" if cancelled else describe_failure(error)
        if not is_server_missing(error):
            await self._record(
                ProvisionReport(server_handle=request.server_handle, success=False, error=reason)
            )
        failed = ProvisionOutput(
            server_handle=request.server_handle, status=ServerStatus.failed, error=reason
        )
        await self._publish(request, failed)
        return reason

    async def _record(self, report: ProvisionReport) -> None:
        status = "READY" if report.success else "FAILED"
        await workflow.execute_activity_method(
            ServerActivities.record_provisioned,
            report,
            start_to_close_timeout=QUICK,
            retry_policy=DB_RETRY,
            summary=f"Server {report.server_handle} {status}",
        )

    async def _publish(self, request: ProvisionInput, output: ProvisionOutput) -> None:
        result = ProvisionerResult(
            request_id=request.request_id,
            server_handle=output.server_handle,
            success=output.status == ServerStatus.ready,
            status=output.status.value,
            error=output.error,
        )
        await workflow.execute_activity_method(
            ServerActivities.publish_provision_result,
            result,
            start_to_close_timeout=QUICK,
            retry_policy=DB_RETRY,
            summary=f"Publish the result of request {request.request_id}",
        )
