"""``orchestrator deploy`` (and ``server add --apps-root``) against a real API process: the IDs at
once, the message on ``deploy:queue`` (no bridge runs here: deploy tasks stay QUEUED), the
releases a project's deploys left, exit codes, --json, and who may deploy."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from core.contracts.deploy import DEPLOY_QUEUE, DeployMessage
from core.enums import DeploymentStatus
from db.engine import Database
from db.tables import Deployment
from tests.api.test_servers import private_key
from tests.cli.conftest import Api, Cli
from tests.cli.test_server_cli import add, unique


@pytest.fixture
def project(cli: Cli) -> dict[str, Any]:
    created: dict[str, Any] = cli.json("project", "create", "--name", unique("dep"))
    return created


def queued(api: Api) -> dict[str, DeployMessage]:
    """What is on deploy:queue, by task id."""
    with redis.Redis.from_url(api.redis_url) as client:
        entries = client.xrange(DEPLOY_QUEUE)
    messages = (DeployMessage.from_fields(fields) for _, fields in entries)
    return {message.task_id: message for message in messages}


def test_start_prints_the_ids_at_once_and_queues_the_deploy(
    cli: Cli, api: Api, project: dict[str, Any]
) -> None:
    name = project["name"]
    started = cli.json("deploy", "start", "--project", name)
    assert started["workflow_id"] == f"deploy-{started['task_id']}"
    assert started["workflow_url"].endswith(f"/workflows/{started['workflow_id']}")
    assert started["project_id"] == project["id"]
    assert (started["action"], started["status"]) == ("create", "QUEUED")
    message = queued(api)[started["task_id"]]
    assert message.action == "create" and message.project_id == project["id"]

    task = cli.json("task", "show", started["task_id"])
    assert task["type"] == "deploy" and task["spec"] == f"Create {name}"
    assert task["details"] == {"deploy": {"action": "create"}}

    with_ref = cli.json("deploy", "start", "--project", project["id"], "--ref", "feature/login")
    task = cli.json("task", "show", with_ref["task_id"])
    assert task["details"] == {"deploy": {"action": "create", "ref": "feature/login"}}
    assert task["spec"] == f"Create {name} (feature/login)"

    human = cli("deploy", "start", "--project", name)
    assert human.exit_code == 0, human.output
    assert "(create)" in human.stdout and "workflow  deploy-" in human.stdout
    assert "task watch" in human.stdout


def test_rollback_stop_and_undeploy_are_deploy_tasks_too(
    cli: Cli, api: Api, project: dict[str, Any]
) -> None:
    started = {
        action: cli.json("deploy", action, project["name"])
        for action in ("rollback", "stop", "undeploy")
    }
    messages = queued(api)
    for action, task in started.items():
        assert task["action"] == action and task["status"] == "QUEUED"
        assert task["workflow_id"] == f"deploy-{task['task_id']}"
        assert messages[task["task_id"]].action == action
        shown = cli.json("task", "show", task["task_id"])
        assert shown["details"] == {"deploy": {"action": action}}


def test_undeploy_drops_the_data_only_when_asked(
    cli: Cli, api: Api, project: dict[str, Any]
) -> None:
    task = cli.json("deploy", "undeploy", project["name"], "--drop-data")
    shown = cli.json("task", "show", task["task_id"])
    assert shown["details"] == {"deploy": {"action": "undeploy", "drop_data": True}}
    # Only an undeploy drops data: asked of another action, the API refuses it, saying why.
    body = {
        "type": "deploy",
        "project_id": project["id"],
        "deploy": {"action": "create", "drop_data": True},
    }
    admin = {"Authorization": f"Bearer {api.settings().read_api_key()}"}
    refused = httpx.post(f"{api.url}/tasks", json=body, headers=admin)
    assert refused.status_code == 422, refused.text
    assert "drop_data goes with the undeploy action only" in refused.text


def test_an_unknown_project_exits_3(cli: Cli, api: Api) -> None:
    before = len(queued(api))
    for args in (("start", "--project", "no-such-project"), ("rollback", "no-such-project")):
        error = cli.json("deploy", *args, expect=3)["error"]
        assert error["status"] == 404 and "no-such-project" in error["detail"]
    assert cli.json("deploy", "list", "--project", "no-such-project", expect=3)["error"]
    assert len(queued(api)) == before


def add_releases(api: Api, project: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """``count`` releases of ``project`` in the API's database, a minute apart, named as the
    deploy workflow names them; newest first, as JSON."""
    start = datetime(2026, 1, 1, 12, tzinfo=UTC)
    rows = []
    for index in range(count):
        at, task_id = start + timedelta(minutes=index), uuid.uuid4().hex
        rows.append(
            Deployment(
                project_id=project["id"],
                task_id=task_id,
                port=20000 + index,
                release=f"{at:%Y%m%d%H%M%S}-{task_id[:8]}",
                status=DeploymentStatus.superseded,
                url=f"http://127.0.0.1:{20000 + index}",
                details={"server": "web-1"},
                created_at=at,
                updated_at=at,
            )
        )

    async def insert() -> None:
        db = Database(api.database_url)
        try:
            async with db.session() as session:
                session.add_all(rows)
                await session.commit()
        finally:
            await db.dispose()

    asyncio.run(insert())
    return [row.model_dump(mode="json") for row in reversed(rows)]


def test_list_shows_the_project_s_releases_newest_first(
    cli: Cli, api: Api, project: dict[str, Any]
) -> None:
    newest, oldest = add_releases(api, project, 2)
    rows = cli.json("deploy", "list", "--project", project["name"])
    assert [r["id"] for r in rows] == [newest["id"], oldest["id"]]
    assert (rows[0]["release"], rows[0]["port"], rows[0]["url"]) == (
        newest["release"],
        20001,
        "http://127.0.0.1:20001",
    )
    limited = cli.json("deploy", "list", "--project", project["id"], "--limit", "1")
    assert [r["id"] for r in limited] == [newest["id"]]
    assert newest["id"] in {r["id"] for r in cli.json("deploy", "list")}

    wide = cli("deploy", "list", "--project", project["name"], COLUMNS="200")
    assert wide.exit_code == 0, wide.output
    header = next(line for line in wide.stdout.splitlines() if "release" in line)
    for column in ("status", "server", "port", "url", "task"):
        assert column in header, (column, wide.stdout)
    line = next(line for line in wide.stdout.splitlines() if newest["release"] in line)
    for value in ("SUPERSEDED", "web-1", "20001", "http://127.0.0.1:20001", newest["task_id"]):
        assert value in line, (value, wide.stdout)
    # In a terminal of 80 columns long values wrap: none is cut short.
    narrow = cli("deploy", "list", "--project", project["name"], COLUMNS="80")
    assert narrow.exit_code == 0 and "…" not in narrow.stdout, narrow.stdout
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 80


def test_status_shows_the_task_by_its_id_or_workflow_id(cli: Cli, project: dict[str, Any]) -> None:
    started = cli.json("deploy", "stop", project["name"])
    status = cli.json("deploy", "status", started["task_id"])
    assert status["id"] == started["task_id"] and status["type"] == "deploy"
    assert (status["action"], status["status"]) == ("stop", "QUEUED")
    assert status["workflow_url"] == started["workflow_url"]
    assert cli.json("deploy", "status", started["workflow_id"])["id"] == started["task_id"]


def test_wait_gives_up_at_its_timeout_and_the_deploy_stays_queued(
    cli: Cli, project: dict[str, Any]
) -> None:
    waited = cli.json(
        "deploy", "start", "--project", project["name"], "--wait", "--timeout", "0", expect=1
    )
    error = waited["error"]
    assert error["timed_out"] is True and error["status"] == "QUEUED"
    assert "timed out after 0s" in error["message"]
    assert cli.json("task", "show", error["task_id"])["type"] == "deploy"


def test_who_may_deploy(cli: Cli, project: dict[str, Any]) -> None:
    refused = cli.json(
        "deploy", "start", "--project", project["name"], expect=1, ALLOWED_COMMANDS="DEVELOPER"
    )["error"]
    assert refused["command"] == "deploy.start"
    assert "`deploy start` is not allowed here (ALLOWED_COMMANDS=DEVELOPER)" in refused["message"]
    assert cli.json("task", "list", "--project", project["name"]) == []  # nothing was sent

    started = cli.json("deploy", "start", "--project", project["name"], ALLOWED_COMMANDS="DEVOPS")
    assert started["status"] == "QUEUED"
    listed = cli.json("deploy", "list", "--project", project["name"], ALLOWED_COMMANDS="DEVOPS")
    assert listed == []


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "id_ed25519"
    path.write_text(private_key())
    return path


def test_server_add_takes_an_apps_root(cli: Cli, key_file: Path) -> None:
    handle = unique("apps")
    server = add(cli, handle, key_file, "--apps-root", "/srv/apps")
    assert server["apps_root"] == "/srv/apps"
    assert cli.json("server", "show", handle)["apps_root"] == "/srv/apps"
    shown = cli("server", "show", handle)
    assert shown.exit_code == 0 and "/srv/apps" in shown.stdout
    assert add(cli, unique("home"), key_file, "--apps-root", "~/apps")["apps_root"] == "~/apps"

    relative = unique("rel")
    error = add(cli, relative, key_file, "--apps-root", "srv/apps", expect=2)["error"]
    assert (
        error["status"] == 422
        and "apps_root must be an absolute path or one under ~/" in error["detail"]
    )
    human = cli(
        "server", "add", "--handle", relative, "--host", "h", "--user", "u",
        "--key-file", str(key_file), "--apps-root", "srv/apps",
    )  # fmt: skip
    assert human.exit_code == 2 and "apps_root" in human.stderr, human.output
    assert cli.json("server", "show", relative, expect=3)["error"]["status"] == 404
