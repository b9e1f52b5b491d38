"""Pull requests: recorded once per (repository, branch) by the activity that opened them."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.contracts.engineering import PullRequestCreate
from db.engine import Database
from db.errors import NotFound
from db.tables import PullRequest


async def find(session: AsyncSession, repo_full_name: str, branch: str) -> PullRequest | None:
    query = select(PullRequest).where(
        PullRequest.repo_full_name == repo_full_name, PullRequest.branch == branch
    )
    return (await session.exec(query)).first()


async def record(db: Database, data: PullRequestCreate) -> PullRequest:
    """The row for ``data``'s repository and branch: the existing one, else a new one.

    Idempotent, so a retried activity (or two racing attempts) leave exactly one row.
    """
    async with db.session() as session:
        existing = await find(session, data.repo_full_name, data.branch)
        if existing is not None:
            return existing
        row = PullRequest(**data.model_dump())
        session.add(row)
        try:
            await session.commit()
        except IntegrityError:
            await session.rollback()  # another attempt recorded it between our read and write
        else:
            await session.refresh(row)
            return row
    async with db.session() as session:
        found = await find(session, data.repo_full_name, data.branch)
        if found is None:
            raise RuntimeError(f"pull request of {data.repo_full_name}:{data.branch} vanished")
        return found


async def list_pull_requests(
    session: AsyncSession,
    *,
    project_id: str | None = None,
    task_id: str | None = None,
    limit: int = 100,
) -> list[PullRequest]:
    query = select(PullRequest)
    if project_id is not None:
        query = query.where(PullRequest.project_id == project_id)
    if task_id is not None:
        query = query.where(PullRequest.task_id == task_id)
    query = query.order_by(col(PullRequest.created_at).desc(), col(PullRequest.id)).limit(limit)
    return list((await session.exec(query)).all())


async def get_pull_request(session: AsyncSession, pull_request_id: str) -> PullRequest:
    found = await session.get(PullRequest, pull_request_id)
    if found is None:
        raise NotFound(f"pull request {pull_request_id} not found")
    return found
