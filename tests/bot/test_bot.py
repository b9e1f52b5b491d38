"""The bot against the Telegram Bot API stand-in and the real API: access, commands, buttons."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI

from bot.access import refusal
from bot.app import BACK_TO_PROJECTS, ProjectButton, TaskButton
from core.enums import TaskStatus
from testing.standins.telegram_api import Call, TelegramStandIn, person
from testing.waiting import eventually
from tests.api.conftest import runtime_of
from tests.bot.conftest import ADMIN, RunningBot


async def reply(telegram: TelegramStandIn, method: str, chat_id: int, seen: int = 0) -> Call:
    """The bot's next ``method`` call to ``chat_id`` after the first ``seen`` ones."""

    async def arrived() -> Call | None:
        calls = [c for c in telegram.calls_of(method) if c.chat_id() == chat_id]
        return calls[seen] if len(calls) > seen else None

    found = await eventually(arrived, f"{method} to chat {chat_id} (#{seen + 1})", within=15)
    assert found is not None
    return found


async def answered(telegram: TelegramStandIn, callback_id: str) -> Call:
    async def found() -> Call | None:
        calls = telegram.calls_of("answerCallbackQuery")
        return next((c for c in calls if c.params["callback_query_id"] == callback_id), None)

    answer = await eventually(found, f"the answer to callback {callback_id}", within=15)
    assert answer is not None
    return answer


async def create_project(admin: httpx.AsyncClient, name: str, description: str) -> dict[str, Any]:
    created = await admin.post("/projects", json={"name": name, "description": description})
    assert created.status_code == 201, created.text
    return dict(created.json())


async def create_task(admin: httpx.AsyncClient, project_id: str, spec: str) -> dict[str, Any]:
    created = await admin.post("/tasks", json={"project_id": project_id, "spec": spec})
    assert created.status_code == 201, created.text
    return dict(created.json())


async def test_an_unknown_user_is_refused_with_their_id(
    telegram: TelegramStandIn, running_bot: RunningBot, admin: httpx.AsyncClient
) -> None:
    await create_project(admin, "secret", "nobody may see this")
    stranger = person(4242, "Eve")
    telegram.send_text(stranger, "/projects")
    sent = await reply(telegram, "sendMessage", 4242)
    assert sent.params["text"] == refusal(4242)
    assert "4242" in sent.params["text"] and "reply_markup" not in sent.params

    # A button pressed anyway (an old message, a forged callback) is refused the same way.
    pressed = telegram.press(stranger, sent_with_button(4242), ProjectButton(id="x" * 32).pack())
    alert = await answered(telegram, pressed["callback_query"]["id"])
    assert alert.params["text"] == refusal(4242) and alert.params["show_alert"] == "true"

    # Nothing else happened: one user lookup per update, no projects, no other message.
    assert running_bot.api_calls == ["GET /users?telegram_id=4242"] * 2
    assert len(telegram.calls_of("sendMessage")) == 1
    assert telegram.calls_of("editMessageText") == []


