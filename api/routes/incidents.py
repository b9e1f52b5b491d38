"""Incidents: what the scheduled checks found wrong (db/incidents.py opens and resolves them).

Admins see every incident; anyone else only those of the projects they own. Another's incident,
or one of no project (a server's), answers 404 as if it were not there: no probing for ids.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from sqlmodel.ext.asyncio.session import AsyncSession

from api.deps import CurrentUser, DbSession
from api.problems import NotFound, problem_responses
from api.schemas import IncidentRead
from core.enums import IncidentKind
from db import incidents, projects
from db.tables import Incident, User

router = APIRouter(prefix="/incidents", tags=["incidents"])

# Incident ids are a 32-bit column: a larger one is invalid input, not a query PostgreSQL fails.
MAX_ID = 2**31 - 1


async def owned_projects(session: AsyncSession, user: User) -> set[str]:
    return {
        project.id
        for project in await projects.list_projects(session)
        if project.owner_id == user.id
    }


async def visible_incident(
    incident_id: Annotated[int, Path(ge=1, le=MAX_ID, description="The incident's number")],
    user: CurrentUser,
    session: DbSession,
) -> Incident:
    """The incident of the path, if the caller may see it (404 otherwise)."""
    incident = await incidents.get_incident(session, incident_id)
    if not user.is_admin and incident.project_id not in await owned_projects(session, user):
        raise NotFound(f"no incident {incident_id}")
    return incident


PathIncident = Annotated[Incident, Depends(visible_incident)]


@router.get(
    "",
    summary="Incidents, newest first (a non-admin's: those of the projects they own)",
    responses=problem_responses(404),  # the project filter names no project
)
async def list_incidents(
    user: CurrentUser,
    session: DbSession,
    open_only: Annotated[
        bool, Query(alias="open", description="Only those not resolved yet")
    ] = False,
    project: Annotated[str | None, Query(max_length=100, description="Project id or name")] = None,
    kind: Annotated[IncidentKind | None, Query(description="Only these")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[IncidentRead]:
    projects_wanted = (
        None if project is None else {(await projects.get_project(session, project)).id}
    )
    if not user.is_admin:
        owned = await owned_projects(session, user)
        projects_wanted = owned if projects_wanted is None else projects_wanted & owned
    found = await incidents.list_incidents(
        session,
        open_only=open_only,
        project_ids=None if projects_wanted is None else sorted(projects_wanted),
        kind=kind,
        limit=limit,
    )
    return [IncidentRead.model_validate(incident) for incident in found]


@router.get("/{incident_id}", summary="One incident", responses=problem_responses(404))
async def get_incident(incident: PathIncident) -> IncidentRead:
    return IncidentRead.model_validate(incident)


@router.post(
    "/{incident_id}/ack",
    summary="Acknowledge an incident: someone looks into it (the first acknowledgement is kept)",
    responses=problem_responses(404),
)
async def ack_incident(
    incident: PathIncident, user: CurrentUser, session: DbSession
) -> IncidentRead:
    assert incident.id is not None  # a stored row
    acked = await incidents.ack_incident(session, incident.id, user.name)
    return IncidentRead.model_validate(acked)
