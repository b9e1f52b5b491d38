"""A project's secrets: set (create or replace), list names, remove. Values go in, never out."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from api.deps import DbSession, VaultDep
from api.models import SecretRead, SecretWrite
from api.problems import problem_responses
from api.services import projects, secrets

router = APIRouter(prefix="/projects/{project_id_or_name}/secrets", tags=["secrets"])


@router.put(
    "/{name}",
    status_code=status.HTTP_201_CREATED,
    response_model=SecretRead,
    summary="Set a secret: 201 with its name when new, 204 when it replaced a value",
    responses={204: {"description": "Replaced"}, **problem_responses(404)},
)
async def set_secret(
    project_id_or_name: str, name: str, data: SecretWrite, session: DbSession, vault: VaultDep
) -> SecretRead | Response:
    secrets.check_name(name)
    project = await projects.get_project(session, project_id_or_name)
    secret, created = await secrets.set_secret(
        session, vault, project.id, name, data.value.get_secret_value()
    )
    if not created:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return SecretRead.model_validate(secret)


@router.get("", summary="The project's secrets: names and times, never values")
async def list_secrets(project_id_or_name: str, session: DbSession) -> list[SecretRead]:
    project = await projects.get_project(session, project_id_or_name)
    return [SecretRead.model_validate(s) for s in await secrets.list_secrets(session, project.id)]


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Remove a secret",
    responses=problem_responses(404),
)
async def delete_secret(project_id_or_name: str, name: str, session: DbSession) -> None:
    project = await projects.get_project(session, project_id_or_name)
    await secrets.delete_secret(session, project.id, name)
