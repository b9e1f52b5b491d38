"""Deployments: the releases deploy tasks put on servers. Read-only here: deploys are tasks
(``POST /tasks`` with ``type: deploy``), and their workflow writes these rows."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import DbSession
from api.problems import problem_responses
from api.schemas import DeploymentRead
from db import deployments, projects

router = APIRouter(prefix="/deployments", tags=["deployments"])


@router.get(
    "",
    summary="Releases, newest first",
    responses=problem_responses(404),  # the project filter names no project
)
async def list_deployments(
    session: DbSession,
    project: Annotated[str | None, Query(max_length=100, description="Project id or name")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[DeploymentRead]:
    project_id = (await projects.get_project(session, project)).id if project else None
    found = await deployments.list_deployments(session, project_id, limit)
    return [DeploymentRead.model_validate(row) for row in found]


@router.get("/{deployment_id}", summary="One release", responses=problem_responses(404))
async def get_deployment(deployment_id: str, session: DbSession) -> DeploymentRead:
    return DeploymentRead.model_validate(await deployments.get_deployment(session, deployment_id))
