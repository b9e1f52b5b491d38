"""`pr merge` and `project update --auto-deploy` on real parts: the API, a Temporal worker that
merges on the local forge (``PullRequestMergeWorkflow``), the database, Redis and the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio
from fastapi import FastAPI
from redis.asyncio import Redis
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.forge import OpenPullRequestInput, PullRequestActivities
from api.app import create_app
from core.settings import Settings
from db.engine import Database
from db.users import ensure_admin_key
from infra.forges.local import LocalForge
from testing.workflows import running_worker
from tests.api.conftest import auth, live_server
from tests.api.test_pull_requests import REPO, Done, git

FILES = {
    "task/a": {"a.py": "a = 1\n"},
    "task/b": {"README.md": "# shop\n\nby b\n"},
    "task/c": {"README.md": "# shop\n\nby c\n"},  # conflicts with b
    "task/d": {"d.py": "d = 1\n"},
}


@dataclass
class Merging:
    """The API and a worker on a queue of their own; the worker's forge holds ``local/shop``
    with a pull request per branch of ``FILES``, recorded for the project ``shop``."""

    app: FastAPI
    api: httpx.AsyncClient
    key: str
    forge: LocalForge
    project: dict[str, Any]
    pulls: dict[str, dict[str, Any]]  # by branch

    async def merge(self, branch_or_id: str) -> httpx.Response:
        pull_request_id = self.pulls[branch_or_id]["id"] if "/" in branch_or_id else branch_or_id
        return await self.api.post(f"/pull-requests/{pull_request_id}/merge")


def push_branches(forge: LocalForge, work: Path) -> None:
    forge.create(REPO)
    work.mkdir()
    git(work, "init", "--quiet", "--initial-branch=main")
    (work / "README.md").write_text("# shop\n")
    git(work, "add", "--all")
    git(work, "commit", "--quiet", "-m", "initial")
    forge.push(REPO, work)
    for branch, files in FILES.items():
        git(work, "checkout", "--quiet", "-b", branch, "main")
        for path, text in files.items():
            (work / path).write_text(text)
        git(work, "add", "--all")
        git(work, "commit", "--quiet", "-m", branch)
        forge.push_branch(REPO, work, branch)


@contextlib.asynccontextmanager
async def merging_stack(
    db: Database, redis: Redis, client: Client, tmp_path: Path
) -> AsyncIterator[Merging]:
    settings = Settings(home=tmp_path / "home", temporal_task_queue=f"merge-{uuid.uuid4().hex}")
    forge = LocalForge(settings.forge_dir)
    push_branches(forge, tmp_path / "work")
    app = create_app(settings, database=db, redis=redis, temporal=client)
    key = await ensure_admin_key(db, tmp_path / "api_key")
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))
        await stack.enter_async_context(
            running_worker(
                client, db, redis, settings.home,
                settings=settings, task_queue=settings.temporal_task_queue,
            )
        )  # fmt: skip
        api = await stack.enter_async_context(
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app), base_url="http://api", headers=auth(key)
            )
        )
        created = await api.post("/projects", json={"name": "shop"})
        assert created.status_code == 201, created.text
        project = created.json()
        opener = PullRequestActivities(db, forge)
        pulls = {}
        for branch in FILES:
            request = OpenPullRequestInput(
                project_id=project["id"], repo_full_name=REPO, branch=branch, title=branch
            )
            opened = await ActivityEnvironment().run(opener.open_pull_request, request)
            pulls[branch] = opened.model_dump(mode="json")
        yield Merging(app, api, key, forge, project, pulls)


@pytest_asyncio.fixture
async def merging(
    database: Database, redis: Redis, temporal_client: Client, tmp_path: Path
) -> AsyncIterator[Merging]:
    async with merging_stack(database, redis, temporal_client, tmp_path) as parts:
        yield parts


async def test_a_merge_through_the_api_deploys_where_the_project_asks(merging: Merging) -> None:
    api, project = merging.api, merging.project
    assert project["auto_deploy"] is False
    turned = await api.patch("/projects/shop", json={"auto_deploy": True})
    assert turned.status_code == 200, turned.text
    assert turned.json()["auto_deploy"] is True
    assert (await api.get(f"/projects/{project['id']}")).json()["auto_deploy"] is True
    assert (await api.patch("/projects/nope", json={"auto_deploy": True})).status_code == 404
    assert (await api.patch("/projects/shop", json={"auto_deploy": "yes"})).status_code == 422
    assert (await api.patch("/projects/shop", json={})).json()["auto_deploy"] is True

    merged = await merging.merge("task/a")
    assert merged.status_code == 200, merged.text
    body = merged.json()
    assert body["state"] == "merged" and body["merged_at"]
    assert body["merge_commit_sha"] == merging.forge.head(REPO, "main")
    deploy = (await api.get(f"/tasks/{body['deploy_task_id']}")).json()
    assert (deploy["type"], deploy["status"]) == ("deploy", "QUEUED")
    assert deploy["details"]["merge"]["merge_commit_sha"] == body["merge_commit_sha"]
    assert deploy["details"]["deploy"] == {"action": "create", "ref": "main"}
    shown = (await api.get(f"/pull-requests/{body['id']}")).json()
    assert (shown["state"], shown["deploy_task_id"]) == ("merged", deploy["id"])

    again = await merging.merge("task/a")
    assert again.status_code == 409
    assert again.headers["content-type"].startswith("application/problem+json")
    assert "merged" in again.json()["detail"]

    assert (await api.patch("/projects/shop", json={"auto_deploy": False})).status_code == 200
    assert (await merging.merge("task/b")).json()["deploy_task_id"] is None
    conflict = await merging.merge("task/c")
    assert conflict.status_code == 409, conflict.text
    assert "MergeConflict" in conflict.json()["detail"]
    assert "README.md" in conflict.json()["detail"]
    still = (await api.get(f"/pull-requests/{merging.pulls['task/c']['id']}")).json()
    assert still["state"] == "open" and still["merge_commit_sha"] is None

    # Closed on the forge, not yet seen by the repo-sync job.
    merging.forge.close_pull_request(REPO, merging.pulls["task/d"]["number"])
    closed = await merging.merge("task/d")
    assert closed.status_code == 409 and "PullRequestClosed" in closed.json()["detail"]

    assert (await merging.merge("f" * 32)).status_code == 404
    tasks = (await api.get("/tasks", params={"project_id": project["id"]})).json()
    assert [task["type"] for task in tasks] == ["deploy"]


async def test_cli_pr_merge_and_project_update(
    sqlite_database: Database, redis: Redis, temporal_client: Client, tmp_path: Path
) -> None:
    async with (
        merging_stack(sqlite_database, redis, temporal_client, tmp_path) as merging,
        live_server(merging.app) as url,
    ):
        env = {
            **{k: v for k, v in os.environ.items() if not k.endswith(("API_URL", "API_KEY"))},
            "ORCHESTRATOR_API_URL": url,
            "ORCHESTRATOR_API_KEY": merging.key,
            "COLUMNS": "200",
        }

        async def cli(*args: str) -> Done:
            # A process of its own: the API serves on this event loop meanwhile.
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cli.main", *args, env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode is not None
            return Done(proc.returncode, out.decode(), err.decode())

        on = await cli("project", "update", "shop", "--auto-deploy", "--json")
        assert on.exit_code == 0, on.stdout + on.stderr
        assert json.loads(on.stdout)["auto_deploy"] is True
        shown = await cli("project", "show", "shop")
        assert "auto-deploy  on: a merge into main deploys it" in shown.stdout
        nothing = await cli("project", "update", "shop")
        assert nothing.exit_code == 2 and "--auto-deploy" in nothing.stderr

        a = merging.pulls["task/a"]
        merged = await cli("pr", "merge", a["id"], "--json")
        assert merged.exit_code == 0, merged.stdout + merged.stderr
        body = json.loads(merged.stdout)
        assert body["state"] == "merged" and body["deploy_task_id"]
        assert body["merge_commit_sha"] == merging.forge.head(REPO, "main")
        shown = await cli("pr", "show", a["id"])
        assert f"merge commit  {body['merge_commit_sha']}" in shown.stdout
        assert f"deploy        {body['deploy_task_id']}" in shown.stdout

        off = await cli("project", "update", "shop", "--no-auto-deploy")
        assert off.exit_code == 0 and "auto-deploy  off" in off.stdout
        human = await cli("pr", "merge", merging.pulls["task/b"]["id"])
        assert human.exit_code == 0, human.stdout + human.stderr
        text = " ".join(human.stdout.split())
        assert "Merged local/shop #2 (task/b -> main):" in text and "Deploying" not in text

        refused = await cli("pr", "merge", merging.pulls["task/c"]["id"], "--json")
        assert refused.exit_code == 1
        error = json.loads(refused.stdout)["error"]
        assert error["status"] == 409 and "MergeConflict" in error["detail"]
        again = await cli("pr", "merge", a["id"])
        assert again.exit_code == 1 and "merged" in again.stderr
        missing = await cli("pr", "merge", "f" * 32, "--json")
        assert missing.exit_code == 3
