"""Who may use the bot: admins from configuration, and users an admin added through the API.

Everyone else is told their Telegram ID (so they can ask an admin to add them) and nothing else
happens: no handler runs, no API call about projects or tasks is made.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiogram import BaseMiddleware
from aiogram.types import TelegramObject, Update, User

from bot.api import ApiError, OrchestratorApi
from core.logging import get_logger

log = get_logger("bot.access")

Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]]


def refusal(telegram_id: int) -> str:
    return (
        f"You are not allowed to use this bot. Ask an admin to add your Telegram ID {telegram_id}."
    )


class AccessMiddleware(BaseMiddleware):
    """An outer middleware of ``Dispatcher.update``: it runs before any filter or handler.

    Registered after aiogram's own user-context middleware, so ``event_from_user`` is known.
    """

    def __init__(self, api: OrchestratorApi, admins: Iterable[int]) -> None:
        self.api = api
        self.admins = frozenset(admins)

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        user: User | None = data.get("event_from_user")
        if user is None:
            return None  # channel posts and the like: nobody to answer, nothing to do
        if user.id in self.admins:
            return await handler(event, data)
        try:
            known = await self.api.user_by_telegram_id(user.id)
        except ApiError as exc:
            # Not a refusal: the person may well be allowed once the API is back.
            await _answer(event, str(exc))
            return None
        if known is not None:
            data["api_user"] = known
            return await handler(event, data)
        log.info("telegram_user_refused", telegram_id=user.id)
        await _answer(event, refusal(user.id))
        return None


async def _answer(event: TelegramObject, text: str) -> None:
    if not isinstance(event, Update):
        return
    if event.message is not None:
        await event.message.answer(text, parse_mode=None)
    elif event.callback_query is not None:
        await event.callback_query.answer(text, show_alert=True)