async def test_an_admin_browses_projects_and_their_running_tasks(
    telegram: TelegramStandIn, running_bot: RunningBot, admin: httpx.AsyncClient, api_app: FastAPI
) -> None:
    shop = await create_project(admin, "shop", "A <b>shop</b> & more")
    await create_project(admin, "blog", "")
    running = await create_task(admin, shop["id"], "add a cart")
    queued = await create_task(admin, shop["id"], "add a checkout")
    done = await create_task(admin, shop["id"], "add a logo")
    tasks = runtime_of(api_app).tasks
    await tasks.start(running["id"])
    await tasks.start(done["id"])
    await tasks.finish(done["id"], TaskStatus.completed, message="done")

    telegram.send_text(ADMIN, "/projects")
    listing = await reply(telegram, "sendMessage", ADMIN["id"])
    assert listing.params["parse_mode"] == "HTML"
    labels = {button["text"]: button["callback_data"] for button in listing.buttons()}
    assert labels == {
        "shop · NEW": ProjectButton(id=shop["id"]).pack(),
        "blog · NEW": ProjectButton(id=(await admin.get("/projects/blog")).json()["id"]).pack(),
    }

    pressed = telegram.press(ADMIN, listing, ProjectButton(id=shop["id"]).pack())
    details = await reply(telegram, "editMessageText", ADMIN["id"])
    await answered(telegram, pressed["callback_query"]["id"])
    text = details.params["text"]
    assert details.params["message_id"] == str(listing.result["message_id"])
    assert "<b>shop</b> · NEW" in text
    assert "A &lt;b&gt;shop&lt;/b&gt; &amp; more" in text  # the API's text, escaped
    assert "Running tasks (2)" in text
    assert f"RUNNING · engineering {running['id'][:8]}" in text
    assert f"QUEUED · engineering {queued['id'][:8]}" in text
    assert done["id"][:8] not in text  # finished: not running
    buttons = [button["callback_data"] for button in details.buttons()]
    assert buttons == [
        TaskButton(id=queued["id"]).pack(),
        TaskButton(id=running["id"]).pack(),
        BACK_TO_PROJECTS,
    ]

    telegram.press(ADMIN, details, TaskButton(id=running["id"]).pack())
    task = await reply(telegram, "editMessageText", ADMIN["id"], seen=1)
    assert running["id"] in task.params["text"] and "add a cart" in task.params["text"]
    assert "Status: <b>RUNNING</b>" in task.params["text"]

    telegram.press(ADMIN, task, ProjectButton(id=shop["id"]).pack())
    again = await reply(telegram, "editMessageText", ADMIN["id"], seen=2)
    assert "Running tasks (2)" in again.params["text"]

    telegram.send_text(ADMIN, "/tasks")
    recent = await reply(telegram, "sendMessage", ADMIN["id"], seen=1)
    assert [b["callback_data"] for b in recent.buttons()] == [
        TaskButton(id=task_id).pack() for task_id in (done["id"], queued["id"], running["id"])
    ]
    # Admins come from the configuration: the bot never had to look them up.
    assert not any(call.startswith("GET /users") for call in running_bot.api_calls)


async def test_a_user_added_through_the_api_is_let_in(
    telegram: TelegramStandIn, running_bot: RunningBot, admin: httpx.AsyncClient
) -> None:
    newcomer = person(5555, "Bob")
    telegram.send_text(newcomer, "/start")
    refused = await reply(telegram, "sendMessage", 5555)
    assert refused.params["text"] == refusal(5555)

    created = await admin.post("/users", json={"name": "bob", "telegram_id": 5555})
    assert created.status_code == 201, created.text

    telegram.send_text(newcomer, "/start")
    greeting = await reply(telegram, "sendMessage", 5555, seen=1)
    assert "/projects" in greeting.params["text"] and "/tasks" in greeting.params["text"]
    telegram.send_text(newcomer, "/projects")
    empty = await reply(telegram, "sendMessage", 5555, seen=2)
    assert empty.params["text"] == "No projects yet."


async def test_an_unreachable_api_is_said_not_refused(
    telegram: TelegramStandIn, running_bot: RunningBot, api_url: str
) -> None:
    # The bot's API client points at a closed port: strangers must not be told they are unknown.
    client = running_bot.api
    client.http.base_url = httpx.URL("http://127.0.0.1:9")
    client.base_url = "http://127.0.0.1:9"
    telegram.send_text(person(6666), "/projects")
    sent = await reply(telegram, "sendMessage", 6666)
    assert "unreachable" in sent.params["text"] and "not allowed" not in sent.params["text"]
    telegram.send_text(ADMIN, "/projects")
    failed = await reply(telegram, "sendMessage", ADMIN["id"])
    assert "unreachable" in failed.params["text"]


def sent_with_button(chat_id: int) -> Call:
    """A message the bot might have sent earlier, with one project button on it."""
    data = ProjectButton(id="x" * 32).pack()
    markup = {"inline_keyboard": [[{"text": "secret", "callback_data": data}]]}
    return Call("sendMessage", {"chat_id": chat_id, "reply_markup": markup}, {"message_id": 1})
