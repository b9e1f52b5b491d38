"""An engineering task end to end: scaffold -> developer <-> tester -> pull request.

Real Temporal dev server, real container service (podman or DOCKER_HOST), the real scripted
Worker image, real SQLite and Redis. The scripted agent's first round writes a feature and a test
that fails; the Tester says so; the second round fixes it and commits; the pull request follows.
Another task's manifest names a test command writing JUnit XML: the Tester names its failing test
to the agent, and says when the command wrote no report.
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


# Writes reports/junit.xml as a test runner would, with one test of greet(); the Worker image has
# no pytest, and the Tester reads any runner's JUnit XML alike.
JUNIT_WRITER = """import os
import sys
from xml.sax.saxutils import quoteattr

from app.greeting import greet

got = greet("Ada")
failure = ""
if got != "Hello, Ada!":
    failure = "<failure message=%s/>" % quoteattr("greet('Ada') returned %r" % got)
os.makedirs("reports", exist_ok=True)
with open("reports/junit.xml", "w") as report:
    report.write(
        '<testsuites><testsuite name="greeting">'
        '<testcase classname="tests.greeting" name="test_greets_by_name">%s</testcase>'
        "</testsuite></testsuites>" % failure
    )
sys.exit(1 if failure else 0)
"""
JUNIT_MANIFEST = "test:\n  command: python3 check.py\n  junit: reports/junit.xml\n"
JUNIT_SCRIPT = {
    "rounds": [
        {  # the test command fails before it writes its report: app.greeting is not there yet
            "write": [
                {"path": ".orchestrator.yml", "content": JUNIT_MANIFEST},
                {"path": "check.py", "content": JUNIT_WRITER},
            ],
            "report": "completed",
        },
        {
            "write": {"path": "app/greeting.py", "content": 'def greet(name):\n    return "Hi"\n'},
            "report": "completed",
        },
        {  # the prompt this round got, as its summary
            "write": {
                "path": "app/greeting.py",
                "content": 'def greet(name):\n    return f"Hello, {name}!"\n',
            },
            "run": 'printf "%s" "$SCRIPTED_AGENT_PROMPT"',
            "commit": "Add greet()",
            "report": "completed",
            "summary": "{output}",
        },
    ]
}


async def test_the_tester_names_the_failing_test_from_the_manifests_junit_report(
    temporal_client: Client,
    docker_client: docker.DockerClient,
    scripted_image: str,
    sqlite_database: Database,
    redis: Redis,
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    project = await make_project(sqlite_database, name="junit")
    task = await make_scripted_task(sqlite_database, redis, project, JUNIT_SCRIPT, max_rounds=3)
    runtime = small_runtime(docker_client)
    async with running_worker(
        temporal_client, sqlite_database, redis, home, runtime=runtime
    ) as queue:
        output = await (await start_engineering(temporal_client, task, queue)).result()

    assert output.status == TaskStatus.completed, output
    assert output.result is not None and output.result.rounds == 3
    # The report the command wrote is none of the agent's work: it is not proposed.
    assert sorted(output.result.files_changed) == [
        ".orchestrator.yml",
        "app/greeting.py",
        "check.py",
    ]
    rows = await events(sqlite_database, task.id)
    tester = [e for e in rows if e.stage == "tester" and e.type == EventType.stage_completed]
    assert [e.data["passed"] for e in tester] == [False, False, True]
    # Round 1: no report written, so the exit code judged, and the task's events say so.
    assert tester[0].data["summary"] == (
        "the test command wrote no JUnit XML at reports/junit.xml; judged by its exit code 1"
    )
    assert tester[0].data["command"] == "python3 check.py"
    # Round 2: the failing test named from the report, with its message...
    failing = "tests.greeting.test_greets_by_name"
    assert tester[1].data["failing_tests"] == [failing]
    assert tester[1].data["failure_messages"] == {failing: "greet('Ada') returned 'Hi'"}
    assert failing in tester[1].message
    assert tester[2].data["summary"] == "1 tests passed"
    # ...and so in the agent's next prompt.
    done = [e for e in rows if e.stage == "developer" and e.type == EventType.stage_completed]
    assert f"- {failing}: greet('Ada') returned 'Hi'" in done[2].message
    assert "The test command: python3 check.py" in done[2].message
