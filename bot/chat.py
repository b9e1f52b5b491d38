"""What a person writes in the chat: to their Product Owner session, or to a task that asked.

A text message goes to the API (``POST /chats/{chat_id}/messages``), which hands it to the chat's
PO session; while the session works on it the chat shows "typing…". A reply to a task's question
(a message the bot sent for a WAITING_HUMAN event, see :mod:`bot.delivery`) goes to that task
instead (``POST /tasks/{task_id}/respond``).

Transient failures (API unreachable, 5xx: 503 is Temporal not taking it yet) are retried for a
bounded time; then, or at once for a refusal (4xx), the person is told why. The handler returns
only once that is settled, and the bot confirms an update to Telegram only after its handler
returned (see ``bot.service``), so a bot killed in the middle gets the message again. The API and
the session deduplicate by message id.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiogram import Bot, html
from aiogram.enums import ChatAction
from aiogram.types import Message
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.api import ApiError, OrchestratorApi
from core.contracts.chat import ChatMessageIn
from core.faults import crash_point
from core.logging import get_logger

log = get_logger("bot.chat")

T = TypeVar("T")

# Set by bot.delivery once an entry was sent in full; each key is sent once.
SENT_TTL_S = 7 * 24 * 3600
# Questions wait days; the hash of one chat's questions lives this long after its newest one.
QUESTIONS_TTL_S = 90 * 24 * 3600
RETRY_FIRST_S = 0.25
RETRY_MAX_S = 5.0


def sent_key(chat_id: int, delivery_key: str) -> str:
    return f"telegram:sent:{chat_id}:{delivery_key}"


def questions_key(chat_id: int) -> str:
    """Hash: id of a message the bot sent with a task's question -> the task's id."""
    return f"telegram:questions:{chat_id}"


def answered_key(chat_id: int, message_id: int) -> str:
    """Set once a person's answer (their message) reached its task: a redelivered update
    does not answer twice."""
    return f"telegram:answered:{chat_id}:{message_id}"


def short_id(task_id: str) -> str:
    return task_id[:8]


@dataclass(frozen=True)
class ChatOptions:
    # How long a person's message (or answer) is retried against the API before they are told
    # it did not get through. Under a minute: a webhook update must be answered within 60 s.
    deliver_within_s: float = 45.0
    typing_interval_s: float = 4.0  # Telegram shows "typing…" for 5 s
    typing_timeout_s: float = 600.0  # Settings.po_turn_timeout_s: one PO turn at most


async def retrying(call: Callable[[], Awaitable[T]], within: float, what: str) -> T:
    """``call()``, again after transient API errors with a growing pause, for ``within`` s."""
    deadline = time.monotonic() + within
    pause = RETRY_FIRST_S
    while True:
        try:
            return await call()
        except ApiError as exc:
            if not exc.transient or time.monotonic() + pause > deadline:
                raise
            log.warning("api call failed; retrying", what=what, error=str(exc), pause_s=pause)
        await asyncio.sleep(pause)
        pause = min(pause * 2, RETRY_MAX_S)


def why(exc: ApiError) -> str:
    """A refusal in the API's own words; anything else as it happened."""
    if exc.status is not None and 400 <= exc.status < 500:
        return exc.detail
    return str(exc)


