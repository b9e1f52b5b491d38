"""/chats: user messages into a chat's PO session, Workers' responses to it, session keys.

A small probe workflow registered under the PO session's name plays the session: it takes the
same ``send_message`` and ``respond`` updates and keeps what it got, so these tests see exactly
what the API delivered. The real session, end to end, is tests/e2e/chat.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest_asyncio
from fastapi import FastAPI
from redis.asyncio import Redis
from temporalio import workflow
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from api.app import create_app
from core.contracts.chat import CHATS_KEY
from core.contracts.workflows import (
    PO_RESPOND,
    PO_SEND,
    PO_SESSION_WORKFLOW,
    POMessage,
    POResponse,
    POSessionInput,
)
from core.ids import chat_stream, po_session_workflow_id
from core.settings import Settings
from db.engine import Database
from db.users import issue_session_key
from tests.api.conftest import auth
from tests.api.test_tasks import create_task

ADMIN_TELEGRAM_ID = 4242


@workflow.defn(name=PO_SESSION_WORKFLOW)
class SessionProbe:
    def __init__(self) -> None:
        self.started_with: POSessionInput | None = None
        self.messages: list[POMessage] = []
        self.responses: list[POResponse] = []

    @workflow.run
    async def run(self, session: POSessionInput) -> None:
        self.started_with = session
        await workflow.wait_condition(lambda: False)

    @workflow.update(name=PO_SEND)
    async def send_message(self, message: POMessage) -> str:
        self.messages.append(message)
        return f"got {message.message_id}"

    @workflow.update(name=PO_RESPOND)
    async def respond(self, response: POResponse) -> None:
        self.responses.append(response)

    @workflow.query
    def seen(self) -> dict[str, object]:
        return {
            "user_id": self.started_with.user_id if self.started_with else None,
            "messages": [m.model_dump() for m in self.messages],
            "responses": [r.model_dump() for r in self.responses],
        }


@pytest_asyncio.fixture
async def queue(temporal_client: Client) -> AsyncIterator[str]:
    name = f"chats-{uuid.uuid4().hex}"
    async with Worker(
        temporal_client,
        task_queue=name,
        workflows=[SessionProbe],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        yield name


@pytest_asyncio.fixture
async def chat_app(
    database: Database, redis: Redis, temporal_client: Client, tmp_path: Path, queue: str
) -> AsyncIterator[FastAPI]:
    settings = Settings(
        home=tmp_path, temporal_task_queue=queue, telegram_admins=[ADMIN_TELEGRAM_ID]
    )
    application = create_app(settings, database=database, redis=redis, temporal=temporal_client)
    async with application.router.lifespan_context(application):
        yield application


@pytest_asyncio.fixture
async def bot(chat_app: FastAPI, admin_key: str) -> AsyncIterator[httpx.AsyncClient]:
    """The bot's client: the admin key."""
    async with client_of(chat_app, admin_key) as client:
        yield client


def client_of(app: FastAPI, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://api", headers=auth(key)
    )


def new_chat() -> int:
    return uuid.uuid4().int % 10**12


async def seen(client: Client, chat_id: int) -> dict[str, object]:
    handle = client.get_workflow_handle(po_session_workflow_id(chat_id))
    result: dict[str, object] = await handle.query("seen")
    return result


async def terminate(client: Client, chat_id: int) -> None:
    await client.get_workflow_handle(po_session_workflow_id(chat_id)).terminate()


async def test_a_message_starts_the_session_and_is_delivered_once(
    bot: httpx.AsyncClient, temporal_client: Client, redis: Redis
) -> None:
    chat_id = new_chat()
    body = {"message_id": 7, "text": "make me a todo API", "telegram_user_id": ADMIN_TELEGRAM_ID}
    first = await bot.post(f"/chats/{chat_id}/messages", json=body)
    assert first.status_code == 202, first.text
    assert first.json()["workflow_id"] == f"po-{chat_id}"
    again = await bot.post(f"/chats/{chat_id}/messages", json=body)  # the bot, after a crash
    assert again.status_code == 202, again.text
    try:
        got = await seen(temporal_client, chat_id)
        messages = got["messages"]
        assert isinstance(messages, list) and len(messages) == 1
        assert messages[0]["text"] == "make me a todo API"
        # The configured admin became a user on the first message; the session acts as them.
        me = await bot.get("/users", params={"telegram_id": ADMIN_TELEGRAM_ID})
        assert got["user_id"] == me.json()[0]["id"]
        assert str(chat_id).encode() in await redis.smembers(CHATS_KEY)  # type: ignore[misc]
    finally:
        await terminate(temporal_client, chat_id)


