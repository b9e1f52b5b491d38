"""An engineering task end to end: scaffold -> developer <-> tester -> pull request.

Real Temporal dev server, real container service (podman or DOCKER_HOST), the real scripted
Worker image, real SQLite and Redis. The scripted agent's first round writes a feature and a test
that fails; the Tester says so; the second round fixes it and commits; the pull request follows.
"""

from __future__ import annotations

import json
from pathlib import Path

import docker
import docker.errors
import pytest
from redis.asyncio import Redis
from sqlmodel import select
from temporalio.client import Client, WorkflowFailureError

from api.schemas import TaskCreate
from core.enums import EventType, TaskStatus
from db.engine import Database
from db.tables import PullRequest
from db.tasks import TaskService
from infra.containers import TASK_ID
from infra.forges.local import LocalForge
from testing.workflows import (
    events,
    get_task,
    git_out,
    make_project,
    make_scripted_task,
    running_worker,
    small_runtime,
    start_engineering,
)

TEST_FILE = """import unittest

from app.greeting import greet


class GreetingTest(unittest.TestCase):
    def test_greets_by_name(self):
        self.assertEqual(greet("Ada"), "Hello, Ada!")
"""
SCRIPT = {
    "rounds": [
        {
            "write": [
                {"path": "app/greeting.py", "content": 'def greet(name):\n    return "Hi"\n'},
                {"path": "tests/test_greeting.py", "content": TEST_FILE},
            ],
            "report": "completed",
            "summary": "Added greet() and its test.",
        },
        {
            "write": {
                "path": "app/greeting.py",
                "content": 'def greet(name):\n    return f"Hello, {name}!"\n',
            },
            "commit": "Add greet()",
            "report": "completed",
            "summary": "Fixed greet().",
        },
    ]
}
FAILING_TEST = "tests.test_greeting.GreetingTest.test_greets_by_name"


async def test_a_failing_first_round_is_fixed_and_proposed(
    temporal_client: Client,
    docker_client: docker.DockerClient,
    scripted_image: str,
    sqlite_database: Database,
    redis: Redis,
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    project = await make_project(sqlite_database, name="greeter")
    task = await TaskService(sqlite_database, redis).create(
        TaskCreate(project_id=project.id, spec=json.dumps({"script": SCRIPT})).new_task(
            project_name=project.name, user_id=project.owner_id
        )
    )
    runtime = small_runtime(docker_client)
    async with running_worker(
        temporal_client, sqlite_database, redis, home, runtime=runtime
    ) as queue:
        handle = await start_engineering(temporal_client, task, queue)
        output = await handle.result()

    assert output.status == TaskStatus.completed, output
    result = output.result
    assert result is not None
    branch = f"task/{task.id}"
    assert result.branch == branch
    assert result.rounds == 2
    assert result.stages == ["scaffold", "developer", "tester", "pull_request"]
    assert sorted(result.files_changed) == ["app/greeting.py", "tests/test_greeting.py"]

    # Round 1's tests fail and the event names the failing test; round 2's pass.
    rows = await events(sqlite_database, task.id)
    tester = [e for e in rows if e.stage == "tester" and e.type == EventType.stage_completed]
    assert [e.data["round"] for e in tester] == [1, 2]
    assert [e.data["passed"] for e in tester] == [False, True]
    assert FAILING_TEST in tester[0].message
    assert tester[0].data["failing_tests"] == [FAILING_TEST]
    developer = [e for e in rows if e.stage == "developer" and e.type == EventType.stage_started]
    assert [e.data["round"] for e in developer] == [1, 2]

    # The forge: a pull request for the branch, whose head is the agent's commit.
    forge = LocalForge(home / "forge")
    pull = forge.find_pull_request("local/greeter", branch)
    assert pull is not None and pull.url == result.pr_url
    bare = forge.path("local/greeter")
    head = git_out(bare, "rev-parse", f"refs/heads/{branch}")
    assert head == result.commit_sha == pull.head_sha
    assert git_out(bare, "log", "-1", "--format=%an %s", head) == "scripted-agent Add greet()"
    fixed = git_out(bare, "show", f"{head}:app/greeting.py")
    assert 'f"Hello, {name}!"' in fixed
    async with sqlite_database.session() as session:
        stored = (await session.exec(select(PullRequest))).all()
    assert [(p.branch, p.task_id, p.head_sha) for p in stored] == [(branch, task.id, head)]
    assert stored[0].test_outcome is not None and stored[0].test_outcome["failed"] == 0

    # The task's result names it, and no Worker container remains.
    done = await get_task(sqlite_database, task.id)
    assert done.status == TaskStatus.completed
    assert done.result is not None
    assert done.result["pr_url"] == result.pr_url and done.result["rounds"] == 2
    left = docker_client.containers.list(all=True, filters={"label": f"{TASK_ID}={task.id}"})
    assert left == []


async def test_the_round_limit_ends_the_task_failed(
    temporal_client: Client,
    docker_client: docker.DockerClient,
    scripted_image: str,
    sqlite_database: Database,
    redis: Redis,
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    project = await make_project(sqlite_database, name="limited")
    task = await make_scripted_task(sqlite_database, redis, project, SCRIPT, max_rounds=1)
    runtime = small_runtime(docker_client)
    async with running_worker(
        temporal_client, sqlite_database, redis, home, runtime=runtime
    ) as queue:
        handle = await start_engineering(temporal_client, task, queue)
        with pytest.raises(WorkflowFailureError):
            await handle.result()

    done = await get_task(sqlite_database, task.id)
    assert done.status == TaskStatus.failed
    assert done.error is not None and "after 1 round(s)" in done.error
    rows = await events(sqlite_database, task.id)
    developer = [e for e in rows if e.stage == "developer"]
    turns = [e for e in developer if e.type in (EventType.stage_started, EventType.stage_completed)]
    assert [e.data["round"] for e in turns] == [1, 1]
    # The agent's edits arrived as live events while it worked.
    live = [e.message for e in developer if e.data.get("agent_event") == "file_change"]
    assert any("app/greeting.py" in m for m in live), live
    assert LocalForge(home / "forge").pull_requests("local/limited") == []
    left = docker_client.containers.list(all=True, filters={"label": f"{TASK_ID}={task.id}"})
    assert left == []
