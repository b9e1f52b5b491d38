"""Merging a pull request: the API asks a worker (it has the forge) through
``PullRequestMergeWorkflow`` and waits for it."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio.client import Client, WorkflowFailureError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError

from api.problems import Conflict, Problem, ServiceUnavailable
from api.services.temporal_calls import temporal_unavailable
from core.contracts.workflows import (
    PULL_REQUEST_MERGE_WORKFLOW,
    PullRequestMergeInput,
    PullRequestMergeOutput,
)
from core.ids import merge_workflow_id
from core.settings import Settings

# How long the API waits for the merge (a worker must be polling); the run goes on past it.
MERGE_WAIT = 60.0
MERGE_RUN_TIMEOUT = timedelta(minutes=10)


class BadGateway(Problem):
    status = 502


async def merge(client: Client, settings: Settings, pull_request_id: str) -> PullRequestMergeOutput:
    """Merge it and wait: a second request while one runs waits for the same run. The forge's
    refusals (closed, conflicts) are 409s; a forge that did not answer, a 502."""
    try:
        async with asyncio.timeout(MERGE_WAIT):
            merged = await client.execute_workflow(
                PULL_REQUEST_MERGE_WORKFLOW,
                PullRequestMergeInput(pull_request_id=pull_request_id),
                id=merge_workflow_id(pull_request_id),
                task_queue=settings.temporal_task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                execution_timeout=MERGE_RUN_TIMEOUT,
                result_type=PullRequestMergeOutput,
            )
    except RPCError as exc:
        raise temporal_unavailable(exc) from exc
    except WorkflowFailureError as exc:
        raise BadGateway(f"the merge did not end: {exc.cause or exc}") from None
    except TimeoutError:
        raise ServiceUnavailable(
            f"the merge of pull request {pull_request_id} did not end within {MERGE_WAIT:g}s "
            "(is a worker running?); it goes on: `pr show` tells when it is merged"
        ) from None
    if merged.refused:
        raise Conflict(f"the forge refused the merge ({merged.refused}): {merged.error}")
    if not merged.merged:
        raise BadGateway(f"the forge did not merge it: {merged.error}")
    return merged
