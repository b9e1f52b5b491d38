"""An engineering task end to end with GitHub as the forge (the GitHub stand-in).

The worker is built with ``forge=github``: the project's repository is created on "GitHub", the
workspace cloned from it and the task's branch pushed to it over HTTP with the token, and the pull
request opened through its REST API. The token is named by reference only: it appears in no
Temporal history and no task event.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from redis.asyncio import Redis
from sqlmodel import select
from temporalio.client import Client

from api.schemas import TaskCreate
from core.contracts.engineering import EngineeringOptions
from core.enums import TaskStatus
from core.settings import Settings
from db.engine import Database
from db.tables import PullRequest
from db.tasks import TaskService
from infra.containers import TASK_ID
from testing.images import image_builder
from testing.standins.github import TOKEN, github_standin
from testing.standins.github_api import GitHubStandIn
from testing.workflows import (
    events,
    get_project,
    get_task,
    git_out,
    make_project,
    running_worker,
    small_runtime,
    start_engineering,
)
from tests.workflows.test_engineering_e2e import SCRIPT

TOKEN_VAR = "ORCHESTRATOR_TEST_E2E_GITHUB_TOKEN"


@pytest.fixture(scope="session")
def scripted_image(docker_client: docker.DockerClient) -> str:
    """Built once per content hash; the worker's own builder then finds it by the same hash."""
    return image_builder(docker_client).ensure("scripted").reference


@pytest.fixture
def github(tmp_path: Path) -> Iterator[GitHubStandIn]:
    with github_standin(tmp_path / "github") as state:
        yield state


async def test_a_task_opens_its_pull_request_on_github(
    temporal_client: Client,
    docker_client: docker.DockerClient,
    scripted_image: str,
    sqlite_database: Database,
    redis: Redis,
    github: GitHubStandIn,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TOKEN_VAR, TOKEN)
    home = tmp_path / "home"
    settings = Settings(
        home=home,
        forge="github",
        github_owner="acme",
        github_token_ref=f"env:{TOKEN_VAR}",
        github_api_url=f"{github.base_url}/api/v3",
    )
    project = await make_project(sqlite_database, name="hub-greeter")
    options = EngineeringOptions(agent="scripted", script=SCRIPT)
    task = await TaskService(sqlite_database, redis).create(
        TaskCreate(project_id=project.id, spec="Add greet()", engineering=options).new_task(
            project_name=project.name, user_id=project.owner_id
        )
    )
    runtime = small_runtime(docker_client)
    async with running_worker(
        temporal_client, sqlite_database, redis, home, settings=settings, runtime=runtime
    ) as queue:
        handle = await start_engineering(temporal_client, task, queue)
        output = await handle.result()

    assert output.status == TaskStatus.completed, output
    result = output.result
    assert result is not None
    full_name, branch = "acme/hub-greeter", f"task/{task.id}"
    assert result.stages == ["scaffold", "developer", "tester", "pull_request"]

    # The repository was made on GitHub (the organisation's, private) and recorded on the project.
    assert "POST /api/v3/orgs/acme/repos" in github.requests
    assert github.repos[full_name]["private"] is True
    clone_url = f"{github.base_url}/{full_name}.git"
    assert (await get_project(sqlite_database, project.id)).repository == clone_url
    assert not (home / "forge").exists()  # the local forge was never used

    # The workspace was cloned and the branch pushed over git's smart HTTP, with the token.
    assert f"GET /{full_name}.git/info/refs" in github.requests
    assert f"POST /{full_name}.git/git-upload-pack" in github.requests
    assert f"POST /{full_name}.git/git-receive-pack" in github.requests
    bare = github.bare(full_name)
    head = git_out(bare, "rev-parse", f"refs/heads/{branch}")
    assert head == result.commit_sha
    assert git_out(bare, "log", "-1", "--format=%an %s", head) == "scripted-agent Add greet()"
    assert 'f"Hello, {name}!"' in git_out(bare, "show", f"{head}:app/greeting.py")

    # One pull request of the branch into main, as the stand-in holds it.
    [pull] = github.pulls[full_name]
    assert (pull["head"]["ref"], pull["base"]["ref"]) == (branch, "main")
    assert pull["title"] == "Add greet()" and pull["head"]["sha"] == head
    assert pull["html_url"] == f"{github.base_url}/{full_name}/pull/1"
    assert result.pr_url == pull["html_url"]
    done = await get_task(sqlite_database, task.id)
    assert done.status == TaskStatus.completed
    assert done.result is not None and done.result["pr_url"] == pull["html_url"]
    async with sqlite_database.session() as session:
        stored = (await session.exec(select(PullRequest))).all()
    mine = [p for p in stored if p.task_id == task.id]
    assert [(p.repo_full_name, p.number, p.url, p.head_sha) for p in mine] == [
        (full_name, 1, pull["html_url"], head)
    ]

    # The token reached GitHub, and nothing the run recorded.
    basic = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    assert f"Bearer {TOKEN}" in github.seen_authorizations
    assert f"Basic {basic}" in github.seen_authorizations
    history = (await handle.fetch_history()).to_json()
    recorded_task = json.dumps([done.result, done.error, done.details])
    for text in (history, recorded_task):
        assert TOKEN not in text and basic not in text
    rows = await events(sqlite_database, task.id)
    assert rows
    for row in rows:
        recorded = row.message + json.dumps(row.data)
        assert TOKEN not in recorded and basic not in recorded
    workspace = home / "workspaces" / task.id / ".git" / "config"
    if workspace.exists():
        assert TOKEN not in workspace.read_text()
    left = docker_client.containers.list(all=True, filters={"label": f"{TASK_ID}={task.id}"})
    assert left == []
