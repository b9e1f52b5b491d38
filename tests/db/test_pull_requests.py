"""Pull requests' states as the forge reports them, and the one deploy a merge starts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from core.contracts.deploy import DEPLOY_QUEUE
from core.contracts.engineering import PullRequestCreate
from core.enums import PullRequestState, TaskType
from db import projects, pull_requests
from db.engine import Database
from db.migrate import upgrade_async
from db.tables import OutboxMessage, Project, PullRequest, Task, User
from db.tasks import NewTask, TaskService
from testing.workflows import make_project
from tests.conftest import fresh_postgres_database

SHA = "a1" * 20
OPEN, MERGED, CLOSED = PullRequestState.open, PullRequestState.merged, PullRequestState.closed


async def opened(
    db: Database, project: Project, branch: str, *, base: str = "main", task_id: str | None = None
) -> PullRequest:
    return await pull_requests.record(
        db,
        PullRequestCreate(
            project_id=project.id,
            task_id=task_id,
            repo_full_name="local/shop",
            number=len(branch),
            branch=branch,
            base=base,
            title=f"Work of {branch}",
            url=f"file:///forge/local/shop.git#{branch}",
        ),
    )


async def deploys(db: Database, project: Project) -> list[Task]:
    async with db.session() as session:
        query = select(Task).where(Task.project_id == project.id, Task.type == TaskType.deploy)
        return list((await session.exec(query)).all())


async def row(db: Database, pull_request_id: str) -> PullRequest:
    async with db.session() as session:
        return await pull_requests.get_pull_request(session, pull_request_id)


async def test_a_merge_seen_by_many_at_once_starts_one_deploy(
    database: Database, redis: Redis
) -> None:
    tasks = TaskService(database, redis)
    project = await make_project(database)
    async with database.session() as session:
        await projects.set_auto_deploy(session, project.id, True)
    # The engineering task a chat's PO started, which opened the pull request.
    origin = await tasks.create(
        NewTask(
            type=TaskType.engineering,
            project_id=project.id,
            user_id=project.owner_id,
            spec="Add /ping",
            action="feature",
            callback_stream="telegram:chat:42",
        )
    )
    pr = await opened(database, project, "task/a", task_id=origin.id)

    # Ticks, a retried activity and `pr merge`, all at once.
    seen = await asyncio.gather(
        *(pull_requests.record_state(tasks, pr.id, MERGED, merge_commit_sha=SHA) for _ in range(6))
    )
    assert sum(one.changed for one in seen) == 1
    [deploy] = await deploys(database, project)
    assert {one.deploy_task_id for one in seen} == {deploy.id}
    assert {one.state for one in seen} == {MERGED}

    assert deploy.details["deploy"] == {"action": "create", "ref": "main"}
    assert deploy.details["merge"] == {
        "pull_request_id": pr.id,
        "repo_full_name": "local/shop",
        "number": pr.number,
        "merge_commit_sha": SHA,
    }
    assert SHA[:12] in deploy.spec and f"#{pr.number}" in deploy.spec
    # In the conversation that asked for the work: its chat hears of the deploy.
    assert (deploy.callback_stream, deploy.correlation_id) == (
        origin.callback_stream,
        origin.correlation_id,
    )
    assert deploy.user_id == origin.user_id
    recorded = await row(database, pr.id)
    assert (recorded.state, recorded.merge_commit_sha) == (MERGED, SHA)
    assert recorded.merged_at is not None and recorded.deploy_task_id == deploy.id

    # Its one deploy:queue message, committed with it and sent.
    async with database.session() as session:
        query = select(OutboxMessage).where(col(OutboxMessage.stream) == DEPLOY_QUEUE)
        [message] = (await session.exec(query)).all()
    assert json.loads(message.fields["data"])["task_id"] == deploy.id
    sent = await redis.xrange(DEPLOY_QUEUE)
    assert [json.loads(fields[b"data"])["task_id"] for _, fields in sent] == [deploy.id]

    # A later tick sees it merged and changes nothing.
    later = await pull_requests.record_state(tasks, pr.id, MERGED, merge_commit_sha=SHA)
    assert (later.changed, later.deploy_task_id) == (False, deploy.id)
    assert len(await deploys(database, project)) == 1


async def test_states_move_as_the_forge_says_and_only_asked_merges_deploy(
    database: Database, redis: Redis
) -> None:
    tasks = TaskService(database, redis)
    project = await make_project(database)

    # Closed, reopened, closed again, merged all the same (GitHub merges a reopened one).
    pr = await opened(database, project, "task/b")
    for state, changed in [(CLOSED, True), (CLOSED, False), (OPEN, True), (CLOSED, True)]:
        moved = await pull_requests.record_state(tasks, pr.id, state, head_sha="c" * 40)
        assert (moved.state, moved.changed) == (state, changed)
    merged = await pull_requests.record_state(tasks, pr.id, MERGED, merge_commit_sha=SHA)
    assert (merged.changed, merged.deploy_task_id) == (True, None)  # no auto-deploy
    recorded = await row(database, pr.id)
    assert (recorded.merge_commit_sha, recorded.head_sha) == (SHA, "c" * 40)
    assert recorded.merged_at is not None
    # Merged is for good.
    for state in (OPEN, CLOSED):
        assert (await pull_requests.record_state(tasks, pr.id, state)).state == MERGED

    async with database.session() as session:
        await projects.set_auto_deploy(session, project.id, True)
        assert await pull_requests.open_ids(session) == []
    # Into another branch than the default one: nothing to deploy.
    aside = await opened(database, project, "task/c", base="release")
    async with database.session() as session:
        assert await pull_requests.open_ids(session) == [aside.id]
    assert (await pull_requests.record_state(tasks, aside.id, MERGED)).deploy_task_id is None
    assert await deploys(database, project) == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_projects_made_before_migration_0013_do_not_auto_deploy(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    else:
        url = await fresh_postgres_database(request.getfixturevalue("postgres_server_url"))
    await upgrade_async(url, "0012")
    db = Database(url)
    try:
        async with db.session() as session:
            user = User(name="old")
            session.add(user)
            await session.flush()
            await session.exec(
                text(
                    "INSERT INTO projects (id, name, description, modules, status, owner_id, "
                    "created_at, updated_at) VALUES ('p1', 'Old', '', '[]', 'READY', :owner, "
                    "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ).bindparams(owner=user.id)
            )
            await session.commit()
        await upgrade_async(url)
        async with db.session() as session:
            assert (await projects.get_project(session, "old")).auto_deploy is False
            # The name's case-insensitive uniqueness survives the migration.
            session.add(Project(name="OLD", owner_id=user.id))
            with pytest.raises(IntegrityError):
                await session.commit()
    finally:
        await db.dispose()
