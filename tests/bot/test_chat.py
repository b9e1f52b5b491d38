"""A person's messages: to the PO session through the real API (on Temporal, with probes playing
the PO session and an engineering task), or to the task whose question they answer."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from redis.asyncio import Redis
from temporalio import workflow
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from api.app import create_app
from bot.app import make_bot
from bot.chat import ChatOptions, Typing, sent_key
from core.contracts.chat import CHATS_KEY, ChatReply, encode_chat_entry
from core.contracts.events import TASK_RESPOND, HumanAnswer
from core.contracts.workflows import ENGINEERING_WORKFLOW
from core.ids import chat_stream, po_session_workflow_id
from core.settings import Settings
from db.engine import Database
from testing.standins.telegram_api import Call, TelegramStandIn, person
from testing.waiting import eventually
from tests.api.conftest import auth, live_server, runtime_of
from tests.api.test_chats import SessionProbe
from tests.bot.conftest import ADMIN, RunningBot, bot_running
from tests.bot.test_bot import create_project, reply


@workflow.defn(name=ENGINEERING_WORKFLOW)
class TaskProbe:
    """Plays an engineering task waiting for its answer: takes the ``respond`` update."""

    def __init__(self) -> None:
        self.answers: list[str] = []

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.update(name=TASK_RESPOND)
    async def respond(self, answer: HumanAnswer) -> str:
        self.answers.append(answer.answer)
        return "taken"

    @workflow.query
    def taken(self) -> list[str]:
        return self.answers


@dataclass
class ChatApi:
    app: FastAPI
    url: str
    queue: str
    kim: dict[str, Any]  # an admin of the API (ORCHESTRATOR_TELEGRAM_ADMINS) and of the bot
    stranger: dict[str, Any]  # an admin only the bot's configuration names


def new_person(name: str) -> dict[str, Any]:
    return person(10**6 + uuid.uuid4().int % 10**9, name)


@pytest_asyncio.fixture
async def chat_api(
    sqlite_database: Database, redis: Redis, temporal_client: Client, tmp_path: Path
) -> AsyncIterator[ChatApi]:
    queue = f"bot-chat-{uuid.uuid4().hex}"
    kim, stranger = new_person("Kim"), new_person("Sam")
    settings = Settings(home=tmp_path, temporal_task_queue=queue, telegram_admins=[kim["id"]])
    app = create_app(settings, database=sqlite_database, redis=redis, temporal=temporal_client)
    async with (
        Worker(
            temporal_client,
            task_queue=queue,
            workflows=[SessionProbe, TaskProbe],
            workflow_runner=UnsandboxedWorkflowRunner(),
        ),
        app.router.lifespan_context(app),
        live_server(app) as url,
    ):
        try:
            yield ChatApi(app, url, queue, kim, stranger)
        finally:
            for chat_id in (kim["id"], stranger["id"]):
                with contextlib.suppress(RPCError):
                    await temporal_client.get_workflow_handle(
                        po_session_workflow_id(chat_id)
                    ).terminate()


@pytest.fixture
def chat_settings(bot_settings: Settings, chat_api: ChatApi) -> Settings:
    admins = [chat_api.kim["id"], chat_api.stranger["id"]]
    return bot_settings.model_copy(update={"api_url": chat_api.url, "telegram_admins": admins})


async def session_got(client: Client, chat_id: int) -> list[dict[str, Any]]:
    """The messages the chat's PO session (the probe) received."""
    try:
        seen = await client.get_workflow_handle(po_session_workflow_id(chat_id)).query("seen")
    except RPCError:
        return []
    return list(seen["messages"])


def replies_to(telegram: TelegramStandIn, chat_id: int) -> list[Call]:
    return [c for c in telegram.calls_of("sendMessage") if c.chat_id() == chat_id]


