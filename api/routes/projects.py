"""Projects: what the engineering and deploy pipelines work on."""

from __future__ import annotations

from fastapi import APIRouter, status

from api.deps import CurrentUser, DbSession, KeyChat
from api.problems import problem_responses
from api.schemas import ProjectCreate, ProjectRead, ProjectUpdate
from db import projects

router = APIRouter(prefix="/projects", tags=["projects"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Create a project",
    responses=problem_responses(409),
)
async def create_project(
    data: ProjectCreate, user: CurrentUser, chat: KeyChat, session: DbSession
) -> ProjectRead:
    # Made by a chat's PO session: that chat hears of the project's incidents.
    project = await projects.create_project(
        session,
        name=data.name,
        description=data.description,
        modules=data.modules,
        template=data.template,
        owner_id=user.id,
        chat_id=chat,
    )
    return ProjectRead.model_validate(project)


@router.get("", summary="All projects, newest first")
async def list_projects(session: DbSession) -> list[ProjectRead]:
    return [ProjectRead.model_validate(p) for p in await projects.list_projects(session)]


@router.get("/{id_or_name}", summary="One project, by id or name", responses=problem_responses(404))
async def get_project(id_or_name: str, session: DbSession) -> ProjectRead:
    return ProjectRead.model_validate(await projects.get_project(session, id_or_name))


@router.patch(
    "/{id_or_name}",
    summary="Change a project's settings (auto-deploy, daily budget); what the body "
    "leaves out stays",
    responses=problem_responses(404),
)
async def update_project(id_or_name: str, data: ProjectUpdate, session: DbSession) -> ProjectRead:
    project = await projects.get_project(session, id_or_name)
    if data.auto_deploy is not None:
        project = await projects.set_auto_deploy(session, project.id, data.auto_deploy)
    if "daily_budget_usd" in data.model_fields_set:  # null: no budget any more
        project = await projects.set_daily_budget(session, project.id, data.daily_budget_usd)
    return ProjectRead.model_validate(project)
