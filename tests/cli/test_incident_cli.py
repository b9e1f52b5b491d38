"""``orchestrator incident`` against a real API process: incidents the checks opened (recorded as
the scheduled jobs record them) listed, filtered, shown with their evidence and acknowledged,
with --json everywhere and the exit codes of the other commands."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from core.enums import IncidentKind
from db.engine import Database
from db.incidents import Check, record_check
from tests.cli.conftest import Api, Cli

LOG_TAIL = "Traceback (most recent call last):\nRuntimeError: no database"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def fail(api: Api, kind: IncidentKind, subject: str, project_id: str | None = None) -> int:
    """A failed check that opens an incident (threshold 1); its number."""
    outcome = Check(
        kind=kind,
        subject=subject,
        ok=False,
        title=f"{subject} does not answer",
        evidence={"error": "connection refused", "log_tail": LOG_TAIL},
        project_id=project_id,
    )

    async def record() -> int | None:
        db = Database(api.database_url)
        try:
            async with db.session() as session:
                recorded = await record_check(session, outcome, tick="t1", threshold=1, chats=[])
                return recorded.opened
        finally:
            await db.dispose()

    opened = asyncio.run(record())
    assert opened is not None
    return opened


def resolve(api: Api, kind: IncidentKind, subject: str) -> None:
    async def record() -> None:
        db = Database(api.database_url)
        try:
            async with db.session() as session:
                passed = Check(kind=kind, subject=subject, ok=True)
                await record_check(session, passed, tick="t2", threshold=1, chats=[])
        finally:
            await db.dispose()

    asyncio.run(record())


@pytest.fixture
def project(cli: Cli) -> dict:
    created = cli.json("project", "create", "--name", unique("inc"))
    assert isinstance(created, dict)
    return created


def test_list_show_and_ack(cli: Cli, api: Api, project: dict) -> None:
    name = project["name"]
    app = fail(api, IncidentKind.app_down, f"app:{name}", project["id"])
    server_subject = unique("server:web")
    server = fail(api, IncidentKind.server_unreachable, server_subject)
    resolve(api, IncidentKind.server_unreachable, server_subject)

    listed = [incident["id"] for incident in cli.json("incident", "list")]
    assert listed.index(server) < listed.index(app)  # newest first
    opened = [incident["id"] for incident in cli.json("incident", "list", "--open")]
    assert app in opened and server not in opened
    assert [i["id"] for i in cli.json("incident", "list", "--project", name)] == [app]
    by_kind = cli.json("incident", "list", "--kind", "server_unreachable", "--limit", "500")
    assert server in [i["id"] for i in by_kind] and {i["kind"] for i in by_kind} == {
        "server_unreachable"
    }

    table = cli("incident", "list", "--project", name, COLUMNS="200")
    assert table.exit_code == 0, table.output
    assert f"app:{name} does not answer" in table.stdout
    assert "app_down" in table.stdout and "open" in table.stdout

    shown = cli.json("incident", "show", str(app))
    assert shown["id"] == app and shown["open"] is True and shown["project_id"] == project["id"]
    assert shown["evidence"]["log_tail"] == LOG_TAIL and shown["acked_by"] is None
    human = cli("incident", "show", f"#{app}")
    assert human.exit_code == 0, human.output
    for text in (f"#{app}: app:{name} does not answer", "connection refused", "RuntimeError"):
        assert text in human.stdout
    assert "resolved" in cli("incident", "show", str(server)).stdout

    acked = cli.json("incident", "ack", str(app))
    assert acked["acked_by"] == "admin" and acked["acked_at"]
    again = cli("incident", "ack", f"#{app}")
    assert again.exit_code == 0 and f"Incident #{app} acknowledged by admin" in again.stdout
    assert cli.json("incident", "show", str(app))["acked_at"] == acked["acked_at"]


def test_exit_codes(cli: Cli, project: dict) -> None:
    missing = cli.json("incident", "show", "999999", expect=3)["error"]
    assert missing["status"] == 404 and "no incident 999999" in missing["detail"]
    assert cli("incident", "ack", "999999").exit_code == 3
    not_a_number = cli.json("incident", "show", "abc", expect=2)["error"]
    assert "not an incident number" in not_a_number["message"]
    bad_kind = cli.json("incident", "list", "--kind", "flood", expect=2)["error"]
    assert bad_kind["status"] == 422 and "kind" in bad_kind["detail"]
    assert cli.json("incident", "list", "--project", unique("nowhere"), expect=3)["error"]
    empty = cli("incident", "list", "--open", "--project", project["name"])
    assert empty.exit_code == 0 and "No open incidents." in empty.stdout


def test_a_user_sees_the_incidents_of_their_projects_only(cli: Cli, api: Api) -> None:
    admin = {"Authorization": f"Bearer {api.settings().read_api_key()}"}
    with httpx.Client(base_url=api.url, headers=admin) as http:
        user = http.post("/users", json={"name": unique("dev")}).json()
        key = http.post("/api-keys", json={"name": "k", "user_id": user["id"]}).json()["key"]
    mine = cli.json("project", "create", "--name", unique("mine"), ORCHESTRATOR_API_KEY=key)
    own = fail(api, IncidentKind.deploy_failed, f"app:{mine['name']}", mine["id"])
    server = fail(api, IncidentKind.disk_low, unique("server:db"))

    assert [i["id"] for i in cli.json("incident", "list", ORCHESTRATOR_API_KEY=key)] == [own]
    hidden = cli.json("incident", "show", str(server), expect=3, ORCHESTRATOR_API_KEY=key)
    assert hidden["error"]["status"] == 404
    assert cli("incident", "ack", str(server), ORCHESTRATOR_API_KEY=key).exit_code == 3
    acked = cli.json("incident", "ack", str(own), ORCHESTRATOR_API_KEY=key)
    assert acked["acked_by"] == user["name"]
    assert server in [i["id"] for i in cli.json("incident", "list")]  # the admin's list