async def test_a_message_goes_to_the_po_session_and_typing_shows_until_its_reply(
    telegram: TelegramStandIn,
    chat_settings: Settings,
    chat_api: ChatApi,
    temporal_client: Client,
    redis: Redis,
) -> None:
    kim = chat_api.kim
    async with bot_running(chat_settings) as bot:
        said = telegram.send_text(kim, "make me a *todo* API")
        message_id = said["message"]["message_id"]

        async def delivered() -> list[dict[str, Any]]:
            return await session_got(temporal_client, kim["id"])

        got = await eventually(delivered, "the message in the PO session", within=20)
        assert [(m["message_id"], m["text"]) for m in got] == [(message_id, "make me a *todo* API")]
        assert await redis.sismember(CHATS_KEY, str(kim["id"]))  # type: ignore[misc]

        async def typing() -> bool:
            shown = [c for c in telegram.calls_of("sendChatAction") if c.chat_id() == kim["id"]]
            return len(shown) >= 2 and all(c.params["action"] == "typing" for c in shown)

        await eventually(typing, "typing… shown while the PO works", within=10)

        # The session answers on the chat's stream, as the real one does.
        answer = ChatReply(chat_id=kim["id"], message_id=message_id, text="Sure: **todo**")
        await redis.xadd(chat_stream(kim["id"]), encode_chat_entry(answer))  # type: ignore[arg-type]
        sent = await reply(telegram, "sendMessage", kim["id"])
        assert sent.params["text"] == "Sure: <b>todo</b>"
        assert sent.params["reply_parameters"]["message_id"] == message_id
        assert bot.api_calls.count(f"POST /chats/{kim['id']}/messages") == 1


async def test_the_api_refusing_a_person_is_said_at_once(
    telegram: TelegramStandIn, chat_settings: Settings, chat_api: ChatApi, temporal_client: Client
) -> None:
    # Sam is an admin in the bot's configuration only: the bot lets him in, the API does not.
    sam = chat_api.stranger
    async with bot_running(chat_settings) as bot:
        telegram.send_text(sam, "hello")
        refused = await reply(telegram, "sendMessage", sam["id"])
        assert refused.params["text"] == (
            f"Your message could not be delivered: Telegram user {sam['id']} is not a user of "
            "this orchestrator; an admin can add them with POST /users"
        )
        assert bot.api_calls == [f"POST /chats/{sam['id']}/messages"]  # once: not retried
    assert await session_got(temporal_client, sam["id"]) == []


async def test_an_unreachable_api_is_retried_then_the_person_is_told(
    telegram: TelegramStandIn, running_bot: RunningBot
) -> None:
    running_bot.api.http.base_url = httpx.URL("http://127.0.0.1:9")
    running_bot.api.base_url = "http://127.0.0.1:9"
    telegram.send_text(ADMIN, "are you there?")
    told = await reply(telegram, "sendMessage", ADMIN["id"])
    assert told.params["text"] == (
        "Your message could not be delivered: "
        "The orchestrator API at http://127.0.0.1:9 is unreachable."
    )
    attempts = running_bot.api_calls.count(f"POST /chats/{ADMIN['id']}/messages")
    assert attempts >= 3, running_bot.api_calls  # retried for QUICK_CHAT.deliver_within_s
    assert telegram.calls_of("sendChatAction") == []


async def test_a_message_in_flight_when_the_bot_stops_comes_again(
    telegram: TelegramStandIn, chat_settings: Settings, chat_api: ChatApi, temporal_client: Client
) -> None:
    kim = chat_api.kim
    patient = ChatOptions(deliver_within_s=60, typing_interval_s=0.2, typing_timeout_s=30)
    async with bot_running(chat_settings, options=patient) as first:
        first.api.http.base_url = httpx.URL("http://127.0.0.1:9")  # the API is away
        said = telegram.send_text(kim, "do not lose me")

        async def trying() -> bool:
            return f"POST /chats/{kim['id']}/messages" in first.api_calls

        await eventually(trying, "the bot trying to pass the message on", within=10)
        await first.stopped()  # mid-retry, as SIGTERM (or a crash) would
    # Not confirmed to Telegram: the handler never finished.
    assert telegram.pending() == 1

    async with bot_running(chat_settings):

        async def delivered() -> list[dict[str, Any]]:
            return await session_got(temporal_client, kim["id"])

        got = await eventually(delivered, "the message in the PO session", within=20)
        assert [m["message_id"] for m in got] == [said["message"]["message_id"]]
    assert [c for c in telegram.calls_of("sendMessage") if c.chat_id() == kim["id"]] == []


