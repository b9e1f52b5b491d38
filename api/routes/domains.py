"""A project's custom domains: names its app is served at by its server's edge, over HTTPS.

They take effect with the project's next deploy (``orchestrator deploy start P`` serves the
running release again at every name, with no request lost)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from api.deps import DbSession, PathProject
from api.problems import problem_responses
from api.schemas import DomainCreate, DomainRead
from db import domains

router = APIRouter(prefix="/projects/{project_id_or_name}/domains", tags=["domains"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DomainRead,
    summary="Add a domain: 201 when new, 200 when the project had it; served from its next deploy",
    responses={200: {"description": "The project had it already"}, **problem_responses(404, 409)},
)
async def add_domain(
    project: PathProject, data: DomainCreate, session: DbSession, response: Response
) -> DomainRead:
    domain, created = await domains.add_domain(session, project.id, data.name)
    if not created:
        response.status_code = status.HTTP_200_OK
    return DomainRead.model_validate(domain)


@router.get("", summary="The project's custom domains", responses=problem_responses(404))
async def list_domains(project: PathProject, session: DbSession) -> list[DomainRead]:
    return [DomainRead.model_validate(d) for d in await domains.list_domains(session, project.id)]


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Remove a domain; its name stops being served with the project's next deploy",
    responses=problem_responses(404),
)
async def remove_domain(project: PathProject, name: str, session: DbSession) -> None:
    await domains.remove_domain(session, project.id, name)
