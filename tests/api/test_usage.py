"""``GET /usage`` on both databases: the projects' model calls per UTC day from the gateway's
ledger, a day past the project's budget marked; a non-admin sees only the projects they own;
an unknown (or another's) project is a 404, a day not written YYYY-MM-DD a 422. A project's
daily budget is set with ``PATCH /projects/{id}``, kept when left out, cleared with null."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx

from core.contracts.base import utcnow
from core.enums import TaskType
from db.engine import Database
from db.tables import ModelUsage, Project, Task
from db.usage import save_call
from tests.api.conftest import MakeClient

PROBLEM_JSON = "application/problem+json"


async def spend(database: Database, project_id: str, *costs: float) -> None:
    """A task of the project whose agent made one call per cost, recorded as the gateway does."""
    async with database.session() as session:
        project = await session.get(Project, project_id)
        assert project is not None
        task = Task(
            type=TaskType.engineering,
            project_id=project_id,
            user_id=project.owner_id,
            workflow_id="w",
        )
        session.add(task)
        await session.commit()
    for cost in costs:
        await save_call(
            database,
            ModelUsage(
                task_id=task.id, provider="openai", tokens_in=10, tokens_out=5, cost_usd=cost
            ),
        )


async def set_budget(database: Database, project_id: str, budget: float) -> None:
    async with database.session() as session:
        project = await session.get(Project, project_id)
        assert project is not None
        project.daily_budget_usd = budget
        session.add(project)
        await session.commit()


async def usage(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await client.get("/usage", params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_usage_per_project_and_day_as_each_user_may_see_it(
    admin: httpx.AsyncClient,
    make_client: MakeClient,
    user_key: str,
    database: Database,
    project: dict[str, Any],
) -> None:
    user = await make_client(user_key)
    mine = (await user.post("/projects", json={"name": "mine"})).json()
    await spend(database, project["id"], 0.25, 0.5)
    await spend(database, mine["id"], 0.125)
    await set_budget(database, project["id"], 0.5)
    today = str(utcnow().date())

    everything = await usage(admin)
    assert everything["until"] == today
    assert [used["project"] for used in everything["projects"]] == ["mine", "shop"]
    assert everything["total"]["calls"] == 3 and everything["total"]["cost_usd"] == 0.875
    shop = everything["projects"][1]
    assert (shop["calls"], shop["tokens_in"], shop["tokens_out"]) == (2, 20, 10)
    assert shop["cost_usd"] == 0.75 and shop["daily_budget_usd"] == 0.5
    [day] = shop["days"]
    assert day["day"] == today and day["cost_usd"] == 0.75 and day["over_budget"] is True
    assert everything["projects"][0]["days"][0]["over_budget"] is False  # no budget

    own = await usage(user)
    assert [used["project"] for used in own["projects"]] == ["mine"]
    assert own["total"]["cost_usd"] == 0.125
    assert (await usage(admin, project="mine"))["total"]["cost_usd"] == 0.125
    later = await usage(admin, since=str(utcnow().date() + timedelta(days=1)))
    assert later["projects"] == [] and later["total"]["calls"] == 0

    for client, name in ((user, "shop"), (admin, "no-such-project")):
        missing = await client.get("/usage", params={"project": name})
        assert missing.status_code == 404 and missing.headers["content-type"] == PROBLEM_JSON


async def test_a_day_not_written_yyyy_mm_dd_is_refused(admin: httpx.AsyncClient) -> None:
    for since in ("yesterday", "2026-02-30", "1700000000", "2026-3-1"):
        refused = await admin.get("/usage", params={"since": since})
        assert refused.status_code == 422, (since, refused.text)
        assert refused.headers["content-type"] == PROBLEM_JSON
        assert refused.json()["errors"][0]["loc"] == ["query", "since"]


async def test_a_daily_budget_is_set_kept_and_cleared(
    admin: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    path = f"/projects/{project['name']}"
    assert project["daily_budget_usd"] is None
    assert (await admin.patch(path, json={"daily_budget_usd": 5})).json()["daily_budget_usd"] == 5
    kept = await admin.patch(path, json={})  # left out: stays
    assert kept.status_code == 200 and kept.json()["daily_budget_usd"] == 5
    for refused in (-1, "5", True):
        answer = await admin.patch(path, json={"daily_budget_usd": refused})
        assert answer.status_code == 422, (refused, answer.text)
    cleared = await admin.patch(path, json={"daily_budget_usd": None})
    assert cleared.json()["daily_budget_usd"] is None
    assert (await admin.get(path)).json()["daily_budget_usd"] is None
