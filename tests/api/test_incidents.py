"""Incidents through the API, opened and resolved by checks as the scheduled jobs record them:
newest first, filtered by open, project and kind; acknowledged once, by name; a non-admin sees
only the incidents of the projects they own."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from core.enums import IncidentKind
from db.engine import Database
from db.incidents import Check, record_check
from db.users import BOOTSTRAP_USER
from tests.api.conftest import MakeClient

PROBLEM_JSON = "application/problem+json"


async def check(
    database: Database,
    kind: IncidentKind,
    subject: str,
    *,
    ok: bool = False,
    project_id: str | None = None,
    tick: str = "t1",
) -> int:
    """One check's outcome, counted as the scheduled job counts it (threshold 1: a failure
    opens); the incident it opened or resolved."""
    outcome = Check(
        kind=kind,
        subject=subject,
        ok=ok,
        title=f"{subject} is down",
        evidence={"error": "connection refused"},
        server_id="srv1" if subject.startswith("server:") else None,
        project_id=project_id,
    )
    async with database.session() as session:
        recorded = await record_check(session, outcome, tick=tick, threshold=1, chats=[])
    incident = recorded.opened or recorded.resolved
    assert incident is not None, recorded
    return incident


async def ids(client: httpx.AsyncClient, **params: Any) -> list[int]:
    response = await client.get("/incidents", params=params)
    assert response.status_code == 200, response.text
    return [incident["id"] for incident in response.json()]


async def test_admin_lists_filters_and_reads_incidents(
    admin: httpx.AsyncClient, database: Database, project: dict[str, Any]
) -> None:
    server = await check(database, IncidentKind.server_unreachable, "server:web-1")
    app = await check(database, IncidentKind.app_down, "app:shop", project_id=project["id"])
    disk = await check(database, IncidentKind.disk_low, "server:web-2")
    assert await check(database, IncidentKind.disk_low, "server:web-2", ok=True, tick="t2") == disk

    assert await ids(admin) == [disk, app, server]  # newest first
    assert await ids(admin, open="true") == [app, server]
    assert await ids(admin, open="false") == [disk, app, server]
    assert await ids(admin, kind="app_down") == [app]
    assert await ids(admin, project="shop") == [app]
    assert await ids(admin, project=project["id"], open="true") == [app]
    assert await ids(admin, limit=2) == [disk, app]

    shown = (await admin.get(f"/incidents/{app}")).json()
    assert shown["id"] == app and shown["kind"] == "app_down" and shown["subject"] == "app:shop"
    assert shown["project_id"] == project["id"] and shown["server_id"] is None
    assert shown["title"] == "app:shop is down" and shown["open"] is True
    assert shown["evidence"] == {"error": "connection refused", "failed_checks": 1}
    assert shown["opened_at"].endswith(("Z", "+00:00")) and shown["resolved_at"] is None
    assert shown["acked_at"] is None and shown["acked_by"] is None

    resolved = (await admin.get(f"/incidents/{disk}")).json()
    assert resolved["open"] is False and resolved["resolved_at"] >= resolved["opened_at"]


async def test_the_first_acknowledgement_is_kept(
    admin: httpx.AsyncClient, make_client: MakeClient, user_key: str, database: Database
) -> None:
    owner = await make_client(user_key)
    mine = (await owner.post("/projects", json={"name": "notes"})).json()
    incident = await check(database, IncidentKind.app_down, "app:notes", project_id=mine["id"])

    acked = await admin.post(f"/incidents/{incident}/ack")
    assert acked.status_code == 200, acked.text
    first = acked.json()
    assert first["acked_by"] == BOOTSTRAP_USER and first["acked_at"] and first["open"] is True

    again = await owner.post(f"/incidents/{incident}/ack")
    assert again.status_code == 200, again.text
    assert again.json()["acked_by"] == BOOTSTRAP_USER
    assert again.json()["acked_at"] == first["acked_at"]
    assert (await owner.get(f"/incidents/{incident}")).json() == first


async def test_a_user_sees_only_the_incidents_of_their_projects(
    admin: httpx.AsyncClient,
    make_client: MakeClient,
    user_key: str,
    database: Database,
    project: dict[str, Any],
) -> None:
    owner = await make_client(user_key)
    mine = (await owner.post("/projects", json={"name": "notes"})).json()
    theirs = await check(database, IncidentKind.app_down, "app:shop", project_id=project["id"])
    server = await check(database, IncidentKind.server_unreachable, "server:web-1")
    own = await check(database, IncidentKind.deploy_failed, "app:notes", project_id=mine["id"])

    assert await ids(owner) == [own]
    assert await ids(owner, project="notes", kind="deploy_failed") == [own]
    assert await ids(owner, project="shop") == []  # the project is there; its incidents are not
    assert await ids(admin) == [own, server, theirs]

    for hidden in (theirs, server):
        for response in (
            await owner.get(f"/incidents/{hidden}"),
            await owner.post(f"/incidents/{hidden}/ack"),
        ):
            assert response.status_code == 404, response.text
            assert response.headers["content-type"] == PROBLEM_JSON
            assert response.json()["detail"] == f"no incident {hidden}"
    assert (await admin.get(f"/incidents/{theirs}")).json()["acked_at"] is None

    acked = await owner.post(f"/incidents/{own}/ack")
    assert acked.status_code == 200 and acked.json()["acked_by"] == "dev"


@pytest.mark.parametrize(
    ("path", "status", "where"),
    [
        ("/incidents/999999", 404, None),
        ("/incidents/999999/ack", 404, None),
        ("/incidents?project=nowhere", 404, None),
        ("/incidents/abc", 422, ["path", "incident_id"]),
        ("/incidents/0", 422, ["path", "incident_id"]),
        ("/incidents/2147483648", 422, ["path", "incident_id"]),
        ("/incidents?kind=flood", 422, ["query", "kind"]),
        ("/incidents?open=perhaps", 422, ["query", "open"]),
        ("/incidents?limit=0", 422, ["query", "limit"]),
        ("/incidents?limit=501", 422, ["query", "limit"]),
    ],
)
async def test_unknown_incidents_and_bad_queries_are_problems(
    admin: httpx.AsyncClient, path: str, status: int, where: list[str] | None
) -> None:
    method = "POST" if path.endswith("/ack") else "GET"
    response = await admin.request(method, path)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    problem = response.json()
    assert problem["status"] == status and problem["detail"]
    if where is not None:
        assert [issue["loc"] for issue in problem["errors"]] == [where]


async def test_incidents_need_a_key(make_client: MakeClient) -> None:
    anonymous = await make_client()
    assert (await anonymous.get("/incidents")).status_code == 401
