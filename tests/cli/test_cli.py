"""The CLI against a real API: JSON output, exit codes, and following a task's events live."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import uuid

from redis.asyncio import Redis

from cli.client import parse_sse, task_id_of
from core.enums import EventType, TaskStatus
from db.engine import Database
from db.tasks import TaskService
from testing.servers import free_port
from tests.cli.conftest import Api, Cli

ALL_QUEUES = {
    "engineering:queue",
    "deploy:queue",
    "scaffolder:queue",
    "provisioner:queue",
    "ansible:deploy:queue",
    "worker:commands",
    "worker:responses",
}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def start_task(cli: Cli, project: str) -> dict:
    return cli.json("engineering", "start", "--project", project, "--spec", "add a /hello route")


def test_project_create_list_show(cli: Cli) -> None:
    name = unique("cli")
    created = cli.json(
        "project", "create", "--name", name, "--modules", "backend, tg_bot", "--description", "D"
    )
    assert len(created["id"]) == 32
    assert created["name"] == name
    assert created["modules"] == ["backend", "tg_bot"]
    assert created["description"] == "D"

    listed = cli.json("project", "list")
    assert isinstance(listed, list)
    assert created["id"] in {p["id"] for p in listed}
    assert cli.json("project", "show", name)["id"] == created["id"]
    assert cli.json("project", "show", created["id"])["name"] == name

    human = cli("project", "list")
    assert human.exit_code == 0
    assert name in human.stdout
    assert created["template"] is None  # the stack's default


def test_a_project_is_made_from_the_template_it_names(cli: Cli) -> None:
    name = unique("app")
    created = cli.json("project", "create", "--name", name, "--template", "app")
    assert created["template"] == "app"
    shown = cli("project", "show", name)
    assert shown.exit_code == 0 and "template" in shown.stdout and "app" in shown.stdout
    refused = cli("project", "create", "--name", unique("x"), "--template", "django")
    assert refused.exit_code == 2 and "django" in refused.output


def test_duplicate_project_is_refused_with_exit_1(cli: Cli) -> None:
    name = unique("dup")
    cli.json("project", "create", "--name", name)
    error = cli.json("project", "create", "--name", name, expect=1)["error"]
    assert error["status"] == 409
    assert error["exit_code"] == 1


def test_engineering_start_returns_the_ids_at_once(cli: Cli) -> None:
    name = unique("eng")
    project = cli.json("project", "create", "--name", name)
    began = time.monotonic()
    started = cli.json(
        "engineering", "start", "--project", name, "--spec", "build it", "--action", "create"
    )
    # No bridge runs here: the IDs come back without any workflow having started.
    assert time.monotonic() - began < 5
    assert started["workflow_id"] == f"engineering-{started['task_id']}"
    assert started["project_id"] == project["id"]
    assert started["workflow_url"].endswith(f"/workflows/{started['workflow_id']}")

    status = cli.json("engineering", "status", started["task_id"])
    assert status["status"] == "QUEUED"
    assert status["action"] == "create"
    # The workflow ID names the task as well.
    assert cli.json("task", "show", started["workflow_id"])["id"] == started["task_id"]
    listed = cli.json("task", "list", "--project", name)
    assert [t["id"] for t in listed] == [started["task_id"]]


def test_not_found_is_exit_3(cli: Cli) -> None:
    assert cli.json("project", "show", "no-such-project", expect=3)["error"]["status"] == 404
    cli.json("engineering", "start", "--project", "no-such-project", "--spec", "x", expect=3)
    cli.json("task", "show", uuid.uuid4().hex, expect=3)

    human = cli("project", "show", "no-such-project")
    assert human.exit_code == 3
    assert human.stdout == ""
    assert "error" in human.stderr


def test_unreachable_api_is_exit_4(cli: Cli) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    error = cli.json("project", "list", expect=4, ORCHESTRATOR_API_URL=nowhere)["error"]
    assert nowhere in error["message"]
    assert cli("task", "watch", uuid.uuid4().hex, ORCHESTRATOR_API_URL=nowhere).exit_code == 4


def test_usage_errors_are_exit_2(cli: Cli) -> None:
    assert cli("project", "create").exit_code == 2  # --name is required
    assert (
        cli("engineering", "start", "--project", "p", "--spec", "x", "--action", "no").exit_code
        == 2
    )
    assert cli("no-such-command").exit_code == 2
    # The API's own validation (422) means the same: the request was wrong.
    assert cli.json("project", "create", "--name", "bad name!", expect=2)["error"]["status"] == 422


def test_a_wrong_key_is_not_allowed(cli: Cli) -> None:
    error = cli.json("project", "list", expect=1, ORCHESTRATOR_API_KEY="orch_wrong")["error"]
    assert error["status"] == 401


def test_contracts_schema_lists_all_seven_queues(cli: Cli) -> None:
    schemas = cli.json("contracts", "schema")
    assert set(schemas["queues"]) == ALL_QUEUES
    assert schemas["queues"]["engineering:queue"]["properties"]["task_id"]["type"] == "string"
    human = cli("contracts", "schema")
    assert human.exit_code == 0
    for queue in ALL_QUEUES:
        assert queue in human.stdout


def test_cancel_wait_and_retry(cli: Cli) -> None:
    name = unique("cancel")
    cli.json("project", "create", "--name", name)
    task = start_task(cli, name)
    cancelled = cli.json("task", "cancel", task["task_id"])
    assert cancelled["status"] == "CANCELLED"  # no workflow yet: the API marks the task

    waited = cli.json("engineering", "wait", task["task_id"], "--timeout", "30", expect=1)
    assert waited["status"] == "CANCELLED"
    listed = cli.json("task", "list", "--project", name, "--status", "cancelled")
    assert [t["id"] for t in listed] == [task["task_id"]]

    retry = cli.json("task", "retry", task["task_id"])
    assert retry["retry_of"] == task["task_id"]
    assert retry["task_id"] != task["task_id"]
    assert retry["status"] == "QUEUED"
    assert cli.json("task", "retry", task["task_id"], expect=1)["error"]["status"] == 409


def test_wait_gives_up_at_its_timeout(cli: Cli) -> None:
    name = unique("slow")
    cli.json("project", "create", "--name", name)
    task = start_task(cli, name)  # stays QUEUED: no bridge starts it
    began = time.monotonic()
    error = cli.json("engineering", "wait", task["task_id"], "--timeout", "1", expect=1)["error"]
    assert 1 <= time.monotonic() - began < 15
    assert error["timed_out"] is True
    assert error["status"] == "QUEUED"
    assert "timed out" in error["message"]


async def test_watch_follows_the_events_live(cli: Cli, api: Api) -> None:
    name = unique("watch")
    cli.json("project", "create", "--name", name)
    task = start_task(cli, name)
    watcher = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "cli.main", "task", "watch", task["task_id"], "--json"),
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    db, redis = Database(api.database_url), Redis.from_url(api.redis_url)
    try:
        tasks = TaskService(db, redis)
        await tasks.start(task["task_id"])
        await tasks.add_event(task["task_id"], EventType.stage_started, "go", stage="scaffold")
        await tasks.add_event(task["task_id"], EventType.progress, "half", progress=0.5)
        await tasks.add_event(task["task_id"], EventType.stage_completed, "done", stage="scaffold")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(watcher.wait(), 0.5)
        assert watcher.returncode is None, "watch must keep following while the task runs"
        await tasks.finish(
            task["task_id"],
            TaskStatus.completed,
            message="all done",
            result={"stages": ["scaffold"]},
        )
        stdout, stderr = await asyncio.wait_for(watcher.communicate(), 30)
    finally:
        if watcher.returncode is None:
            watcher.kill()
            await watcher.wait()
        await redis.aclose()
        await db.dispose()
    assert watcher.returncode == 0, stderr.decode()
    report = json.loads(stdout)
    assert report["status"] == "COMPLETED"
    assert report["result"] == {"stages": ["scaffold"]}
    kinds = [e["type"] for e in report["events"]]
    assert kinds == ["started", "stage_started", "progress", "stage_completed", "completed"]
    assert [e["seq"] for e in report["events"]] == [1, 2, 3, 4, 5]


def test_parse_sse() -> None:
    lines = [
        ": ping",
        "event: task_event",
        "id: 1",
        'data: {"seq": 1,',
        'data:  "type": "started"}',
        "",
        "event: other",
        "data: {}",
        "",
        "event: task_event",
        'data: {"seq": 2}',
    ]
    assert list(parse_sse(iter(lines))) == [{"seq": 1, "type": "started"}, {"seq": 2}]


def test_task_id_of_accepts_workflow_ids() -> None:
    task_id = uuid.uuid4().hex
    assert task_id_of(f"engineering-{task_id}") == task_id
    assert task_id_of(f" {task_id} ") == task_id
    assert task_id_of("engineering-x") == "engineering-x"
