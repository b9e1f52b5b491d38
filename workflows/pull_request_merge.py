"""PullRequestMergeWorkflow (``merge-{pull request id}``): `pr merge` (``POST
/pull-requests/{id}/merge``), which the API starts and waits for.

One activity on any host merges the pull request on the worker's forge (a merge commit of its
branch into its base) and records the merge, which starts the project's deploy when it has
auto-deploy (``RepoSyncActivities.merge_pull_request``). What the forge refuses for good (the
pull request is closed, its branch conflicts) ends the run with ``refused`` naming it, which the
API answers with a 409; a forge that stays away, with ``error``.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

from workflows.policies import FEW_RETRIES, MERGE_TIMEOUT

with workflow.unsafe.imports_passed_through():
    from activities.repo_sync import RepoSyncActivities
    from core.contracts.workflows import (
        PULL_REQUEST_MERGE_WORKFLOW,
        PullRequestMergeInput,
        PullRequestMergeOutput,
    )


@workflow.defn(name=PULL_REQUEST_MERGE_WORKFLOW)
class PullRequestMergeWorkflow:
    @workflow.run
    async def run(self, request: PullRequestMergeInput) -> PullRequestMergeOutput:
        try:
            return await workflow.execute_activity_method(
                RepoSyncActivities.merge_pull_request,
                request,
                start_to_close_timeout=MERGE_TIMEOUT,
                retry_policy=FEW_RETRIES,
                summary="Merge on the forge, and record it",
            )
        except ActivityError as error:
            cause = error.cause
            refused = isinstance(cause, ApplicationError) and cause.non_retryable
            return PullRequestMergeOutput(
                pull_request_id=request.pull_request_id,
                merged=False,
                refused=cause.type if refused and isinstance(cause, ApplicationError) else None,
                error=str(cause or error),
            )
