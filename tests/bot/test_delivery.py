"""The chat streams to Telegram: the bot (bot.service.serve) on real Redis, the real API's task
events (its outbox writes them to the chat's stream) and the Bot API stand-in."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI
from redis.asyncio import Redis

from bot.chat import questions_key, sent_key
from bot.delivery import DEAD_LETTER_STREAM, GROUP
from bot.render import split_message
from core.contracts.chat import CHATS_KEY, ChatNote, ChatReply, encode_chat_entry
from core.enums import EventType, TaskStatus
from core.ids import chat_stream
from testing.standins.telegram_api import Call, TelegramStandIn, parse_html
from testing.waiting import eventually
from tests.api.conftest import runtime_of
from tests.bot.conftest import RunningBot
from tests.bot.test_bot import create_project

CHAT = 5001
OTHER = 5002


async def post(redis: Redis, *entries: ChatReply | ChatNote) -> None:
    """What the PO session does: its chat is known, the entry goes onto the chat's stream."""
    for entry in entries:
        await redis.sadd(CHATS_KEY, str(entry.chat_id))  # type: ignore[misc]
        await redis.xadd(chat_stream(entry.chat_id), encode_chat_entry(entry))  # type: ignore[arg-type]


def note(chat_id: int, note_id: str, text: str) -> ChatNote:
    return ChatNote(chat_id=chat_id, note_id=note_id, text=text, source="worker-1")


def texts(telegram: TelegramStandIn, chat_id: int) -> list[str]:
    return [str(c.params["text"]) for c in sent(telegram, chat_id)]


def sent(telegram: TelegramStandIn, chat_id: int) -> list[Call]:
    return [c for c in telegram.calls_of("sendMessage") if c.chat_id() == chat_id]


async def messages(telegram: TelegramStandIn, chat_id: int, count: int) -> list[Call]:
    """The first ``count`` messages sent to ``chat_id``, once there are that many."""

    async def arrived() -> list[Call] | None:
        found = sent(telegram, chat_id)
        return found if len(found) >= count else None

    found = await eventually(arrived, f"{count} message(s) to chat {chat_id}", within=20)
    assert found is not None
    return found[:count]


def replied_to(call: Call) -> int | None:
    target = (call.params.get("reply_parameters") or {}).get("message_id")
    return int(target) if target is not None else None


async def nothing_pending(redis: Redis, *chats: int) -> None:
    """Every entry of the chats acknowledged (the last one a moment after it was sent)."""

    async def acknowledged() -> bool:
        for chat_id in chats:
            pending = await redis.xpending(chat_stream(chat_id), GROUP)
            if pending["pending"]:
                return False
        return True

    await eventually(acknowledged, f"every entry of chats {chats} acknowledged", within=10)


async def chat_task(admin: httpx.AsyncClient, project_id: str, spec: str) -> dict[str, Any]:
    """A task started from chat CHAT: its events go to the chat's stream too."""
    created = await admin.post(
        "/tasks",
        json={"project_id": project_id, "spec": spec, "callback_stream": chat_stream(CHAT)},
    )
    assert created.status_code == 201, created.text
    return dict(created.json())


