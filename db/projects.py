"""Projects: creation with a unique name, lookup by id or name, their repository and status."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.enums import ProjectStatus, ProjectTemplate
from db.errors import Conflict, NotFound
from db.tables import Project, utcnow


async def find_by_name(session: AsyncSession, name: str) -> Project | None:
    # Names become repository names, and forges treat those case-insensitively.
    query = select(Project).where(func.lower(Project.name) == name.lower())
    return (await session.exec(query)).first()


async def create_project(
    session: AsyncSession,
    *,
    name: str,
    description: str,
    modules: list[str],
    owner_id: str,
    template: ProjectTemplate | None = None,
    chat_id: int | None = None,
) -> Project:
    """``chat_id``: the chat whose PO session asked for it (told of its incidents)."""
    if await find_by_name(session, name) is not None:
        raise Conflict(f"a project named {name!r} already exists")
    project = Project(
        name=name,
        description=description,
        modules=modules,
        template=template,
        owner_id=owner_id,
        chat_id=chat_id,
    )
    session.add(project)
    try:
        await session.commit()
    except IntegrityError:
        # Another request took the name between our check and our commit.
        await session.rollback()
        raise Conflict(f"a project named {name!r} already exists") from None
    return project


async def list_projects(session: AsyncSession) -> list[Project]:
    query = select(Project).order_by(col(Project.created_at).desc(), col(Project.id))
    return list((await session.exec(query)).all())


async def get_project(session: AsyncSession, id_or_name: str) -> Project:
    project = await session.get(Project, id_or_name) or await find_by_name(session, id_or_name)
    if project is None:
        raise NotFound(f"project {id_or_name!r} not found")
    return project


async def get_project_by_id(session: AsyncSession, project_id: str) -> Project:
    project = await session.get(Project, project_id)
    if project is None:
        raise NotFound(f"project {project_id} not found")
    return project


async def set_status(session: AsyncSession, project_id: str, status: ProjectStatus) -> None:
    """The project's status while its repository is being made; READY is never undone."""
    await _update(session, project_id, col(Project.status) != ProjectStatus.ready, status=status)


async def set_repository(
    session: AsyncSession, project_id: str, repository: str, repo_full_name: str
) -> None:
    """The project has its repository: where it is, and READY."""
    await _update(
        session,
        project_id,
        None,
        repository=repository,
        repo_full_name=repo_full_name,
        status=ProjectStatus.ready,
    )


async def set_auto_deploy(session: AsyncSession, project_id: str, auto_deploy: bool) -> Project:
    """Whether a merge into the project's default branch deploys it (db/pull_requests.py)."""
    await _update(session, project_id, None, auto_deploy=auto_deploy)
    project = await get_project_by_id(session, project_id)
    await session.refresh(project)
    return project


async def set_daily_budget(
    session: AsyncSession, project_id: str, budget_usd: float | None
) -> Project:
    """USD a UTC day of the project's model calls may cost before its chat is told
    (db/usage.py); None: no budget."""
    await _update(session, project_id, None, daily_budget_usd=budget_usd)
    project = await get_project_by_id(session, project_id)
    await session.refresh(project)
    return project


async def _update(session: AsyncSession, project_id: str, condition: Any, **values: Any) -> None:
    statement = update(Project).where(col(Project.id) == project_id)
    if condition is not None:
        statement = statement.where(condition)
    await session.exec(statement.values(updated_at=utcnow(), **values))
    exists = await session.get(Project, project_id)
    await session.commit()
    if exists is None:
        raise NotFound(f"project {project_id} not found")
