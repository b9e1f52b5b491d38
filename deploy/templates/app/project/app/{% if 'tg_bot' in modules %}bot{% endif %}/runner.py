"""How the bot runs: polling (it asks Telegram for updates) or a webhook (Telegram posts them),
chosen by BOT_MODE."""

from __future__ import annotations

import asyncio
import logging

from aiogram import Bot, Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.webhook.aiohttp_server import SimpleRequestHandler, setup_application
from aiohttp import web

from app.bot import handlers
from app.settings import Settings, get_settings


def create_bot(settings: Settings) -> Bot:
    """The bot, speaking to TELEGRAM_API_URL when set (a local Bot API server, a stand-in)."""
    session = None
    if settings.telegram_api_url:
        api = TelegramAPIServer.from_base(settings.telegram_api_url.rstrip("/"))
        session = AiohttpSession(api=api)
    return Bot(token=settings.telegram_bot_token.get_secret_value(), session=session)


def create_dispatcher() -> Dispatcher:
    dispatcher = Dispatcher()
    dispatcher.include_router(handlers.create_router())
    return dispatcher


async def run_polling(settings: Settings) -> None:
    bot = create_bot(settings)
    dispatcher = create_dispatcher()
    # A webhook left from an earlier deploy would make getUpdates fail.
    await bot.delete_webhook()
    await dispatcher.start_polling(bot)


def create_webhook_app(settings: Settings, bot: Bot, dispatcher: Dispatcher) -> web.Application:
    """An aiohttp app taking updates at WEBHOOK_PATH; on startup it registers WEBHOOK_URL with
    Telegram, and requests without WEBHOOK_SECRET (when set) are refused."""
    secret = settings.webhook_secret.get_secret_value() or None

    async def register_webhook(bot: Bot) -> None:
        await bot.set_webhook(settings.webhook_url, secret_token=secret)

    dispatcher.startup.register(register_webhook)
    app = web.Application()
    SimpleRequestHandler(dispatcher=dispatcher, bot=bot, secret_token=secret).register(
        app, path=settings.webhook_path
    )
    setup_application(app, dispatcher, bot=bot)
    return app


def main() -> None:
    settings = get_settings()
    logging.basicConfig(level=settings.log_level.upper())
    if not settings.telegram_bot_token.get_secret_value():
        raise SystemExit("TELEGRAM_BOT_TOKEN is not set: the bot's token from @BotFather")
    if settings.bot_mode == "webhook":
        if not settings.webhook_url:
            raise SystemExit("BOT_MODE=webhook needs WEBHOOK_URL: where Telegram posts updates")
        bot = create_bot(settings)
        app = create_webhook_app(settings, bot, create_dispatcher())
        web.run_app(app, host=settings.webhook_host, port=settings.webhook_port)
    else:
        asyncio.run(run_polling(settings))