async def test_unknown_telegram_user_is_refused_and_no_session_starts(
    bot: httpx.AsyncClient, temporal_client: Client
) -> None:
    chat_id = new_chat()
    body = {"message_id": 1, "text": "hello", "telegram_user_id": 999}
    response = await bot.post(f"/chats/{chat_id}/messages", json=body)
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "999" in response.json()["detail"]
    sessions = [w async for w in temporal_client.list_workflows(f"WorkflowId = 'po-{chat_id}'")]
    assert sessions == []


async def test_a_user_may_not_post_for_someone_else(
    bot: httpx.AsyncClient, chat_app: FastAPI
) -> None:
    created = await bot.post("/users", json={"name": "ann", "telegram_id": 5151})
    key = await bot.post("/api-keys", json={"name": "ann", "user_id": created.json()["id"]})
    async with client_of(chat_app, key.json()["key"]) as ann:
        body = {"message_id": 1, "text": "hi", "telegram_user_id": ADMIN_TELEGRAM_ID}
        response = await ann.post(f"/chats/{new_chat()}/messages", json=body)
    assert response.status_code == 403


async def test_a_session_key_acts_in_its_own_chat_only(
    bot: httpx.AsyncClient, chat_app: FastAPI, database: Database, temporal_client: Client
) -> None:
    chat_id = new_chat()
    await bot.post(
        f"/chats/{chat_id}/messages",
        json={"message_id": 1, "text": "hi", "telegram_user_id": ADMIN_TELEGRAM_ID},
    )
    me = (await bot.get("/users", params={"telegram_id": ADMIN_TELEGRAM_ID})).json()[0]
    async with database.session() as session:
        key = await issue_session_key(session, user_id=me["id"], chat_id=chat_id)
    try:
        async with client_of(chat_app, key) as po:
            # Tasks it starts report to its chat.
            project = (await po.post("/projects", json={"name": f"p{chat_id}"})).json()
            task = await create_task(po, project)
            assert task["callback_stream"] == chat_stream(chat_id)
            # orchestrator respond reaches its session...
            said = await po.post(
                f"/chats/{chat_id}/responses", json={"text": "working on it", "source": "po"}
            )
            assert said.status_code == 202, said.text
            # ...and no other chat's.
            other = await po.post(f"/chats/{chat_id + 1}/responses", json={"text": "x"})
            assert other.status_code == 403
            # It cannot make keys or users: what it may do ends with its session.
            assert (await po.post("/api-keys", json={"name": "more"})).status_code == 403
            assert (await po.post("/users", json={"name": "eve"})).status_code == 403
        responses = (await seen(temporal_client, chat_id))["responses"]
        assert isinstance(responses, list)
        assert [(r["text"], r["source"]) for r in responses] == [("working on it", "po")]
    finally:
        await terminate(temporal_client, chat_id)


async def test_a_new_session_key_revokes_the_chats_older_one(
    bot: httpx.AsyncClient, chat_app: FastAPI, database: Database
) -> None:
    me = (await bot.get("/users/me")).json()
    chat_id = new_chat()
    async with database.session() as session:
        old = await issue_session_key(session, user_id=me["id"], chat_id=chat_id)
        new = await issue_session_key(session, user_id=me["id"], chat_id=chat_id)
    async with client_of(chat_app, old) as stale, client_of(chat_app, new) as fresh:
        assert (await stale.get("/users/me")).status_code == 401
        assert (await fresh.get("/users/me")).status_code == 200


async def test_responding_to_a_chat_without_a_session_is_a_conflict(
    bot: httpx.AsyncClient,
) -> None:
    response = await bot.post(f"/chats/{new_chat()}/responses", json={"text": "anyone?"})
    assert response.status_code == 409
    assert "no PO session" in response.json()["detail"]
