"""POST /tasks/{id}/respond: a person's answer reaches the task's workflow as a Temporal update.

A small stand-in workflow of its own name plays the engineering workflow's part: it has the same
``respond`` update (refused when no question is pending) and a query to see what it received.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest_asyncio
from fastapi import FastAPI
from temporalio import workflow
from temporalio.client import Client, WorkflowHandle

from core.contracts.events import TASK_RESPOND, HumanAnswer
from tests.api.conftest import probe_worker, runtime_of
from tests.api.test_tasks import create_task

PROBE = "RespondProbe"


@workflow.defn(name=PROBE)
class RespondProbe:
    """Waits with a question (or none) until it is terminated; keeps the answers it took."""

    def __init__(self) -> None:
        self.question: str | None = None
        self.answers: list[HumanAnswer] = []

    @workflow.run
    async def run(self, question: str | None) -> None:
        self.question = question
        await workflow.wait_condition(lambda: False)

    @workflow.update(name=TASK_RESPOND)
    async def respond(self, answer: HumanAnswer) -> str:
        asked, self.question = self.question or "", None
        self.answers.append(answer)
        return asked

    @respond.validator
    def check(self, answer: HumanAnswer) -> None:
        if self.question is None:
            raise ValueError("no question is pending")

    @workflow.query
    def received(self) -> list[HumanAnswer]:
        return self.answers


@pytest_asyncio.fixture
async def probe_queue(temporal_client: Client) -> AsyncIterator[str]:
    async with probe_worker(temporal_client, RespondProbe, "respond-probe") as queue:
        yield queue


async def waiting_task(
    app: FastAPI, admin: httpx.AsyncClient, project: dict[str, Any], question: str
) -> dict[str, Any]:
    task = await create_task(admin, project)
    tasks = runtime_of(app).tasks
    await tasks.start(task["id"])
    assert await tasks.wait_for_human(task["id"], question, stage="develop")
    return task


async def start_probe(
    client: Client, task: dict[str, Any], queue: str, question: str | None
) -> WorkflowHandle[Any, Any]:
    return await client.start_workflow(PROBE, question, id=task["workflow_id"], task_queue=queue)


async def test_the_answer_reaches_the_workflow(
    app: FastAPI,
    admin: httpx.AsyncClient,
    project: dict[str, Any],
    temporal_client: Client,
    probe_queue: str,
) -> None:
    task = await waiting_task(app, admin, project, "Which database?")
    handle = await start_probe(temporal_client, task, probe_queue, "Which database?")
    try:
        response = await admin.post(f"/tasks/{task['id']}/respond", json={"answer": "PostgreSQL"})
        assert response.status_code == 200, response.text
        assert response.json()["id"] == task["id"]
        received = await handle.query("received", result_type=list[HumanAnswer])
        me = (await admin.get("/users/me")).json()
        assert received == [HumanAnswer(answer="PostgreSQL", user_id=me["id"])]
        # The probe has no question any more: a second answer is refused by its validator.
        again = await admin.post(f"/tasks/{task['id']}/respond", json={"answer": "MySQL"})
        assert again.status_code == 409, again.text
        assert "no question is pending" in again.json()["detail"]
        assert len(await handle.query("received", result_type=list[HumanAnswer])) == 1
    finally:
        await handle.terminate("test over")


async def test_a_refused_update_is_409(
    app: FastAPI,
    admin: httpx.AsyncClient,
    project: dict[str, Any],
    temporal_client: Client,
    probe_queue: str,
) -> None:
    task = await waiting_task(app, admin, project, "Which port?")
    handle = await start_probe(temporal_client, task, probe_queue, None)
    try:
        response = await admin.post(f"/tasks/{task['id']}/respond", json={"answer": "8080"})
        assert response.status_code == 409, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert "no question is pending" in response.json()["detail"]
        assert await handle.query("received", result_type=list[HumanAnswer]) == []
    finally:
        await handle.terminate("test over")


async def test_a_run_that_is_gone_is_409(
    app: FastAPI,
    admin: httpx.AsyncClient,
    project: dict[str, Any],
    temporal_client: Client,
    probe_queue: str,
) -> None:
    never = await waiting_task(app, admin, project, "Anyone there?")
    response = await admin.post(f"/tasks/{never['id']}/respond", json={"answer": "yes"})
    assert response.status_code == 409, response.text
    assert "is not running" in response.json()["detail"]

    ended = await waiting_task(app, admin, project, "Still there?")
    handle = await start_probe(temporal_client, ended, probe_queue, "Still there?")
    await handle.terminate("by an operator")
    response = await admin.post(f"/tasks/{ended['id']}/respond", json={"answer": "yes"})
    assert response.status_code == 409, response.text
    assert "is not running" in response.json()["detail"]


async def test_only_a_waiting_task_takes_an_answer(
    admin: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    task = await create_task(admin, project)
    response = await admin.post(f"/tasks/{task['id']}/respond", json={"answer": "hi"})
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    detail = response.json()["detail"]
    assert detail == f"task {task['id']} is not waiting for an answer (status QUEUED)"


async def test_unknown_task_and_invalid_answers(
    app: FastAPI, admin: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    missing = await admin.post(f"/tasks/{uuid.uuid4().hex}/respond", json={"answer": "hi"})
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    task = await waiting_task(app, admin, project, "Why?")
    for body in ({"answer": ""}, {}, {"answer": "x", "user_id": "someone-else"}):
        response = await admin.post(f"/tasks/{task['id']}/respond", json=body)
        assert response.status_code == 422, (body, response.text)
    assert (await admin.get(f"/tasks/{task['id']}")).json()["status"] == "WAITING_HUMAN"
