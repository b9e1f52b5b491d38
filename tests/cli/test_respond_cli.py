"""`task respond`, `task show` of a waiting task, and `engineering start`'s agent options, against
a real API process (and, for a delivered answer, a stand-in workflow on the real Temporal)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from cli.main import app
from core.contracts.events import HumanAnswer
from db.engine import Database
from db.tasks import TaskService
from tests.api.test_respond import PROBE, RespondProbe
from tests.cli.conftest import FOREIGN, Api, Cli


def new_project(cli: Cli) -> str:
    name = f"respond-{uuid.uuid4().hex[:8]}"
    cli.json("project", "create", "--name", name)
    return name


def start(cli: Cli, project: str, *options: str, expect: int = 0) -> Any:
    return cli.json(
        "engineering", "start", "--project", project, "--spec", "add /ping", *options, expect=expect
    )


@asynccontextmanager
async def task_service(api: Api) -> AsyncIterator[TaskService]:
    """The API's own database and Redis, to move a task the way the workflow would."""
    db, redis = Database(api.database_url), Redis.from_url(api.redis_url)
    try:
        yield TaskService(db, redis)
    finally:
        await redis.aclose()
        await db.dispose()


async def make_waiting(api: Api, task_id: str, question: str) -> None:
    async with task_service(api) as tasks:
        await tasks.start(task_id)
        assert await tasks.wait_for_human(task_id, question, stage="develop")


async def run_cli(cli: Cli, *args: str, stdin: str = "") -> tuple[int, str, str]:
    """The CLI in a child process: this event loop must stay free for the Temporal worker."""
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "cli.main", *args),
        env=cli.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(stdin.encode()), 60)
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(), stderr.decode()


def test_respond_to_a_task_that_is_not_waiting_is_exit_1(cli: Cli) -> None:
    task = start(cli, new_project(cli))
    error = cli.json("task", "respond", task["task_id"], "yes", expect=1)["error"]
    assert error["status"] == 409
    assert "not waiting for an answer (status QUEUED)" in error["detail"]
    human = cli("task", "respond", task["task_id"], "yes")
    assert human.exit_code == 1
    assert "not waiting for an answer" in human.stderr


def test_respond_to_an_unknown_task_is_exit_3(cli: Cli) -> None:
    error = cli.json("task", "respond", uuid.uuid4().hex, "yes", expect=3)["error"]
    assert error["status"] == 404


def test_an_empty_answer_is_a_usage_error(cli: Cli) -> None:
    task = start(cli, new_project(cli))
    assert cli("task", "respond", task["task_id"], "  ").exit_code == 2
    env: dict[str, str | None] = {**dict.fromkeys(FOREIGN), **cli.env}
    args = ["task", "respond", task["task_id"], "-"]
    assert cli.runner.invoke(app, args, input="", env=env).exit_code == 2


async def test_respond_delivers_the_answer(cli: Cli, api: Api, temporal_client: Client) -> None:
    task = start(cli, new_project(cli))
    await make_waiting(api, task["task_id"], "Which database?")
    queue = f"respond-probe-{uuid.uuid4().hex[:8]}"
    async with Worker(
        temporal_client,
        task_queue=queue,
        workflows=[RespondProbe],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        handle = await temporal_client.start_workflow(
            PROBE, "Which database?", id=task["workflow_id"], task_queue=queue
        )
        try:
            shown = await run_cli(cli, "task", "show", task["task_id"])
            assert shown[0] == 0, shown
            assert "Which database?" in shown[1] and "task respond" in shown[1]

            code, stdout, stderr = await run_cli(
                cli, "task", "respond", task["workflow_id"], "-", "--json", stdin="PostgreSQL 16\n"
            )
            assert code == 0, (stdout, stderr)
            assert json.loads(stdout)["id"] == task["task_id"]
            received = await handle.query("received", result_type=list[HumanAnswer])
            assert [r.answer for r in received] == ["PostgreSQL 16\n"]

            code, stdout, stderr = await run_cli(cli, "task", "respond", task["task_id"], "again")
            assert code == 1 and "no question is pending" in stderr, (stdout, stderr)
        finally:
            await handle.terminate("test over")


def test_engineering_start_sends_the_agent_options(cli: Cli, api: Api, tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"steps": [{"write": {"path": "a.txt", "content": "a"}}]}))
    started = start(
        cli,
        new_project(cli),
        *("--agent", "scripted", "--script", str(script), "--max-rounds", "2"),
        *("--max-cost-usd", "0.5", "--instructions", "Be brief."),
    )
    key = api.settings().read_api_key()
    response = httpx.get(
        f"{api.url}/tasks/{started['task_id']}", headers={"Authorization": f"Bearer {key}"}
    )
    assert response.json()["details"]["engineering"] == {
        "agent": "scripted",
        "script": json.loads(script.read_text()),
        "max_rounds": 2,
        "max_cost_usd": 0.5,
        "instructions": "Be brief.",
    }
    shown = cli("task", "show", started["task_id"])
    assert shown.exit_code == 0
    assert "agent=scripted" in shown.stdout and "max_rounds=2" in shown.stdout


def test_engineering_start_refuses_a_bad_script(cli: Cli, tmp_path: Path) -> None:
    project = new_project(cli)
    missing = start(cli, project, "--script", str(tmp_path / "nope.json"), expect=2)
    assert "cannot read the script" in missing["error"]["message"]
    array = tmp_path / "array.json"
    array.write_text("[1, 2]")
    not_object = start(cli, project, "--script", str(array), expect=2)
    assert "JSON object" in not_object["error"]["message"]
    broken = tmp_path / "broken.json"
    broken.write_text("{nope")
    assert "not JSON" in start(cli, project, "--script", str(broken), expect=2)["error"]["message"]
    wrong = start(cli, project, "--agent", "codex", "--script", str(array), expect=2)
    assert "scripted agent" in wrong["error"]["message"]
    # Limits the API refuses are usage errors too.
    assert start(cli, project, "--max-rounds", "0", expect=2)["error"]["status"] == 422
    assert cli.json("task", "list", "--project", project) == []
