"""Pull requests: recorded once per (repository, branch) by the activity that opened them; their
state as the forge reports it (the repo-sync job, `pr merge`), a merge starting its project's
deploy where the project asks for one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.contracts.deploy import DeployOptions
from core.contracts.engineering import PullRequestCreate
from core.enums import PullRequestState, TaskType
from core.ids import chat_stream
from db.engine import Database
from db.errors import NotFound
from db.tables import Project, PullRequest, Task, utcnow
from db.tasks import NewTask, TaskService

# The branch a merge into deploys: what the forges make (``infra.forges.base.BRANCH``) and
# what a deploy without a ref takes.
DEFAULT_BRANCH = "main"

# The states a pull request moves to, each from these: merged is for good.
MOVES_FROM = {
    PullRequestState.merged: (PullRequestState.open, PullRequestState.closed),
    PullRequestState.closed: (PullRequestState.open,),
    PullRequestState.open: (PullRequestState.closed,),  # reopened
}


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


async def open_ids(session: AsyncSession) -> list[str]:
    """The pull requests recorded open, oldest first: what the repo-sync job reads."""
    query = (
        select(PullRequest.id)
        .where(PullRequest.state == PullRequestState.open)
        .order_by(col(PullRequest.created_at), col(PullRequest.id))
    )
    return list((await session.exec(query)).all())


@dataclass(frozen=True)
class Recorded:
    """What recording a pull request's state did."""

    state: PullRequestState  # its state now
    changed: bool = False  # this call moved it there
    deploy_task_id: str | None = None  # the deploy its merge started (this call or another)


async def record_state(
    tasks: TaskService,
    pull_request_id: str,
    state: PullRequestState,
    *,
    head_sha: str | None = None,
    merge_commit_sha: str | None = None,
    merged_at: datetime | None = None,
) -> Recorded:
    """Move the pull request to ``state``, as its forge reports it.

    The move is a conditional UPDATE (from the states ``MOVES_FROM`` allows), the transaction's
    first statement: of two writers seeing the same merge (a retried activity, two ticks, a tick
    and `pr merge`) one moves the row and the other finds it moved. A merge into the default
    branch of a project with ``auto_deploy`` adds, in that same transaction, the deploy task of
    that branch and its ``deploy:queue`` message (the outbox), and names it on the row: one
    deploy per merge, however many see it.
    """
    values: dict[str, Any] = {"state": state}
    if head_sha is not None:
        values["head_sha"] = head_sha
    if state == PullRequestState.merged:
        values |= {"merge_commit_sha": merge_commit_sha, "merged_at": merged_at or utcnow()}
    queued = None
    async with tasks.db.session() as session:
        moved = await session.exec(
            update(PullRequest)
            .where(
                col(PullRequest.id) == pull_request_id,
                col(PullRequest.state).in_(MOVES_FROM[state]),
            )
            .values(**values)
        )
        session.expire_all()
        row = await get_pull_request(session, pull_request_id)
        if not moved.rowcount:  # type: ignore[attr-defined]
            return Recorded(state=PullRequestState(row.state), deploy_task_id=row.deploy_task_id)
        deploy = await _deploy_of_merge(session, row) if state == PullRequestState.merged else None
        if deploy is not None:
            task, queued = tasks.add(session, deploy)
            row.deploy_task_id = task.id
            session.add(row)
        await session.commit()
    if queued is not None:
        await tasks.send([queued.id])
    return Recorded(state=state, changed=True, deploy_task_id=row.deploy_task_id)


async def _deploy_of_merge(session: AsyncSession, row: PullRequest) -> NewTask | None:
    """The deploy a merge starts: of the default branch, for a project with auto_deploy, in the
    conversation of the task that opened the pull request (its chat hears of it), else told to
    the project's chat."""
    project = await session.get(Project, row.project_id)
    if project is None or not project.auto_deploy or row.base != DEFAULT_BRANCH:
        return None
    origin = await session.get(Task, row.task_id) if row.task_id else None
    options = DeployOptions(ref=row.base)
    merge = (row.merge_commit_sha or "")[:12]
    chat = chat_stream(project.chat_id) if project.chat_id is not None else None
    return NewTask(
        type=TaskType.deploy,
        project_id=project.id,
        user_id=origin.user_id if origin else project.owner_id,
        spec=f"Deploy {project.name} ({row.base}): pull request #{row.number} merged as {merge}",
        action=options.action.value,
        details={
            "deploy": options.model_dump(mode="json", exclude_none=True, exclude={"drop_data"}),
            "merge": {
                "pull_request_id": row.id,
                "repo_full_name": row.repo_full_name,
                "number": row.number,
                "merge_commit_sha": row.merge_commit_sha,
            },
        },
        callback_stream=origin.callback_stream if origin else chat,
        correlation_id=origin.correlation_id if origin else None,
    )
