"""The repo-sync Schedule on real parts: its ticks (a Temporal Schedule triggered), a worker whose
forge is the local one or the GitHub stand-in, the database, the outbox and Redis."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.forge import OpenPullRequestInput, PullRequestActivities
from core.contracts.deploy import DEPLOY_QUEUE
from core.enums import PullRequestState, TaskType
from core.schedules import REPO_SYNC
from core.settings import Settings
from db import projects
from db.engine import Database
from db.tables import OutboxMessage, Project, PullRequest, Task
from infra.forges import make_forge
from infra.forges.github import GitHubForge
from infra.forges.local import LocalForge
from stack.prepare import ensure_schedule
from testing.schedules import Ticks
from testing.standins.github import TOKEN, TOKEN_ENV, github_standin
from testing.workflows import make_project, running_worker
from tests.api.test_pull_requests import git
from tests.api.test_schedules import remove_schedule
from workflows.repo_sync import RepoSyncOutput

BRANCHES = ("task/merged", "task/closed", "task/open")


@dataclass
class Synced:
    """A project with auto-deploy whose repository ``full_name`` on the worker's ``forge`` has a
    pull request per branch of ``BRANCHES``, recorded open; the repo-sync Schedule; a worker."""

    db: Database
    redis: Redis
    forge: LocalForge | GitHubForge
    full_name: str
    project: Project
    pulls: dict[str, PullRequest]  # by branch
    ticks: Ticks

    async def tick(self) -> RepoSyncOutput:
        return RepoSyncOutput.model_validate(await self.ticks.tick())

    def close(self, number: int) -> None:
        if isinstance(self.forge, LocalForge):
            self.forge.close_pull_request(self.full_name, number)
        else:  # as a person does on GitHub
            path = f"/repos/{self.full_name}/pulls/{number}"
            self.forge._request("PATCH", path, json={"state": "closed"})

    async def row(self, branch: str) -> PullRequest:
        async with self.db.session() as session:
            found = await session.get(PullRequest, self.pulls[branch].id)
        assert found is not None
        return found

    async def deploys(self) -> list[Task]:
        async with self.db.session() as session:
            query = select(Task).where(
                Task.project_id == self.project.id, Task.type == TaskType.deploy
            )
            return list((await session.exec(query)).all())

    async def deploy_messages(self) -> tuple[list[str], list[str]]:
        """The task ids of the deploy:queue messages: in the outbox, and sent to Redis."""
        async with self.db.session() as session:
            query = select(OutboxMessage).where(col(OutboxMessage.stream) == DEPLOY_QUEUE)
            kept = [json.loads(m.fields["data"])["task_id"] for m in (await session.exec(query))]
        sent = [json.loads(f[b"data"])["task_id"] for _, f in await self.redis.xrange(DEPLOY_QUEUE)]
        return kept, sent


def forge_settings(kind: str, home: Path, github_url: str | None) -> Settings:
    queue = f"repo-sync-{uuid.uuid4().hex[:12]}"
    # Only the test's triggers tick.
    common = {"home": home, "temporal_task_queue": queue, "repo_sync_interval_s": 3600}
    if kind == "local":
        return Settings(**common)
    return Settings(
        **common,
        forge="github",
        github_owner="acme",
        github_token_ref=f"env:{TOKEN_ENV}",
        github_api_url=f"{github_url}/api/v3",
    )


@pytest_asyncio.fixture(params=["local", "github"])
async def synced(
    request: pytest.FixtureRequest,
    sqlite_database: Database,
    redis: Redis,
    temporal_client: Client,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Synced]:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "github":
            github = stack.enter_context(github_standin(tmp_path / "github"))
            github.add_repository("acme/shop", {"README.md": "# shop\n"})
            settings = forge_settings("github", tmp_path / "home", github.base_url)
            bare = github.bare("acme/shop")
        else:
            settings = forge_settings("local", tmp_path / "home", None)
            bare = seeded_local_repository(LocalForge(settings.forge_dir), tmp_path / "seed")
        forge = make_forge(settings)
        full_name = "acme/shop" if request.param == "github" else "local/shop"
        project = await make_project(sqlite_database)
        async with sqlite_database.session() as session:
            project = await projects.set_auto_deploy(session, project.id, True)
        pulls = await open_pull_requests(sqlite_database, forge, full_name, project, bare, tmp_path)

        assert await ensure_schedule(temporal_client, settings, REPO_SYNC)
        schedule_id = REPO_SYNC.schedule_id(settings)
        stack.push_async_callback(remove_schedule, temporal_client, schedule_id)
        await stack.enter_async_context(
            running_worker(
                temporal_client, sqlite_database, redis, settings.home,
                settings=settings, task_queue=settings.temporal_task_queue,
            )
        )  # fmt: skip
        yield Synced(
            sqlite_database,
            redis,
            forge,
            full_name,
            project,
            pulls,
            Ticks(temporal_client, schedule_id),
        )


def seeded_local_repository(forge: LocalForge, seed: Path) -> Path:
    forge.create("local/shop")
    seed.mkdir()
    git(seed, "init", "--quiet", "--initial-branch=main")
    (seed / "README.md").write_text("# shop\n")
    git(seed, "add", "--all")
    git(seed, "commit", "--quiet", "-m", "initial")
    forge.push("local/shop", seed)
    return forge.path("local/shop")


async def open_pull_requests(
    db: Database,
    forge: LocalForge | GitHubForge,
    full_name: str,
    project: Project,
    bare: Path,
    tmp_path: Path,
) -> dict[str, PullRequest]:
    """A branch per ``BRANCHES``, each with a file of its own, and its pull request opened by
    the activity engineering runs (so recorded open)."""
    work = tmp_path / "work"
    git(tmp_path, "clone", "--quiet", str(bare), str(work))
    opener = PullRequestActivities(db, forge)
    pulls = {}
    for branch in BRANCHES:
        git(work, "checkout", "--quiet", "-B", branch, "origin/main")
        (work / f"{branch.split('/')[1]}.py").write_text("x = 1\n")
        git(work, "add", "--all")
        git(work, "commit", "--quiet", "-m", branch)
        request = OpenPullRequestInput(
            project_id=project.id,
            repo_full_name=full_name,
            branch=branch,
            title=branch,
            worktree=str(work),
        )
        opened = await ActivityEnvironment().run(opener.open_pull_request, request)
        async with db.session() as session:
            row = await session.get(PullRequest, opened.id)
        assert row is not None
        pulls[branch] = row
    return pulls


async def test_merges_on_the_forge_are_recorded_and_deploy_once_however_many_ticks(
    synced: Synced,
) -> None:
    merged_on_forge = synced.forge.merge_pull_request(
        synced.full_name, synced.pulls["task/merged"].number
    )
    synced.close(synced.pulls["task/closed"].number)
    sha = merged_on_forge.merge_commit_sha
    assert sha is not None

    first = await synced.tick()
    assert first.errors == {}
    by_branch = {s.pull_request_id: s for s in first.synced}
    merged = by_branch[synced.pulls["task/merged"].id]
    assert (merged.state, merged.changed, merged.merge_commit_sha) == (
        PullRequestState.merged,
        True,
        sha,
    )
    assert merged.deploy_task_id is not None
    closed = by_branch[synced.pulls["task/closed"].id]
    assert (closed.state, closed.changed, closed.deploy_task_id) == (
        PullRequestState.closed,
        True,
        None,
    )
    still = by_branch[synced.pulls["task/open"].id]
    assert (still.state, still.changed) == (PullRequestState.open, False)

    # Two more ticks: the merged and closed ones are not read again; nothing starts twice.
    for _ in range(2):
        later = await synced.tick()
        assert [s.pull_request_id for s in later.synced] == [synced.pulls["task/open"].id]

    row = await synced.row("task/merged")
    assert (row.state, row.merge_commit_sha, row.deploy_task_id) == (
        PullRequestState.merged,
        sha,
        merged.deploy_task_id,
    )
    assert row.merged_at is not None
    assert (await synced.row("task/closed")).state == PullRequestState.closed
    assert (await synced.row("task/open")).state == PullRequestState.open
    [deploy] = await synced.deploys()
    assert deploy.id == merged.deploy_task_id
    assert deploy.details["merge"]["merge_commit_sha"] == sha
    assert deploy.details["deploy"] == {"action": "create", "ref": "main"}
    assert await synced.deploy_messages() == ([deploy.id], [deploy.id])
