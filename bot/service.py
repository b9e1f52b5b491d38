"""Run the bot until told to stop: long polling by default, a webhook server when a URL is set."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from urllib.parse import urlsplit

from aiogram import Bot, Dispatcher
from aiogram.webhook.aiohttp_server import SimpleRequestHandler, setup_application
from aiohttp import web

from bot.api import OrchestratorApi
from bot.app import build_dispatcher, make_bot
from core.logging import get_logger
from core.readiness import clear_ready, mark_ready
from core.settings import Settings

log = get_logger("bot")
SERVICE = "bot"


def webhook_secret(token: str) -> str:
    """What Telegram sends back in X-Telegram-Bot-Api-Secret-Token: strangers cannot post
    updates to the webhook. Derived from the token so every restart agrees, without showing it."""
    return hashlib.sha256(f"webhook:{token}".encode()).hexdigest()


async def serve(
    settings: Settings, stop: asyncio.Event, api: OrchestratorApi | None = None
) -> None:
    """Serve updates until ``stop`` is set; marks the service ready once updates can arrive."""
    own_api = api is None
    client = api or OrchestratorApi.from_settings(settings)
    bot = make_bot(settings)
    dispatcher = build_dispatcher(client, settings.telegram_admins)
    try:
        if settings.telegram_webhook_url:
            await _webhook(settings, bot, dispatcher, stop, settings.telegram_webhook_url)
        else:
            await _polling(settings, bot, dispatcher, stop)
    finally:
        clear_ready(settings, SERVICE)
        await bot.session.close()
        if own_api:
            await client.aclose()


async def _polling(
    settings: Settings, bot: Bot, dispatcher: Dispatcher, stop: asyncio.Event
) -> None:
    async def on_startup(bot: Bot) -> None:
        # getUpdates fails while a webhook is set (say, by an earlier run in webhook mode).
        await bot.delete_webhook()
        me = await bot.get_me()  # the token is good and the Bot API answers
        mark_ready(settings, SERVICE)
        log.info("bot_polling", username=me.username, api=settings.telegram_api_url)

    dispatcher.startup.register(on_startup)
    polling = asyncio.create_task(
        dispatcher.start_polling(bot, handle_signals=False, close_bot_session=False)
    )
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({polling, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if polling.done():
            polling.result()  # it ended on its own: that is an error worth raising
            return
        await dispatcher.stop_polling()
        await polling
    finally:
        stopping.cancel()
        if not polling.done():
            polling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await polling


async def _webhook(
    settings: Settings, bot: Bot, dispatcher: Dispatcher, stop: asyncio.Event, url: str
) -> None:
    secret = webhook_secret(bot.token)
    app = web.Application()
    SimpleRequestHandler(dispatcher, bot, secret_token=secret).register(
        app, path=urlsplit(url).path or "/"
    )
    setup_application(app, dispatcher, bot=bot)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        # Local only: a reverse proxy (or a tunnel) brings the public URL here.
        await web.TCPSite(runner, settings.host, settings.telegram_webhook_port).start()
        await bot.set_webhook(
            url, secret_token=secret, allowed_updates=dispatcher.resolve_used_update_types()
        )
        mark_ready(settings, SERVICE)
        log.info("bot_webhook", url=url, port=settings.telegram_webhook_port)
        # The webhook stays set on the way out: Telegram keeps updates until we are back.
        await stop.wait()
    finally:
        await runner.cleanup()
