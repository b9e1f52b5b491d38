"""Pull requests through the API and the CLI: recorded by the activity, read by people."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from temporalio.testing import ActivityEnvironment

from activities.forge import OpenPullRequestInput, PullRequestActivities, TestOutcome
from db.engine import Database
from infra.forges.local import LocalForge
from tests.api.conftest import MakeClient, live_server

REPO = "local/shop"


@dataclass
class Done:
    exit_code: int
    stdout: str
    stderr: str


def git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


def forge_with_branches(tmp_path: Path, branches: list[str]) -> tuple[LocalForge, Path]:
    forge = LocalForge(tmp_path / "forge")
    forge.create(REPO)
    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "--quiet", "--initial-branch=main")
    (work / "README.md").write_text("# shop\n")
    git(work, "add", "--all")
    git(work, "commit", "--quiet", "-m", "initial")
    forge.push(REPO, work)
    for branch in branches:
        git(work, "checkout", "--quiet", "-b", branch, "main")
        (work / f"{branch.replace('/', '_')}.py").write_text("x = 1\ny = 2\n")
        git(work, "add", "--all")
        git(work, "commit", "--quiet", "-m", branch)
        forge.push_branch(REPO, work, branch)
    return forge, work


async def open_pr(
    activities: PullRequestActivities, project_id: str, task_id: str, branch: str, **extra: Any
) -> dict[str, Any]:
    request = OpenPullRequestInput(
        project_id=project_id,
        task_id=task_id,
        repo_full_name=REPO,
        branch=branch,
        title=f"Work of {branch}",
        **extra,
    )
    opened = await ActivityEnvironment().run(activities.open_pull_request, request)
    return opened.model_dump(mode="json")


async def test_list_filter_and_show(
    make_client: MakeClient,
    admin: httpx.AsyncClient,
    project: dict[str, Any],
    database: Database,
    tmp_path: Path,
) -> None:
    forge, _ = forge_with_branches(tmp_path, ["task/a", "task/b"])
    activities = PullRequestActivities(database, forge)
    first = await open_pr(activities, project["id"], "a" * 32, "task/a")
    outcome = TestOutcome(passed=2, failed=0, summary="2 passed")
    second = await open_pr(activities, project["id"], "b" * 32, "task/b", test_outcome=outcome)
    other = (await admin.post("/projects", json={"name": "other"})).json()

    listed = await admin.get("/pull-requests")
    assert listed.status_code == 200, listed.text
    assert {pr["id"] for pr in listed.json()} == {first["id"], second["id"]}
    by_project = await admin.get("/pull-requests", params={"project_id": project["id"]})
    assert len(by_project.json()) == 2
    assert (await admin.get("/pull-requests", params={"project_id": other["id"]})).json() == []
    by_task = (await admin.get("/pull-requests", params={"task_id": "b" * 32})).json()
    assert [pr["number"] for pr in by_task] == [2]

    shown = await admin.get(f"/pull-requests/{second['id']}")
    assert shown.status_code == 200
    body = shown.json()
    assert (body["branch"], body["base"], body["state"]) == ("task/b", "main", "open")
    assert body["diff_stat"]["files_changed"] == 1 and body["diff_stat"]["insertions"] == 2
    assert body["test_outcome"]["passed"] == 2
    assert body["url"] == f"{forge.clone_url(REPO)}#task/b"

    missing = await admin.get(f"/pull-requests/{'f' * 32}")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
    anonymous = await make_client()
    assert (await anonymous.get("/pull-requests")).status_code == 401
    assert (await anonymous.get(f"/pull-requests/{first['id']}")).status_code == 401


async def test_cli_pr_list_and_show(
    app: FastAPI,
    admin_key: str,
    admin: httpx.AsyncClient,
    project: dict[str, Any],
    database: Database,
    tmp_path: Path,
) -> None:
    forge, _ = forge_with_branches(tmp_path, ["task/c"])
    activities = PullRequestActivities(database, forge)
    outcome = TestOutcome(passed=5, failed=1, summary="1 failed, 5 passed")
    opened = await open_pr(activities, project["id"], "c" * 32, "task/c", test_outcome=outcome)

    async with live_server(app) as url:
        env = {
            **{k: v for k, v in os.environ.items() if not k.endswith(("API_URL", "API_KEY"))},
            "ORCHESTRATOR_API_URL": url,
            "ORCHESTRATOR_API_KEY": admin_key,
            "COLUMNS": "200",
        }

        async def cli(*args: str) -> Done:
            # A process of its own: the API serves (and logs) on this event loop meanwhile.
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "cli.main",
                *args,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode is not None
            return Done(proc.returncode, out.decode(), err.decode())

        listed = await cli("pr", "list", "--project", project["name"], "--json")
        assert listed.exit_code == 0, listed.stdout
        assert [pr["id"] for pr in json.loads(listed.stdout)] == [opened["id"]]
        shown = await cli("pr", "show", opened["id"], "--json")
        assert json.loads(shown.stdout)["test_outcome"]["failed"] == 1

        human = await cli("pr", "show", opened["id"])
        assert human.exit_code == 0
        text = " ".join(human.stdout.split())
        assert "Work of task/c" in text
        assert "task/c -> main" in text
        assert "1 file changed, +2 -0" in text
        assert "5 passed, 1 failed" in text
        assert f"git fetch {forge.clone_url(REPO)} task/c" in text

        human_list = await cli("pr", "list")
        assert human_list.exit_code == 0 and opened["id"] in human_list.stdout
        missing = await cli("pr", "show", "f" * 32, "--json")
        assert missing.exit_code == 3
        assert json.loads(missing.stdout)["error"]["status"] == 404
