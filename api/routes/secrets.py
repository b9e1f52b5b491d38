"""A project's secrets: set (create or replace), list names, remove. Values go in, never out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status
from temporalio.service import RPCError

from api.deps import AppRuntime, DbSession, VaultDep
from api.problems import ServiceUnavailable, problem_responses
from api.schemas import SecretRead, SecretWrite
from core.contracts.deploy import DEPLOY_SECRETS_CHANGED
from core.logging import get_logger
from db import deployments, projects, secrets

log = get_logger(__name__)

router = APIRouter(prefix="/projects/{project_id_or_name}/secrets", tags=["secrets"])

# The rule secrets.check_name enforces, so the schema says which names are taken; check_name
# refuses the others with a 422 that says the rule in words.
SecretName = Annotated[
    str,
    Path(
        description="An environment variable's name, e.g. DATABASE_URL",
        json_schema_extra={
            "pattern": secrets.ENV_NAME.pattern,
            "maxLength": secrets.NAME_MAX_LENGTH,
        },
    ),
]


@router.put(
    "/{name}",
    status_code=status.HTTP_201_CREATED,
    response_model=SecretRead,
    summary="Set a secret: 201 with its name when new, 204 when it replaced a value",
    responses={204: {"description": "Replaced"}, **problem_responses(404)},
)
async def set_secret(
    project_id_or_name: str,
    name: SecretName,
    data: SecretWrite,
    session: DbSession,
    vault: VaultDep,
    runtime: AppRuntime,
) -> SecretRead | Response:
    secrets.check_name(name)
    project = await projects.get_project(session, project_id_or_name)
    secret, created = await secrets.set_secret(
        session, vault, project.id, name, data.value.get_secret_value()
    )
    await _wake_waiting_deploys(session, runtime, project.id)
    if not created:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return SecretRead.model_validate(secret)


@router.get(
    "",
    summary="The project's secrets: names and times, never values",
    responses=problem_responses(404),
)
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


async def _wake_waiting_deploys(session: DbSession, runtime: AppRuntime, project_id: str) -> None:
    """Deploys of the project waiting for secrets look again. The secret is stored whatever
    happens here: a deploy Temporal did not reach is woken by ``task respond``."""
    waiting = await deployments.waiting_for_secrets(session, project_id)
    if not waiting:
        return
    try:
        client = await runtime.temporal_client()
    except ServiceUnavailable as exc:
        log.warning("waiting deploys not woken", project_id=project_id, error=str(exc))
        return
    for task in waiting:  # one whose workflow is gone does not keep the others waiting
        try:
            await client.get_workflow_handle(task.workflow_id).signal(DEPLOY_SECRETS_CHANGED)
        except RPCError as exc:
            log.warning("waiting deploy not woken", task_id=task.id, error=str(exc))