class Typing:
    """ "typing…" in a chat while its messages wait for the PO's replies.

    Shown until the reply to each waiting message was sent (bot.delivery calls :meth:`done`;
    the sent-marker in Redis is checked too, so a reply that was faster than this is seen) or
    ``timeout`` passed.
    """

    def __init__(
        self, bot: Bot, redis: Redis, *, interval: float = 4.0, timeout: float = 600.0
    ) -> None:
        self.bot = bot
        self.redis = redis
        self.interval = interval
        self.timeout = timeout
        self._waiting: dict[int, dict[int, float]] = {}  # chat -> message id -> deadline
        self._loops: dict[int, asyncio.Task[None]] = {}
        self._wake: dict[int, asyncio.Event] = {}

    def waiting(self, chat_id: int) -> set[int]:
        """The chat's messages still waiting for their replies."""
        return set(self._waiting.get(chat_id, {}))

    def active(self, chat_id: int) -> bool:
        """Whether "typing…" is being shown in the chat."""
        return chat_id in self._loops

    def start(self, chat_id: int, message_id: int) -> None:
        self._waiting.setdefault(chat_id, {})[message_id] = time.monotonic() + self.timeout
        if chat_id not in self._loops:
            self._wake[chat_id] = asyncio.Event()
            self._loops[chat_id] = asyncio.create_task(self._show(chat_id))

    def done(self, chat_id: int, message_id: int) -> None:
        waiting = self._waiting.get(chat_id)
        if waiting is not None and waiting.pop(message_id, None) is not None:
            self._wake[chat_id].set()

    async def close(self) -> None:
        loops = list(self._loops.values())
        for loop in loops:
            loop.cancel()
        for loop in loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        self._waiting.clear()

    async def _show(self, chat_id: int) -> None:
        try:
            while await self._still_waiting(chat_id):
                try:
                    await self.bot.send_chat_action(chat_id, ChatAction.TYPING)
                except Exception as exc:  # only a courtesy: never worth failing for
                    log.info("typing not shown", chat_id=chat_id, error=str(exc))
                wake = self._wake[chat_id]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self.interval)
                wake.clear()
        finally:
            self._loops.pop(chat_id, None)
            self._wake.pop(chat_id, None)
            self._waiting.pop(chat_id, None)

    async def _still_waiting(self, chat_id: int) -> bool:
        waiting = self._waiting.get(chat_id, {})
        now = time.monotonic()
        for message_id, deadline in list(waiting.items()):
            if deadline <= now or await self._replied(chat_id, message_id):
                waiting.pop(message_id, None)
        return bool(waiting)

    async def _replied(self, chat_id: int, message_id: int) -> bool:
        try:
            return bool(await self.redis.exists(sent_key(chat_id, f"reply:{message_id}")))
        except RedisError:
            return False


class ChatInbound:
    """The handler of a person's text messages (access was checked by the middleware)."""

    def __init__(
        self,
        api: OrchestratorApi,
        redis: Redis,
        typing: Typing,
        options: ChatOptions | None = None,
    ) -> None:
        self.api = api
        self.redis = redis
        self.typing = typing
        self.options = options or ChatOptions()

    async def handle(self, message: Message) -> None:
        if not message.text or message.from_user is None:
            await message.answer("I can only read text messages.", parse_mode=None)
            return
        task_id = await self._asked_by(message)
        if task_id is not None:
            await self._answer(message, task_id, message.text)
        else:
            await self._forward(message, message.text, message.from_user.id)

    async def _asked_by(self, message: Message) -> str | None:
        """The task whose question ``message`` replies to, if it does."""
        replied = message.reply_to_message
        if replied is None or replied.from_user is None or message.bot is None:
            return None
        if replied.from_user.id != message.bot.id:
            return None
        try:
            found = await self.redis.hget(questions_key(message.chat.id), str(replied.message_id))
        except RedisError as exc:
            # Cannot tell: the PO session gets it and can pass the answer on itself.
            log.warning("questions unreadable; forwarding", error=str(exc))
            return None
        if found is None:
            return None
        return found.decode() if isinstance(found, bytes) else str(found)

    async def _forward(self, message: Message, text: str, user_id: int) -> None:
        chat_id = message.chat.id
        body = ChatMessageIn(message_id=message.message_id, text=text, telegram_user_id=user_id)
        refused = "Your message could not be delivered"
        if not await self._deliver(
            message, lambda: self.api.post_chat_message(chat_id, body), "chat message", refused
        ):
            return
        log.info("chat message delivered", chat_id=chat_id, message_id=message.message_id)
        crash_point("bot.forwarded")
        self.typing.start(chat_id, message.message_id)

    async def _answer(self, message: Message, task_id: str, answer: str) -> None:
        chat_id = message.chat.id
        short = html.code(short_id(task_id))
        done = answered_key(chat_id, message.message_id)
        if not await self._exists(done):
            refused = f"Your answer did not reach task {short}"
            if not await self._deliver(
                message, lambda: self.api.respond(task_id, answer), "task answer", refused
            ):
                return
            with contextlib.suppress(RedisError):
                await self.redis.set(done, task_id, ex=SENT_TTL_S)
        log.info("task answered", task_id=task_id, chat_id=chat_id)
        await message.reply(f"Sent your answer to task {short}.", allow_sending_without_reply=True)

    async def _deliver(
        self, message: Message, call: Callable[[], Awaitable[Any]], what: str, refused: str
    ) -> bool:
        """``call`` the API, again while it cannot be reached; a refusal is told in the chat
        (``refused``, then why) and is False."""
        try:
            await retrying(call, self.options.deliver_within_s, what)
        except ApiError as exc:
            log.warning(f"{what} not delivered", chat_id=message.chat.id, error=str(exc))
            await message.reply(
                f"{refused}: {html.quote(why(exc))}", allow_sending_without_reply=True
            )
            return False
        return True

    async def _exists(self, key: str) -> bool:
        try:
            return bool(await self.redis.exists(key))
        except RedisError:
            return False