async def test_replies_notes_and_the_task_events_a_person_wants_go_out_in_order(
    telegram: TelegramStandIn,
    running_bot: RunningBot,
    redis: Redis,
    admin: httpx.AsyncClient,
    api_app: FastAPI,
) -> None:
    tasks = runtime_of(api_app).tasks
    project = await create_project(admin, "shop", "")
    cart = await chat_task(admin, project["id"], "add a cart")
    logo = await chat_task(admin, project["id"], "add a logo")
    menu = await chat_task(admin, project["id"], "add a menu")
    short = cart["id"][:8]

    await post(redis, ChatReply(chat_id=CHAT, message_id=41, text="On it: **a cart** & more"))
    await tasks.start(cart["id"])
    await tasks.add_event(cart["id"], EventType.progress, "edited cart.py", stage="developer")
    await tasks.add_event(
        cart["id"], EventType.stage_started, "Round 1: the agent works", stage="developer"
    )
    await tasks.add_event(cart["id"], EventType.stage_completed, "done", stage="developer")
    await tasks.wait_for_human(cart["id"], "Which *currency*?", stage="developer")
    await tasks.answered(cart["id"], "Which *currency*?", stage="developer")
    await post(redis, note(OTHER, "n-other", "for the other chat"), note(CHAT, "n1", "A _note_"))
    pr_url = "https://forge.example/acme/shop/pull/7?x=1&y=2"
    await tasks.finish(
        cart["id"], TaskStatus.completed, message="opened", result={"pr_url": pr_url}
    )
    await tasks.start(logo["id"])
    await tasks.finish(logo["id"], TaskStatus.failed, message="failed", error="tests <failed>")
    await tasks.finish(menu["id"], TaskStatus.cancelled, message="cancelled by the user")

    calls = await messages(telegram, CHAT, 9)
    logo_short, menu_short = logo["id"][:8], menu["id"][:8]
    assert [c.params["text"] for c in calls] == [
        "On it: <b>a cart</b> &amp; more",
        f"▶️ Task <code>{short}</code> started.",
        f"🔧 Task <code>{short}</code> · developer: Round 1: the agent works",
        f"❓ Task <code>{short}</code> asks:\n\nWhich <i>currency</i>?\n\n"
        "<i>Reply to this message to answer.</i>",
        "A <i>note</i>",
        f"✅ Task <code>{short}</code> completed. Pull request: "
        '<a href="https://forge.example/acme/shop/pull/7?x=1&amp;y=2">'
        "https://forge.example/acme/shop/pull/7?x=1&amp;y=2</a>",
        f"▶️ Task <code>{logo_short}</code> started.",
        f"❌ Task <code>{logo_short}</code> failed: tests &lt;failed&gt;",
        f"🚫 Task <code>{menu_short}</code> was cancelled.",
    ]
    assert all(c.params["parse_mode"] == "HTML" for c in calls)
    assert replied_to(calls[0]) == 41
    assert calls[0].params["reply_parameters"]["allow_sending_without_reply"] is True
    assert [replied_to(c) for c in calls[1:]] == [None] * 8
    question = calls[3]
    assert question.params["reply_markup"]["force_reply"] is True
    asked = await redis.hgetall(questions_key(CHAT))  # type: ignore[misc]
    assert asked == {str(question.result["message_id"]).encode(): cart["id"].encode()}

    assert texts(telegram, OTHER) == ["for the other chat"]
    await nothing_pending(redis, CHAT, OTHER)
    assert telegram.refused_calls("sendMessage") == []


async def test_an_entry_written_twice_is_sent_once(
    telegram: TelegramStandIn, running_bot: RunningBot, redis: Redis
) -> None:
    reply = ChatReply(chat_id=CHAT, message_id=7, text="once")
    await post(redis, reply, reply, note(CHAT, "n1", "a note"), note(CHAT, "n1", "a note"))
    await post(redis, note(CHAT, "n2", "the end"))
    await messages(telegram, CHAT, 3)
    assert texts(telegram, CHAT) == ["once", "a note", "the end"]
    assert await redis.exists(sent_key(CHAT, "reply:7"), sent_key(CHAT, "note:n1")) == 2
    ttl = await redis.ttl(sent_key(CHAT, "reply:7"))
    assert 6 * 24 * 3600 < ttl <= 7 * 24 * 3600
    await nothing_pending(redis, CHAT)


async def test_a_bad_entry_goes_to_the_dead_letter_stream(
    telegram: TelegramStandIn, running_bot: RunningBot, redis: Redis
) -> None:
    stream = chat_stream(CHAT)
    await redis.sadd(CHATS_KEY, str(CHAT))  # type: ignore[misc]
    await redis.xadd(stream, {"data": "not json"})
    await redis.xadd(stream, {"something": "else"})
    await redis.xadd(stream, {"data": '{"kind": "reply", "chat_id": 5001}'})
    await redis.xadd(stream, encode_chat_entry(note(OTHER, "wrong", "not this chat's")))  # type: ignore[arg-type]
    await post(redis, note(CHAT, "n1", "still delivered"))

    await messages(telegram, CHAT, 1)
    dead: Any = await redis.xrange(DEAD_LETTER_STREAM)
    reasons = [fields[b"reason"].decode() for _, fields in dead]
    assert len(reasons) == 4, reasons
    assert "not JSON" in reasons[0]
    assert "no 'data' field" in reasons[1]
    assert "message_id" in reasons[2] and "text" in reasons[2]
    assert "chat 5002" in reasons[3]
    assert dead[0][1][b"data"] == b"not json"
    assert dead[1][1][b"data"] == b'{"something": "else"}'
    assert all(fields[b"stream"] == stream.encode() for _, fields in dead)
    assert texts(telegram, CHAT) == ["still delivered"]
    assert texts(telegram, OTHER) == []
    await nothing_pending(redis, CHAT)


