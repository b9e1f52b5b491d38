"""Pull requests that tasks opened (the engineering workflow creates them): read them, merge
one (a worker merges it on the forge; the repo-sync job records merges made elsewhere)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from api.deps import AppRuntime, DbSession
from api.problems import Conflict, problem_responses
from api.services import merges
from core.contracts.engineering import PullRequestRead
from core.enums import PullRequestState
from db import pull_requests

router = APIRouter(prefix="/pull-requests", tags=["pull-requests"])


@router.get("", summary="Pull requests, newest first")
async def list_pull_requests(
    session: DbSession,
    project_id: Annotated[str | None, Query(max_length=32)] = None,
    task_id: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[PullRequestRead]:
    found = await pull_requests.list_pull_requests(
        session, project_id=project_id, task_id=task_id, limit=limit
    )
    return [PullRequestRead.model_validate(row) for row in found]


@router.get("/{pull_request_id}", summary="One pull request", responses=problem_responses(404))
async def get_pull_request(pull_request_id: str, session: DbSession) -> PullRequestRead:
    found = await pull_requests.get_pull_request(session, pull_request_id)
    return PullRequestRead.model_validate(found)


@router.post(
    "/{pull_request_id}/merge",
    summary="Merge a pull request on its forge (a merge commit into its base); a project with "
    "auto-deploy then deploys its default branch",
    responses=problem_responses(404, 409, 502, 503),
)
async def merge_pull_request(
    pull_request_id: Annotated[str, Path(max_length=32)],
    session: DbSession,
    runtime: AppRuntime,
) -> PullRequestRead:
    found = await pull_requests.get_pull_request(session, pull_request_id)
    if found.state != PullRequestState.open:
        raise Conflict(f"pull request {found.id} is {found.state}: only an open one merges")
    await session.commit()  # no connection held while the merge runs
    client = await runtime.temporal_client()  # here: a 404 or a 409 needs no Temporal
    await merges.merge(client, runtime.settings, found.id)
    await session.refresh(found)
    return PullRequestRead.model_validate(found)
