"""Pull requests that tasks opened: read-only here, the engineering workflow creates them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import DbSession
from api.problems import problem_responses
from core.contracts.engineering import PullRequestRead
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
