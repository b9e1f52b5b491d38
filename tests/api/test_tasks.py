"""Tasks through the API: the queue message, listing, cancel, retry, stored events."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from temporalio.api.enums.v1 import EventType as HistoryEventType
from temporalio.client import Client

from core.contracts.engineering import ENGINEERING_QUEUE, EngineeringMessage
from core.contracts.workflows import ENGINEERING_WORKFLOW, EngineeringInput
from core.enums import EventType, TaskStatus
from db.engine import Database
from testing.servers import free_port
from tests.api.conftest import api_with_temporal_at, runtime_of


async def create_task(
    admin: httpx.AsyncClient, project: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    body = {"project_id": project["id"], "spec": "add a /ping endpoint", **extra}
    response = await admin.post("/tasks", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_create_puts_the_message_on_the_queue(
    admin: httpx.AsyncClient, project: dict[str, Any], redis: Redis
) -> None:
    task = await create_task(admin, project, action="fix", callback_stream="po:chat-1")
    assert task["workflow_id"] == f"engineering-{task['id']}"
    assert task["status"] == "QUEUED" and task["action"] == "fix" and task["retry_of"] is None
    entries = await redis.xrange(ENGINEERING_QUEUE)
    assert len(entries) == 1
    message = EngineeringMessage.from_fields(entries[0][1])
    assert message.task_id == task["id"] and message.project_id == project["id"]
    assert message.action == "fix" and message.callback_stream == "po:chat-1"
    assert message.user_id == task["user_id"]
    assert message.correlation_id == task["correlation_id"]
    assert (await admin.get(f"/tasks/{task['id']}")).json() == task


async def test_a_client_correlation_id_reaches_the_message(
    admin: httpx.AsyncClient, project: dict[str, Any], redis: Redis
) -> None:
    response = await admin.post(
        "/tasks",
        json={"project_id": project["id"], "spec": "x"},
        headers={"X-Correlation-ID": "chat-42.turn-7"},
    )
    assert response.headers["x-correlation-id"] == "chat-42.turn-7"
    assert response.json()["correlation_id"] == "chat-42.turn-7"
    message = EngineeringMessage.from_fields((await redis.xrange(ENGINEERING_QUEUE))[0][1])
    assert message.correlation_id == "chat-42.turn-7"
    # Anything that is not a plain id is replaced rather than trusted.
    odd = await admin.get("/health", headers={"X-Correlation-ID": "a b\nc"})
    assert odd.headers["x-correlation-id"] != "a b\nc" and len(odd.headers["x-correlation-id"])


async def test_list_filters_newest_first(
    app: FastAPI, admin: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    other = (await admin.post("/projects", json={"name": "other"})).json()
    first = await create_task(admin, project)
    second = await create_task(admin, project)
    third = await create_task(admin, other)
    await runtime_of(app).tasks.finish(second["id"], TaskStatus.failed, message="boom", error="x")

    async def ids(**params: Any) -> list[str]:
        response = await admin.get("/tasks", params=params)
        assert response.status_code == 200, response.text
        return [t["id"] for t in response.json()]

    assert await ids() == [third["id"], second["id"], first["id"]]
    assert await ids(project_id=project["id"]) == [second["id"], first["id"]]
    assert await ids(status="FAILED") == [second["id"]]
    assert await ids(status="QUEUED", project_id=project["id"]) == [first["id"]]
    assert await ids(type="engineering", limit=1) == [third["id"]]
    assert await ids(type="deploy") == []


async def test_cancel_before_the_workflow_exists(
    app: FastAPI, admin: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    task = await create_task(admin, project)
    response = await admin.post(f"/tasks/{task['id']}/cancel")
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "CANCELLED"
    assert response.json()["completed_at"] is not None
    events = (await admin.get(f"/tasks/{task['id']}/events")).json()
    assert [e["type"] for e in events] == ["cancelled"]
    # The workflow, started late by a bridge, finds the task cancelled and does nothing.
    assert await runtime_of(app).tasks.start(task["id"]) is None
    again = await admin.post(f"/tasks/{task['id']}/cancel")
    assert again.status_code == 409 and "CANCELLED" in again.json()["detail"]


async def test_cancel_a_running_workflow(
    admin: httpx.AsyncClient, project: dict[str, Any], temporal_client: Client
) -> None:
    task = await create_task(admin, project)
    handle = await temporal_client.start_workflow(
        ENGINEERING_WORKFLOW,
        EngineeringInput(task_id=task["id"], project_id=project["id"], user_id=task["user_id"]),
        id=task["workflow_id"],
        task_queue=f"nobody-listens-{uuid.uuid4().hex[:8]}",
    )
    try:
        response = await admin.post(f"/tasks/{task['id']}/cancel")
        assert response.status_code == 202, response.text
        # The workflow records CANCELLED itself once it stops; until then the task is as it was.
        assert response.json()["status"] == "QUEUED"
        history = await handle.fetch_history()
        kinds = [event.event_type for event in history.events]
        assert HistoryEventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED in kinds
    finally:
        await handle.terminate("test over")


async def test_cancel_after_the_workflow_was_terminated(
    admin: httpx.AsyncClient, project: dict[str, Any], temporal_client: Client
) -> None:
    task = await create_task(admin, project)
    handle = await temporal_client.start_workflow(
        ENGINEERING_WORKFLOW,
        EngineeringInput(task_id=task["id"], project_id=project["id"], user_id=task["user_id"]),
        id=task["workflow_id"],
        task_queue=f"nobody-listens-{uuid.uuid4().hex[:8]}",
    )
    await handle.terminate("by an operator")
    response = await admin.post(f"/tasks/{task['id']}/cancel")
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "CANCELLED"


async def test_retry(app: FastAPI, admin: httpx.AsyncClient, project: dict[str, Any]) -> None:
    task = await create_task(admin, project, action="create", callback_stream="po:chat-2")
    refused = await admin.post(f"/tasks/{task['id']}/retry")
    assert refused.status_code == 409 and "QUEUED" in refused.json()["detail"]

    await runtime_of(app).tasks.finish(task["id"], TaskStatus.failed, message="no", error="tests")
    response = await admin.post(f"/tasks/{task['id']}/retry")
    assert response.status_code == 201, response.text
    retry = response.json()
    assert retry["retry_of"] == task["id"] and retry["id"] != task["id"]
    assert retry["status"] == "QUEUED" and retry["workflow_id"] == f"engineering-{retry['id']}"
    for field in ("project_id", "spec", "action", "callback_stream", "type", "correlation_id"):
        assert retry[field] == task[field], field
    twice = await admin.post(f"/tasks/{task['id']}/retry")
    assert twice.status_code == 409 and retry["id"] in twice.json()["detail"]
    assert (await admin.post("/tasks/nope/retry")).status_code == 404


async def test_stored_events(
    app: FastAPI, admin: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    task = await create_task(admin, project)
    tasks = runtime_of(app).tasks
    await tasks.start(task["id"])
    await tasks.add_event(task["id"], EventType.progress, "half way", stage="dev", progress=0.5)
    await tasks.add_event(task["id"], EventType.stage_completed, "dev done", data={"files": 3})
    events = (await admin.get(f"/tasks/{task['id']}/events")).json()
    assert [(e["seq"], e["type"]) for e in events] == [
        (1, "started"),
        (2, "progress"),
        (3, "stage_completed"),
    ]
    assert events[1]["stage"] == "dev" and events[1]["progress"] == 0.5
    assert events[1]["status"] == "RUNNING" and events[2]["data"] == {"files": 3}
    later = (await admin.get(f"/tasks/{task['id']}/events", params={"after": 2})).json()
    assert [e["seq"] for e in later] == [3]
    assert (await admin.get("/tasks/nope/events")).status_code == 404


@pytest.mark.parametrize("reachable", [True, False])
async def test_temporal_is_reached_lazily(
    database: Database, redis: Redis, tmp_path: Path, temporal_address: str, reachable: bool
) -> None:
    """The API starts and serves without Temporal; only a cancel needs it, and says so."""
    address = temporal_address if reachable else f"127.0.0.1:{free_port()}"
    async with api_with_temporal_at(database, redis, tmp_path, address) as (app, admin):
        project = (await admin.post("/projects", json={"name": "p"})).json()
        task = await create_task(admin, project)
        response = await admin.post(f"/tasks/{task['id']}/cancel")
        if reachable:
            assert response.status_code == 202 and response.json()["status"] == "CANCELLED"
        else:
            assert response.status_code == 503, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert address in response.json()["detail"]
            assert (await admin.get(f"/tasks/{task['id']}")).json()["status"] == "QUEUED"
            await runtime_of(app).tasks.finish(task["id"], TaskStatus.failed, message="x")
            assert (await admin.post(f"/tasks/{task['id']}/cancel")).status_code == 409


async def test_a_retry_keeps_the_engineering_options(
    app: FastAPI, admin: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    options = {"agent": "scripted", "script": {"steps": []}, "max_rounds": 2, "max_cost_usd": 0.5}
    task = await create_task(admin, project, engineering=options)
    assert task["details"]["engineering"] == options
    await runtime_of(app).tasks.finish(task["id"], TaskStatus.failed, message="no", error="tests")
    retry = (await admin.post(f"/tasks/{task['id']}/retry")).json()
    assert retry["retry_of"] == task["id"]
    assert retry["details"]["engineering"] == options
    plain = await create_task(admin, project)
    await runtime_of(app).tasks.finish(plain["id"], TaskStatus.failed, message="no", error="tests")
    assert "engineering" not in (await admin.post(f"/tasks/{plain['id']}/retry")).json()["details"]
