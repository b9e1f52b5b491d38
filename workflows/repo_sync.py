"""RepoSyncWorkflow: one tick of the repo-sync Schedule (core/schedules.py).

Every pull request recorded open is read from its forge (the worker's: local or GitHub) and its
state recorded: still open, merged (with its merge commit) or closed
(``RepoSyncActivities.sync_pull_requests``, any host). A merge into the default branch of a
project with auto-deploy starts a deploy of that branch, in the transaction that records the
merge: once per merge, however many ticks (or `pr merge`) see it. Merged and closed pull requests
are not read again.

Pull requests are read in batches of ``SYNC_BATCH`` per activity, ``BATCHES_AT_ONCE`` batches at
once; a pull request the forge does not answer for is named in the output, and the next tick
reads it again.
"""

from __future__ import annotations

from pydantic import BaseModel, Field
from temporalio import workflow

from workflows.policies import FEW_RETRIES, FORGE_HEARTBEAT, FORGE_SYNC_TIMEOUT
from workflows.toolkit import bounded_each, read_plan

with workflow.unsafe.imports_passed_through():
    from activities.health import Tick
    from activities.repo_sync import (
        RepoSyncActivities,
        SyncBatchInput,
        SyncBatchOutput,
        SyncedPullRequest,
    )
    from core.schedules import REPO_SYNC

# Pull requests per activity, and activities at once.
SYNC_BATCH = 25
BATCHES_AT_ONCE = 4


class RepoSyncOutput(BaseModel):
    synced: list[SyncedPullRequest] = Field(default_factory=list)
    errors: dict[str, str] = Field(
        default_factory=dict, description="Pull requests not read in this tick, and why"
    )

    def add(self, batch: SyncBatchOutput) -> None:
        self.synced += batch.synced
        self.errors |= batch.errors


@workflow.defn(name=REPO_SYNC.workflow)
class RepoSyncWorkflow:
    @workflow.run
    async def run(self, request: Tick) -> RepoSyncOutput:
        plan = await read_plan(RepoSyncActivities.plan_repo_sync, "The open pull requests")
        ids = plan.pull_request_ids
        batches = [ids[start : start + SYNC_BATCH] for start in range(0, len(ids), SYNC_BATCH)]
        done, failed = await bounded_each(batches, BATCHES_AT_ONCE, self._sync)
        output = RepoSyncOutput()
        for batch_output in done:
            output.add(batch_output)
        for batch, why in failed:
            output.errors |= dict.fromkeys(batch, why)
        output.synced.sort(key=lambda synced: synced.pull_request_id)
        return output

    async def _sync(self, batch: list[str]) -> SyncBatchOutput:
        return await workflow.execute_activity_method(
            RepoSyncActivities.sync_pull_requests,
            SyncBatchInput(pull_request_ids=batch),
            start_to_close_timeout=FORGE_SYNC_TIMEOUT,
            heartbeat_timeout=FORGE_HEARTBEAT,
            retry_policy=FEW_RETRIES,
            summary=f"Read {len(batch)} pull requests from the forge",
        )
