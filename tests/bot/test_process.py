"""`python -m bot` as the supervisor runs it, and the webhook mode."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from redis.asyncio import Redis

from bot.delivery import GROUP
from bot.service import serve, webhook_secret
from core.contracts.chat import CHATS_KEY, ChatNote, ChatReply, encode_chat_entry
from core.faults import CRASH_AT_ENV
from core.ids import chat_stream
from core.readiness import ready_file
from core.settings import Settings
from testing.servers import free_port
from testing.standins.telegram_api import TelegramStandIn, person
from testing.waiting import eventually
from tests.bot.conftest import ADMIN, TOKEN

NO_TOKEN = "ORCHESTRATOR_TELEGRAM_TOKEN"


def bot_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env.update(
        ORCHESTRATOR_HOME=str(settings.home_dir),
        ORCHESTRATOR_TELEGRAM_TOKEN=TOKEN,
        ORCHESTRATOR_TELEGRAM_ADMINS=f" {ADMIN['id']}, 99",
        ORCHESTRATOR_TELEGRAM_API_URL=settings.telegram_api_url,
        ORCHESTRATOR_API_URL=settings.effective_api_url,
        ORCHESTRATOR_REDIS_URL=settings.effective_redis_url,
        PYTHONUNBUFFERED="1",
    )
    return env  # no API key: the bot reads the one `up` wrote into the home


def spawn(settings: Settings, out: Path, crash_at: str | None = None) -> subprocess.Popen[bytes]:
    env = bot_env(settings)
    if crash_at:
        env[CRASH_AT_ENV] = crash_at
    with open(out, "ab") as sink:
        return subprocess.Popen([sys.executable, "-m", "bot"], env=env, stdout=sink, stderr=sink)


async def test_the_bot_process_serves_until_sigterm(
    telegram: TelegramStandIn, bot_settings: Settings, admin_key: str
) -> None:
    (bot_settings.home_dir / "api_key").write_text(admin_key)
    ready = ready_file(bot_settings, "bot")
    out = bot_settings.home_dir / "bot.out"
    proc = spawn(bot_settings, out)
    try:

        async def is_ready() -> bool:
            assert proc.poll() is None, out.read_text()
            return ready.exists() and ready.read_text() == str(proc.pid)

        await eventually(is_ready, "the bot process to be ready", within=30)
        assert [c.method for c in telegram.calls[:2]] == ["deleteWebhook", "getMe"]
        telegram.send_text(ADMIN, "/projects")

        async def listed() -> bool:
            return any(c.chat_id() == ADMIN["id"] for c in telegram.calls_of("sendMessage"))

        await eventually(listed, "an answer to /projects", within=15)
        assert telegram.calls_of("sendMessage")[0].params["text"] == "No projects yet."
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 15) == 0, out.read_text()
        assert not ready.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_a_bot_killed_between_send_and_ack_sends_nothing_twice_and_loses_nothing(
    telegram: TelegramStandIn, bot_settings: Settings, admin_key: str, redis: Redis
) -> None:
    (bot_settings.home_dir / "api_key").write_text(admin_key)
    chat, stream = 6001, chat_stream(6001)
    await redis.sadd(CHATS_KEY, str(chat))  # type: ignore[misc]
    for entry in (
        ChatReply(chat_id=chat, message_id=1, text="one"),
        ChatNote(chat_id=chat, note_id="2", text="two"),
        ChatNote(chat_id=chat, note_id="3", text="three"),
    ):
        await redis.xadd(stream, encode_chat_entry(entry))  # type: ignore[arg-type]

    def texts() -> list[str]:
        return [c.params["text"] for c in telegram.calls_of("sendMessage") if c.chat_id() == chat]

    out = bot_settings.home_dir / "bot.out"
    killed = spawn(bot_settings, out, crash_at="bot.delivery.before_ack")
    try:
        assert await asyncio.to_thread(killed.wait, 60) == -signal.SIGKILL, out.read_text()
    finally:
        if killed.poll() is None:
            killed.kill()
    # It had read all three, sent the first, acknowledged none.
    assert texts() == ["one"]
    assert (await redis.xpending(stream, GROUP))["pending"] == 3

    restarted = spawn(bot_settings, out)
    try:

        async def all_sent() -> bool:
            assert restarted.poll() is None, out.read_text()
            return len(texts()) >= 3 and (await redis.xpending(stream, GROUP))["pending"] == 0

        await eventually(all_sent, "the restarted bot to send the rest", within=30)
        assert texts() == ["one", "two", "three"]
        restarted.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(restarted.wait, 15) == 0, out.read_text()
    finally:
        if restarted.poll() is None:
            restarted.kill()
            restarted.wait()


def test_the_bot_process_without_a_token_says_so(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != NO_TOKEN}
    env["ORCHESTRATOR_HOME"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "bot"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert NO_TOKEN in (tmp_path / "logs" / "bot.log").read_text() + done.stdout + done.stderr


async def test_webhook_mode(telegram: TelegramStandIn, bot_settings: Settings) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/telegram/hook"
    settings = bot_settings.model_copy(
        update={"telegram_webhook_url": url, "telegram_webhook_port": port}
    )
    stop = asyncio.Event()
    serving = asyncio.create_task(serve(settings, stop))
    try:

        async def registered() -> bool:
            if serving.done():
                serving.result()
            return ready_file(settings, "bot").exists()

        await eventually(registered, "the webhook to be set", within=15)
        (set_webhook,) = telegram.calls_of("setWebhook")
        secret = webhook_secret(TOKEN)
        assert set_webhook.params["url"] == url
        assert set_webhook.params["secret_token"] == secret
        assert TOKEN not in secret

        update = {
            "update_id": 1,
            "message": {
                "message_id": 1,
                "date": 0,
                "chat": {"id": 31337, "type": "private", "first_name": "Eve"},
                "from": person(31337, "Eve"),
                "text": "/start",
            },
        }
        async with httpx.AsyncClient() as client:
            forged = await client.post(url, json=update)
            assert forged.status_code == 401  # without Telegram's secret header
            posted = await client.post(
                url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": secret}
            )
            assert posted.status_code == 200

        async def refused() -> list[str]:
            return [c.params["text"] for c in telegram.calls_of("sendMessage")]

        assert await eventually(refused, "the refusal") == [
            "You are not allowed to use this bot. Ask an admin to add your Telegram ID 31337."
        ]
    finally:
        stop.set()
        await asyncio.wait_for(serving, 15)
    # Still set: Telegram keeps the updates for when the bot is back.
    assert telegram.webhook_url == url
