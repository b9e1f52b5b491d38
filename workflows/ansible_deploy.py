"""AnsibleDeployWorkflow: one ``ansible:deploy:queue`` message, one release on one server.

Started by the bridge with the id ``ansible-deploy-{request_id}``. Runs deploy.yml through
ansible-runner in one heartbeating activity (a killed worker's run is played again elsewhere,
ending the orphaned playbook first), then publishes the result on ``deploy:result:{request_id}``
for an hour, whatever the outcome, signals it to the workflow the message names
(``notify_workflow_id``: the deploy waiting for it in workflow code), and returns it.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, FailureError, is_cancelled_exception

from workflows.policies import (
    PLAYBOOK_HEARTBEAT,
    PUBLISH_RETRY,
    QUICK,
    RELEASE_MARGIN,
    RELEASE_RETRY,
)
from workflows.toolkit import describe_failure, host_with, signal_run

with workflow.unsafe.imports_passed_through():
    from activities.releases import PLAYBOOK_TIMEOUT_S, ReleaseActivities
    from core.contracts.deploy import ANSIBLE_DEPLOY_ENDED
    from core.contracts.workflows import (
        ANSIBLE_DEPLOY_WORKFLOW,
        AnsibleDeployInput,
        AnsibleDeployOutput,
    )
    from core.task_queues import ANSIBLE


@workflow.defn(name=ANSIBLE_DEPLOY_WORKFLOW)
class AnsibleDeployWorkflow:
    @workflow.run
    async def run(self, message: AnsibleDeployInput) -> AnsibleDeployOutput:
        try:
            result = await workflow.execute_activity_method(
                ReleaseActivities.deploy_release,
                message,
                task_queue=host_with(ANSIBLE),
                start_to_close_timeout=timedelta(seconds=PLAYBOOK_TIMEOUT_S) + RELEASE_MARGIN,
                heartbeat_timeout=PLAYBOOK_HEARTBEAT,
                retry_policy=RELEASE_RETRY,
                summary=f"deploy.yml: release {message.release} to {message.server_ip}"
                f":{message.port}",
            )
        except ActivityError as error:
            if is_cancelled_exception(error):
                raise
            result = AnsibleDeployOutput(
                request_id=message.request_id,
                success=False,
                error=describe_failure(error),
                server_ip=message.server_ip,
                port=message.port,
                release=message.release,
            )
        await workflow.execute_activity_method(
            ReleaseActivities.publish_deploy_result,
            result,
            start_to_close_timeout=QUICK,
            retry_policy=PUBLISH_RETRY,
            summary="Publish deploy:result",
        )
        await _notify(message.notify_workflow_id, result)
        return result


async def _notify(workflow_id: str | None, result: AnsibleDeployOutput) -> None:
    """Tell the waiting deploy; one that is gone (cancelled meanwhile) needs no word."""
    if not workflow_id:
        return
    try:
        await signal_run(workflow_id, ANSIBLE_DEPLOY_ENDED, result)
    except FailureError as failure:
        workflow.logger.info("%s not told: %s", workflow_id, describe_failure(failure))