async def test_a_long_reply_is_split_into_messages_telegram_takes(
    telegram: TelegramStandIn, running_bot: RunningBot, redis: Redis
) -> None:
    code = "\n".join(f"print('<{i}>' + \"&\")" for i in range(400))
    text = "\n\n".join(
        ["# The plan", "**Step** " * 500, f"```python\n{code}\n```", "_Done_ " * 900, "Bye."]
    )
    expected = split_message(text)
    assert len(expected) >= 4
    await post(redis, ChatReply(chat_id=CHAT, message_id=9, text=text))

    calls = await messages(telegram, CHAT, len(expected))
    assert [c.params["text"] for c in calls] == expected
    for call in calls:
        assert len(call.params["text"]) <= 4096
        parse_html(call.params["text"])
    assert telegram.refused_calls("sendMessage") == []
    assert [replied_to(c) for c in calls] == [9] + [None] * (len(calls) - 1)
    await nothing_pending(redis, CHAT)


async def test_html_telegram_cannot_parse_goes_out_as_plain_text(
    telegram: TelegramStandIn, running_bot: RunningBot, redis: Redis
) -> None:
    telegram.fail(
        "sendMessage",
        code=400,
        description="Bad Request: can't parse entities: Unsupported start tag at byte offset 3",
    )
    await post(redis, ChatReply(chat_id=CHAT, message_id=3, text="**Bold** & `<x>`"))
    (call,) = await messages(telegram, CHAT, 1)
    assert call.params["text"] == "Bold & <x>"
    assert "parse_mode" not in call.params
    assert replied_to(call) == 3
    (refused,) = telegram.refused_calls("sendMessage")
    assert refused.params["parse_mode"] == "HTML"
    await nothing_pending(redis, CHAT)


async def test_a_transient_failure_holds_back_only_its_own_chat(
    telegram: TelegramStandIn, running_bot: RunningBot, redis: Redis
) -> None:
    flood = telegram.fail(
        "sendMessage",
        times=2,
        code=429,
        description="Too Many Requests: retry after 2",
        retry_after=2,
        chat_id=CHAT,
    )
    await post(redis, note(CHAT, "a1", "first"), note(CHAT, "a2", "second"))
    await post(redis, note(OTHER, "b1", "other chat"))

    await messages(telegram, CHAT, 2)
    assert texts(telegram, CHAT) == ["first", "second"]  # in order, after Telegram's pause
    assert len(flood.hits) == 2
    order = [(c.chat_id(), c.params["text"]) for c in telegram.calls_of("sendMessage")]
    assert order.index((OTHER, "other chat")) < order.index((CHAT, "first"))

    # Telegram's 5xx: the same, with the bot's own backoff.
    broken = telegram.fail("sendMessage", times=3, code=502, description="Bad Gateway")
    await post(redis, note(OTHER, "b2", "after a bad gateway"))
    await messages(telegram, OTHER, 2)
    assert len(broken.hits) == 3
    await nothing_pending(redis, CHAT, OTHER)


async def test_a_chat_telegram_refuses_for_good_does_not_stop_the_others(
    telegram: TelegramStandIn, running_bot: RunningBot, redis: Redis
) -> None:
    telegram.fail(
        "sendMessage", code=403, description="Forbidden: bot was blocked by the user", chat_id=CHAT
    )
    await post(redis, note(CHAT, "blocked", "never seen"), note(CHAT, "later", "seen"))
    await messages(telegram, CHAT, 1)
    assert texts(telegram, CHAT) == ["seen"]
    letters: Any = await redis.xrange(DEAD_LETTER_STREAM)
    (dead,) = letters
    assert "blocked by the user" in dead[1][b"reason"].decode()
    await nothing_pending(redis, CHAT)


async def test_a_stream_that_vanished_is_read_again_once_it_is_back(
    telegram: TelegramStandIn, running_bot: RunningBot, redis: Redis
) -> None:
    await post(redis, note(CHAT, "n1", "before"))
    await messages(telegram, CHAT, 1)
    await nothing_pending(redis, CHAT)
    await redis.delete(chat_stream(CHAT))  # Redis lost it, group and all
    await post(redis, note(CHAT, "n2", "after"))
    await messages(telegram, CHAT, 2)
    assert texts(telegram, CHAT) == ["before", "after"]
