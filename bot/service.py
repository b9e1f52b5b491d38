"""Run the bot until told to stop: updates by long polling (by default) or a webhook server (when a
URL is set), and next to them the delivery of the chat streams (bot.delivery).

An update is confirmed to Telegram only once its handler finished: polling handles updates one at
a time (``handle_as_tasks=False``: aiogram moves the offset on only after the handler returned),
the webhook answers Telegram after the handler (``handle_in_background=False``). A bot killed
while passing a message on gets it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from typing import Any
from urllib.parse import urlsplit

from aiogram import Bot, Dispatcher
from aiogram.webhook.aiohttp_server import SimpleRequestHandler, setup_application
from aiohttp import web
from redis.asyncio import Redis

from bot.api import OrchestratorApi
from bot.app import build_dispatcher, make_bot
from bot.chat import ChatInbound, ChatOptions, Typing
from bot.delivery import ChatDelivery
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
    settings: Settings,
    stop: asyncio.Event,
    api: OrchestratorApi | None = None,
    *,
    redis: Redis | None = None,
    options: ChatOptions | None = None,
    delivery: dict[str, Any] | None = None,
) -> None:
    """Serve updates and deliver the chat streams until ``stop`` is set; marks the service ready
    once both run. ``delivery``: options of :class:`ChatDelivery` (tests make it quick)."""
    own_api, own_redis = api is None, redis is None
    client = api or OrchestratorApi.from_settings(settings)
    store = redis or Redis.from_url(settings.effective_redis_url)
    options = options or ChatOptions(typing_timeout_s=settings.po_turn_timeout_s)
    bot = make_bot(settings)
    typing = Typing(
        bot, store, interval=options.typing_interval_s, timeout=options.typing_timeout_s
    )
    chat = ChatInbound(client, store, typing, options)
    deliveries = ChatDelivery(bot, store, typing=typing, **(delivery or {}))
    dispatcher = build_dispatcher(client, settings.telegram_admins, chat)
    halt = asyncio.Event()  # stop, or one of the two parts ended
    updates = asyncio.Event()  # updates can arrive
    front = asyncio.create_task(_updates(settings, bot, dispatcher, halt, updates))
    back = asyncio.create_task(deliveries.run(halt))
    watch = asyncio.create_task(_ready_when(settings, updates, deliveries.ready))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({front, back, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not stop.is_set():
            log.error("a part of the bot ended; stopping", updates=front.done())
        halt.set()
        for part in (front, back):
            await part  # raises what stopped it
    finally:
        halt.set()
        for task in (watch, stopping, front, back):
            task.cancel()
        await asyncio.gather(watch, stopping, front, back, return_exceptions=True)
        clear_ready(settings, SERVICE)
        await typing.close()
        await bot.session.close()
        if own_redis:
            await store.aclose()
        if own_api:
            await client.aclose()


async def _ready_when(settings: Settings, *parts: asyncio.Event) -> None:
    for part in parts:
        await part.wait()
    mark_ready(settings, SERVICE)


async def _updates(
    settings: Settings, bot: Bot, dispatcher: Dispatcher, stop: asyncio.Event, ready: asyncio.Event
) -> None:
    if settings.telegram_webhook_url:
        await _webhook(settings, bot, dispatcher, stop, ready, settings.telegram_webhook_url)
    else:
        await _polling(settings, bot, dispatcher, stop, ready)


async def _polling(
    settings: Settings,
    bot: Bot,
    dispatcher: Dispatcher,
    stop: asyncio.Event,
    ready: asyncio.Event,
) -> None:
    async def on_startup(bot: Bot) -> None:
        # getUpdates fails while a webhook is set (say, by an earlier run in webhook mode).
        await bot.delete_webhook()
        me = await bot.get_me()  # the token is good and the Bot API answers
        ready.set()
        log.info("bot_polling", username=me.username, api=settings.telegram_api_url)

    dispatcher.startup.register(on_startup)
    # One update at a time, each confirmed (by the next getUpdates' offset) only after its
    # handler returned: with tasks, aiogram would confirm it as soon as the task was created.
    polling = asyncio.create_task(
        dispatcher.start_polling(
            bot, handle_signals=False, close_bot_session=False, handle_as_tasks=False
        )
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
    settings: Settings,
    bot: Bot,
    dispatcher: Dispatcher,
    stop: asyncio.Event,
    ready: asyncio.Event,
    url: str,
) -> None:
    secret = webhook_secret(bot.token)
    app = web.Application()
    # Telegram hears back only after the handler: until then it keeps the update (and sends it
    # again if the bot died). aiogram answers anyway after 55 s; ChatOptions.deliver_within_s
    # keeps a handler shorter than that.
    SimpleRequestHandler(dispatcher, bot, secret_token=secret, handle_in_background=False).register(
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
        ready.set()
        log.info("bot_webhook", url=url, port=settings.telegram_webhook_port)
        # The webhook stays set on the way out: Telegram keeps updates until we are back.
        await stop.wait()
    finally:
        await runner.cleanup()