async def test_a_reply_to_a_question_answers_the_task(
    telegram: TelegramStandIn,
    chat_settings: Settings,
    chat_api: ChatApi,
    temporal_client: Client,
    redis: Redis,
    admin_key: str,
) -> None:
    kim = chat_api.kim
    async with httpx.AsyncClient(base_url=chat_api.url, headers=auth(admin_key)) as admin:
        project = await create_project(admin, "shop", "")
        created = await admin.post(
            "/tasks",
            json={
                "project_id": project["id"],
                "spec": "add a cart",
                "callback_stream": chat_stream(kim["id"]),
            },
        )
        assert created.status_code == 201, created.text
    task = created.json()
    short = task["id"][:8]
    probe = await temporal_client.start_workflow(
        TaskProbe.run, id=task["workflow_id"], task_queue=chat_api.queue
    )
    tasks = runtime_of(chat_api.app).tasks
    await redis.sadd(CHATS_KEY, str(kim["id"]))  # type: ignore[misc]
    try:
        async with bot_running(chat_settings) as bot:
            await tasks.start(task["id"])
            await tasks.wait_for_human(task["id"], "Which currency?", stage="developer")
            question = await reply(telegram, "sendMessage", kim["id"], seen=1)
            assert "asks:\n\nWhich currency?" in question.params["text"]

            answer = telegram.send_text(kim, "EUR", reply_to=question)
            confirmed = await reply(telegram, "sendMessage", kim["id"], seen=2)
            assert confirmed.params["text"] == f"Sent your answer to task <code>{short}</code>."
            assert (
                confirmed.params["reply_parameters"]["message_id"]
                == (answer["message"]["message_id"])
            )
            assert await probe.query(TaskProbe.taken) == ["EUR"]

            # Answered already (the task runs again): the API's refusal is passed on.
            await tasks.answered(task["id"], "Which currency?", stage="developer")
            telegram.send_text(kim, "USD", reply_to=question)
            refused = await reply(telegram, "sendMessage", kim["id"], seen=3)
            assert refused.params["text"] == (
                f"Your answer did not reach task <code>{short}</code>: "
                f"task {task['id']} is not waiting for an answer (status RUNNING)"
            )
            respond = f"POST /tasks/{task['id']}/respond"
            assert bot.api_calls == [respond, respond]  # none went to the PO session
        assert await probe.query(TaskProbe.taken) == ["EUR"]
    finally:
        await probe.terminate()


async def test_commands_the_bot_does_not_know_and_non_text_stay_out_of_the_chat(
    telegram: TelegramStandIn, running_bot: RunningBot
) -> None:
    telegram.send_text(ADMIN, "/deploy everything")
    told = await reply(telegram, "sendMessage", ADMIN["id"])
    assert told.params["text"].startswith("I do not know that command.")
    chat = {"id": ADMIN["id"], "type": "private", "first_name": ADMIN["first_name"]}
    location = {"latitude": 52.5, "longitude": 13.4}
    telegram.push({"message": {"message_id": 99, "date": 0, "chat": chat, "from": ADMIN,
                               "location": location}})  # fmt: skip
    told = await reply(telegram, "sendMessage", ADMIN["id"], seen=1)
    assert told.params["text"] == "I can only read text messages."
    assert running_bot.api_calls == []


async def test_typing_lasts_until_the_reply_was_sent_or_the_bound(
    telegram: TelegramStandIn, bot_settings: Settings, redis: Redis
) -> None:
    bot = make_bot(bot_settings)
    typing = Typing(bot, redis, interval=0.05, timeout=30)
    try:

        def shown(chat_id: int) -> int:
            return len([c for c in telegram.calls_of("sendChatAction") if c.chat_id() == chat_id])

        typing.start(77, 1)
        typing.start(77, 2)

        async def repeated() -> bool:
            return shown(77) >= 3

        await eventually(repeated, "typing… repeated", within=10)
        typing.done(77, 1)  # the reply to message 1 was sent: message 2 still waits
        assert typing.waiting(77) == {2} and typing.active(77)
        await redis.set(sent_key(77, "reply:2"), "1")  # its reply went out (another process)

        async def stopped() -> bool:
            return not typing.active(77)

        await eventually(stopped, "typing… to end", within=10)
        count = shown(77)

        bounded = Typing(bot, redis, interval=0.05, timeout=0.3)
        bounded.start(78, 1)

        async def ended() -> bool:
            return not bounded.active(78)

        await eventually(ended, "typing… to end at its bound", within=10)
        assert shown(78) >= 2
        assert shown(77) == count
    finally:
        await typing.close()
        await bot.session.close()
