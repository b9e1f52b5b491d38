"""Projects: creation with a unique name, lookup by id or name."""

from __future__ import annotations

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from api.models import Project, ProjectCreate
from api.problems import Conflict, NotFound


async def find_by_name(session: AsyncSession, name: str) -> Project | None:
    # Names become repository names, and forges treat those case-insensitively.
    query = select(Project).where(func.lower(Project.name) == name.lower())
    return (await session.exec(query)).first()


async def create_project(session: AsyncSession, data: ProjectCreate, *, owner_id: str) -> Project:
    if await find_by_name(session, data.name) is not None:
        raise Conflict(f"a project named {data.name!r} already exists")
    project = Project(
        name=data.name, description=data.description, modules=data.modules, owner_id=owner_id
    )
    session.add(project)
    try:
        await session.commit()
    except IntegrityError:
        # Another request took the name between our check and our commit.
        await session.rollback()
        raise Conflict(f"a project named {data.name!r} already exists") from None
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
