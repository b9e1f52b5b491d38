"""ReaperWorkflow: what crashed or finished runs left behind is removed, on a Temporal Schedule.

A Worker's container is removed by its own workflow; one that closed without doing so (its
worker process was killed, it was terminated) leaves the container behind. So does every task's
workspace. The Schedule of the ``reaper`` job (``orchestrator-reaper``, made by ``orchestrator
up``: core/schedules.py, stack/prepare.py) starts this workflow every
``reaper_interval_minutes``; each run:

- removes the containers whose workflow is closed or unknown (``WorkerActivities.reap_workers``);
- gives back the turns (Worker slots, deploy turns: workflows/turns.py) that closed runs still
  hold or wait for (``TurnActivities.reap_turns``);
- removes the workspaces of tasks finished longer than ``workspace_retention_hours`` ago
  (``EngineeringActivities.clean_workspaces``);
- trims the Redis streams: entries older than ``stream_retention_hours`` that every consumer
  group has acknowledged (``HousekeepingActivities.trim_streams``, infra/streams.py).

Every part runs even when another fails; a run with a failed part fails (after both ran), so
the Schedule's recent actions show it.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

from workflows.policies import CLEAN_HEARTBEAT, CLEAN_TIMEOUT, FEW_RETRIES, REAP_WORKERS_TIMEOUT
from workflows.toolkit import host_with

with workflow.unsafe.imports_passed_through():
    from activities.engineering import (
        CleanWorkspacesInput,
        CleanWorkspacesResult,
        EngineeringActivities,
    )
    from activities.housekeeping import HousekeepingActivities, TrimReport
    from activities.turns import GivenBack, TurnActivities
    from activities.workers import WorkerActivities
    from core.schedules import REAPER
    from core.task_queues import CONTAINERS

REAPER_WORKFLOW = REAPER.workflow
# Runs from before it had no turns to give back.
REAP_TURNS_PATCH = "reaper-gives-back-turns"
T = TypeVar("T")
# Runs from before it trimmed no stream.
TRIM_STREAMS_PATCH = "reaper-trims-streams"


class ReaperInput(BaseModel):
    workspace_retention_hours: float | None = Field(
        default=None, ge=0, description="None: the worker's workspace_retention_hours setting"
    )


class ReaperOutput(BaseModel):
    workers_removed: list[str] = Field(
        default_factory=list, description="Worker ids whose containers were removed"
    )
    turns_given_back: list[GivenBack] = Field(
        default_factory=list, description="Turns of closed runs given back"
    )
    workspaces: CleanWorkspacesResult = Field(default_factory=CleanWorkspacesResult)
    streams: TrimReport = Field(default_factory=TrimReport)
    errors: list[str] = Field(default_factory=list)


@workflow.defn(name=REAPER_WORKFLOW)
class ReaperWorkflow:
    @workflow.run
    async def run(self, request: ReaperInput) -> ReaperOutput:
        output = ReaperOutput()
        part = _Parts(output.errors)
        if (found := await part("removing containers", self._reap_workers())) is not None:
            output.workers_removed = found
        if workflow.patched(REAP_TURNS_PATCH):
            if (given := await part("giving back turns", self._reap_turns())) is not None:
                output.turns_given_back = given
        cleaning = self._clean_workspaces(request.workspace_retention_hours)
        if (cleaned := await part("removing workspaces", cleaning)) is not None:
            output.workspaces = cleaned
        if workflow.patched(TRIM_STREAMS_PATCH):
            if (trimmed := await part("trimming streams", self._trim_streams())) is not None:
                output.streams = trimmed
        workflow.logger.info(
            "reaped %d containers, %d turns, %d workspaces, %d stream entries",
            len(output.workers_removed),
            len(output.turns_given_back),
            len(output.workspaces.removed),
            output.streams.entries,
        )
        if output.errors:
            raise ApplicationError(
                "; ".join(output.errors), output.model_dump(), type="ReapFailed", non_retryable=True
            )
        return output

    @staticmethod
    async def _reap_workers() -> list[str]:
        return await workflow.execute_activity_method(
            WorkerActivities.reap_workers,
            task_queue=host_with(CONTAINERS),
            start_to_close_timeout=REAP_WORKERS_TIMEOUT,
            retry_policy=FEW_RETRIES,
            summary="Remove the containers of closed workflows",
        )

    @staticmethod
    async def _reap_turns() -> list[GivenBack]:
        return await workflow.execute_activity_method(
            TurnActivities.reap_turns,
            start_to_close_timeout=REAP_WORKERS_TIMEOUT,
            retry_policy=FEW_RETRIES,
            summary="Give back the turns of closed workflows",
        )

    @staticmethod
    async def _clean_workspaces(retention_hours: float | None) -> CleanWorkspacesResult:
        return await workflow.execute_activity_method(
            EngineeringActivities.clean_workspaces,
            CleanWorkspacesInput(retention_hours=retention_hours),
            task_queue=host_with(CONTAINERS),
            start_to_close_timeout=CLEAN_TIMEOUT,
            heartbeat_timeout=CLEAN_HEARTBEAT,
            retry_policy=FEW_RETRIES,
            summary="Remove the workspaces of finished tasks",
        )

    @staticmethod
    async def _trim_streams() -> TrimReport:
        return await workflow.execute_activity_method(
            HousekeepingActivities.trim_streams,
            start_to_close_timeout=CLEAN_TIMEOUT,
            retry_policy=FEW_RETRIES,
            summary="Trim the Redis streams of what every consumer acknowledged",
        )


class _Parts:
    """Each part of a run runs even when another failed; a failed one is noted in ``errors``."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors

    async def __call__(self, what: str, part: Awaitable[T]) -> T | None:
        try:
            return await part
        except ActivityError as error:
            self.errors.append(f"{what}: {_cause(error)}")
            return None


def _cause(error: ActivityError) -> str:
    cause = error.cause
    return str(cause) if cause is not None else str(error)
