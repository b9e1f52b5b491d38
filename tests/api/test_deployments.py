"""Deploys through the API: deploy tasks and their ``deploy:queue`` message, what a task body may
hold, retries, the deployments a project's releases left, and the secrets that wake a deploy
waiting for them.

A small stand-in workflow (``SecretsProbe``) plays a deploy waiting in WAITING_HUMAN: it only
counts the ``secrets_changed`` signals it gets.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio
from fastapi import FastAPI
from redis.asyncio import Redis
from temporalio import workflow
from temporalio.api.enums.v1 import EventType as HistoryEventType
from temporalio.client import Client, WorkflowHandle

from core.contracts.deploy import DEPLOY_QUEUE, DEPLOY_SECRETS_CHANGED, DeployMessage
from core.contracts.engineering import ENGINEERING_QUEUE
from core.enums import DeploymentStatus, TaskStatus
from db.engine import Database
from db.tables import Deployment
from testing.servers import free_port
from testing.waiting import eventually
from tests.api.conftest import MakeClient, api_with_temporal_at, probe_worker, runtime_of
from tests.api.test_auth import assert_unauthorized, protected_requests

PROBE = "SecretsProbe"


@workflow.defn(name=PROBE)
class SecretsProbe:
    """Waits until it is terminated; counts the ``secrets_changed`` signals it got."""

    def __init__(self) -> None:
        self.signals = 0

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.signal(name=DEPLOY_SECRETS_CHANGED)
    def secrets_changed(self) -> None:
        self.signals += 1

    @workflow.query
    def received(self) -> int:
        return self.signals


@pytest_asyncio.fixture
async def probe_queue(temporal_client: Client) -> AsyncIterator[str]:
    async with probe_worker(temporal_client, SecretsProbe, "secrets-probe") as queue:
        yield queue


async def create_deploy(
    admin: httpx.AsyncClient, project: dict[str, Any], **options: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "deploy", "project_id": project["id"]}
    if options:
        body["deploy"] = options
    response = await admin.post("/tasks", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def queued(redis: Redis) -> dict[str, DeployMessage]:
    """The messages on deploy:queue (no bridge takes them here), by task id."""
    messages = (DeployMessage.from_fields(fields) for _, fields in await redis.xrange(DEPLOY_QUEUE))
    return {message.task_id: message for message in messages}


async def waiting_deploy(
    app: FastAPI, admin: httpx.AsyncClient, project: dict[str, Any]
) -> dict[str, Any]:
    """A deploy task of ``project`` in WAITING_HUMAN, as its SecretResolver leaves it."""
    task = await create_deploy(admin, project)
    tasks = runtime_of(app).tasks
    await tasks.start(task["id"])
    assert await tasks.wait_for_human(task["id"], "Set DATABASE_URL", stage="secrets")
    return task


async def signals_in_history(handle: WorkflowHandle[Any, Any]) -> int:
    history = await handle.fetch_history()
    signaled = HistoryEventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    return sum(
        1
        for event in history.events
        if event.event_type == signaled
        and event.workflow_execution_signaled_event_attributes.signal_name == DEPLOY_SECRETS_CHANGED
    )


# --- deploy tasks ------------------------------------------------------------------------------


async def test_a_deploy_task_goes_to_deploy_queue(
    admin: httpx.AsyncClient, project: dict[str, Any], redis: Redis
) -> None:
    task = await create_deploy(admin, project)
    assert task["type"] == "deploy" and task["status"] == "QUEUED"
    assert task["action"] == "create" and task["spec"] == "Create shop"
    assert task["workflow_id"] == f"deploy-{task['id']}"
    assert task["details"] == {"deploy": {"action": "create"}}
    assert (await admin.get(f"/tasks/{task['id']}")).json() == task

    message = (await queued(redis))[task["id"]]
    assert message.action == "create" and message.project_id == project["id"]
    assert message.user_id == task["user_id"]
    assert message.correlation_id == task["correlation_id"]
    assert await redis.xlen(ENGINEERING_QUEUE) == 0


async def test_each_action_and_ref_reaches_the_task_and_its_message(
    admin: httpx.AsyncClient, project: dict[str, Any], redis: Redis
) -> None:
    expected = {
        ("create", "feature/login"): "Create shop (feature/login)",
        ("redeploy", "3f2a9c1"): "Redeploy shop (3f2a9c1)",
        ("rollback", None): "Rollback shop",
        ("stop", None): "Stop shop",
        ("undeploy", None): "Undeploy shop",
    }
    tasks = {}
    for (action, ref), spec in expected.items():
        options = {"action": action, **({"ref": ref} if ref else {})}
        task = await create_deploy(admin, project, **options)
        assert (task["action"], task["spec"]) == (action, spec)
        assert task["details"] == {"deploy": options}
        tasks[task["id"]] = action
    messages = await queued(redis)
    assert {task_id: messages[task_id].action for task_id in tasks} == tasks


async def test_a_body_that_does_not_fit_its_type_is_422(
    admin: httpx.AsyncClient, project: dict[str, Any], redis: Redis
) -> None:
    deploy = {"type": "deploy", "project_id": project["id"]}
    engineering = {"project_id": project["id"]}
    cases = [
        (engineering, "an engineering task needs a spec"),
        ({**engineering, "spec": "  \n"}, "an engineering task needs a spec"),
        (
            {**engineering, "spec": "add /ping", "deploy": {"action": "create"}},
            "deploy options are for deploy tasks",
        ),
        (
            {**deploy, "engineering": {"agent": "scripted"}},
            "engineering options are for engineering tasks",
        ),
        ({**deploy, "deploy": {"ref": "../x"}}, "deploy.ref: String should match pattern"),
        ({**deploy, "deploy": {"ref": "--upload-pack=x"}}, "deploy.ref: String should match"),
        ({**deploy, "deploy": {"action": "explode"}}, "deploy.action: Input should be 'create'"),
        ({**deploy, "deploy": {"action": "create", "force": True}}, "deploy.force: unknown field"),
    ]
    for body, says in cases:
        response = await admin.post("/tasks", json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert says in response.json()["detail"], (body, response.json()["detail"])
    assert (await admin.get("/tasks")).json() == []
    assert await redis.xlen(DEPLOY_QUEUE) == await redis.xlen(ENGINEERING_QUEUE) == 0


async def test_a_retry_deploys_the_same_thing_again(
    app: FastAPI, admin: httpx.AsyncClient, project: dict[str, Any], redis: Redis
) -> None:
    task = await create_deploy(admin, project, action="redeploy", ref="release/1.2")
    await runtime_of(app).tasks.finish(task["id"], TaskStatus.failed, message="no", error="tests")
    response = await admin.post(f"/tasks/{task['id']}/retry")
    assert response.status_code == 201, response.text
    retry = response.json()
    assert retry["retry_of"] == task["id"] and retry["workflow_id"] == f"deploy-{retry['id']}"
    assert retry["details"] == {"deploy": {"action": "redeploy", "ref": "release/1.2"}}
    for field in ("type", "action", "spec", "project_id"):
        assert retry[field] == task[field], field
    assert (await queued(redis))[retry["id"]].action == "redeploy"


# --- deployments -------------------------------------------------------------------------------


async def add_releases(
    database: Database, project: dict[str, Any], *releases: str, minute: int = 0
) -> list[dict[str, Any]]:
    """Deployment rows of ``project``, made a minute apart from ``minute`` past noon on, in
    this order (as the deploy workflow writes them), as JSON."""
    start = datetime(2026, 1, 1, 12, minute, tzinfo=UTC)
    rows = [
        Deployment(
            project_id=project["id"],
            task_id=uuid.uuid4().hex,
            port=20000,
            release=release,
            commit_sha="c0ffee" * 6,
            status=DeploymentStatus.superseded,
            url="http://127.0.0.1:20000",
            details={"server": "web-1"},
            created_at=start + timedelta(minutes=index),
            updated_at=start + timedelta(minutes=index),
        )
        for index, release in enumerate(releases)
    ]
    async with database.session() as session:
        session.add_all(rows)
        await session.commit()
        return [row.model_dump(mode="json") for row in rows]


async def test_deployments_newest_first_by_project_id_or_name(
    admin: httpx.AsyncClient, project: dict[str, Any], database: Database
) -> None:
    other = (await admin.post("/projects", json={"name": "blog"})).json()
    first, second = await add_releases(database, project, "r1", "r2")
    (elsewhere,) = await add_releases(database, other, "b1", minute=5)

    async def releases(**params: Any) -> list[str]:
        response = await admin.get("/deployments", params=params)
        assert response.status_code == 200, response.text
        return [row["release"] for row in response.json()]

    assert await releases() == ["b1", "r2", "r1"]
    assert await releases(project=project["id"]) == ["r2", "r1"]
    assert await releases(project="shop") == ["r2", "r1"]
    assert await releases(project="blog", limit=5) == ["b1"]
    assert await releases(project="shop", limit=1) == ["r2"]

    shown = await admin.get(f"/deployments/{second['id']}")
    assert shown.status_code == 200
    row = shown.json()
    assert row["id"] == second["id"] and row["project_id"] == project["id"]
    assert (row["release"], row["status"], row["port"]) == ("r2", "SUPERSEDED", 20000)
    assert row["url"] == "http://127.0.0.1:20000" and row["details"] == {"server": "web-1"}
    assert row["commit_sha"] == second["commit_sha"] and row["task_id"] == second["task_id"]
    assert {first["id"], second["id"], elsewhere["id"]} == {
        r["id"] for r in (await admin.get("/deployments")).json()
    }


async def test_unknown_projects_and_deployments_are_404(admin: httpx.AsyncClient) -> None:
    for path, params, says in [
        ("/deployments", {"project": "nope"}, "project 'nope' not found"),
        ("/deployments/0123456789abcdef", {}, "deployment '0123456789abcdef' not found"),
    ]:
        response = await admin.get(path, params=params)
        assert response.status_code == 404, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"] == says


async def test_deployments_need_a_key(app: FastAPI, make_client: MakeClient) -> None:
    # The walk of tests/api/test_auth.py covers these routes too.
    requests = protected_requests(app)
    assert ("GET", "/deployments") in requests
    assert ("GET", "/deployments/0123456789abcdef0123456789abcdef") in requests
    anonymous = await make_client()
    for path in ("/deployments", "/deployments/0123456789abcdef0123456789abcdef"):
        assert_unauthorized(await anonymous.get(path))


# --- secrets wake deploys waiting for them -----------------------------------------------------


async def test_setting_a_secret_signals_the_project_s_waiting_deploys(
    app: FastAPI,
    admin: httpx.AsyncClient,
    project: dict[str, Any],
    temporal_client: Client,
    probe_queue: str,
) -> None:
    other = (await admin.post("/projects", json={"name": "blog"})).json()
    # Waiting, but its workflow is gone (terminated by hand, say): it must not stop the others.
    await waiting_deploy(app, admin, project)
    waiting = await waiting_deploy(app, admin, project)
    not_waiting = await create_deploy(admin, project)
    elsewhere = await waiting_deploy(app, admin, other)
    probes = {
        task["id"]: await temporal_client.start_workflow(
            PROBE, id=task["workflow_id"], task_queue=probe_queue
        )
        for task in (waiting, not_waiting, elsewhere)
    }
    try:
        created = await admin.put("/projects/shop/secrets/DATABASE_URL", json={"value": "x"})
        assert created.status_code == 201, created.text
        probe = probes[waiting["id"]]

        async def received() -> int:
            return await probe.query(SecretsProbe.received)

        assert await eventually(received, "the secrets_changed signal") == 1
        replaced = await admin.put("/projects/shop/secrets/DATABASE_URL", json={"value": "y"})
        assert replaced.status_code == 204, replaced.text

        async def received_twice() -> bool:
            return await received() == 2

        await eventually(received_twice, "the signal of the replaced secret")
        # The signals were sent before the responses: the others' histories are final here.
        assert await signals_in_history(probes[not_waiting["id"]]) == 0
        assert await signals_in_history(probes[elsewhere["id"]]) == 0
    finally:
        for handle in probes.values():
            await handle.terminate("test over")


async def test_a_secret_is_stored_while_temporal_is_unreachable(
    database: Database, redis: Redis, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{free_port()}"
    async with api_with_temporal_at(database, redis, tmp_path, address) as (app, admin):
        project = (await admin.post("/projects", json={"name": "shop"})).json()
        task = await waiting_deploy(app, admin, project)
        response = await admin.put("/projects/shop/secrets/API_TOKEN", json={"value": "t0k"})
        assert response.status_code == 201, response.text
        assert response.json()["name"] == "API_TOKEN"
        listed = (await admin.get("/projects/shop/secrets")).json()
        assert [s["name"] for s in listed] == ["API_TOKEN"]
        assert (await admin.get(f"/tasks/{task['id']}")).json()["status"] == "WAITING_HUMAN"
