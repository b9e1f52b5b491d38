"""Activities of the repository sync and of merges: a pull request's state read from the forge and
recorded (workflows/repo_sync.py), a merge made on the forge and recorded
(workflows/pull_request_merge.py).

Both record through ``db.pull_requests.record_state``: the merge of a project with auto-deploy
starts its one deploy in the transaction that records the merge, whoever sees it first.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import each_at_most, infra_failures, run_blocking
from core.contracts.workflows import PullRequestMergeInput, PullRequestMergeOutput
from core.enums import PullRequestState
from core.logging import get_logger
from db import pull_requests
from db.errors import NotFound
from db.tables import PullRequest
from db.tasks import TaskService
from infra.forges.base import MergingForge, PullRequestInfo

log = get_logger(__name__)

# Requests to the forge at once within one batch.
FORGE_READS_AT_ONCE = 5


class SyncPlan(BaseModel):
    pull_request_ids: list[str] = Field(default_factory=list, description="Recorded open")


class SyncBatchInput(BaseModel):
    pull_request_ids: list[str]


class SyncedPullRequest(BaseModel):
    pull_request_id: str
    repo_full_name: str
    number: int
    state: PullRequestState = Field(description="As the forge has it now")
    changed: bool = Field(default=False, description="Recorded by this sync")
    merge_commit_sha: str | None = None
    deploy_task_id: str | None = Field(default=None, description="The deploy its merge started")


class SyncBatchOutput(BaseModel):
    synced: list[SyncedPullRequest] = Field(default_factory=list)
    errors: dict[str, str] = Field(
        default_factory=dict, description="Pull requests whose forge did not answer, and why"
    )


class RepoSyncActivities:
    def __init__(self, forge: MergingForge, tasks: TaskService) -> None:
        self.forge = forge
        self.tasks = tasks

    @activity.defn
    async def plan_repo_sync(self) -> SyncPlan:
        """The pull requests recorded open: merged and closed ones stay as they are."""
        async with self.tasks.db.session() as session:
            return SyncPlan(pull_request_ids=await pull_requests.open_ids(session))

    @activity.defn
    async def sync_pull_requests(self, request: SyncBatchInput) -> SyncBatchOutput:
        """Read each pull request from the forge and record what changed; one the forge does
        not answer for is named in ``errors`` (the next tick reads it again)."""
        synced, errors = await each_at_most(
            FORGE_READS_AT_ONCE, request.pull_request_ids, self._sync, "pull requests"
        )
        synced.sort(key=lambda one: one.pull_request_id)
        return SyncBatchOutput(synced=synced, errors=errors)

    async def _sync(self, pull_request_id: str) -> SyncedPullRequest:
        row = await self._row(pull_request_id)
        info = await asyncio.to_thread(self.forge.pull_request, row.repo_full_name, row.number)
        return await self._record(row, info)

    @activity.defn
    async def merge_pull_request(self, request: PullRequestMergeInput) -> PullRequestMergeOutput:
        """Merge it on the forge, then record the merge (and start its deploy, where the project
        asks for one). Idempotent: a retry finds it merged on the forge and recorded once."""
        row = await self._row(request.pull_request_id)
        with infra_failures():
            info = await run_blocking(self.forge.merge_pull_request, row.repo_full_name, row.number)
        synced = await self._record(row, info)
        return PullRequestMergeOutput(
            pull_request_id=row.id,
            merged=synced.state == PullRequestState.merged,
            merge_commit_sha=synced.merge_commit_sha,
            deploy_task_id=synced.deploy_task_id,
        )

    async def _row(self, pull_request_id: str) -> PullRequest:
        async with self.tasks.db.session() as session:
            try:
                return await pull_requests.get_pull_request(session, pull_request_id)
            except NotFound as exc:
                raise ApplicationError(
                    str(exc), type="PullRequestNotFound", non_retryable=True
                ) from exc

    async def _record(self, row: PullRequest, info: PullRequestInfo) -> SyncedPullRequest:
        recorded = await pull_requests.record_state(
            self.tasks,
            row.id,
            info.state,
            head_sha=info.head_sha,
            merge_commit_sha=info.merge_commit_sha,
            merged_at=info.merged_at,
        )
        if recorded.changed:
            log.info(
                "pull request state recorded",
                repository=row.repo_full_name,
                number=row.number,
                state=info.state.value,
                merge_commit_sha=info.merge_commit_sha,
                deploy_task_id=recorded.deploy_task_id,
            )
        return SyncedPullRequest(
            pull_request_id=row.id,
            repo_full_name=row.repo_full_name,
            number=row.number,
            state=recorded.state,
            changed=recorded.changed,
            merge_commit_sha=info.merge_commit_sha,
            deploy_task_id=recorded.deploy_task_id,
        )
