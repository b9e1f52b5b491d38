"""What goes to the chats: the consumer of the streams ``telegram:chat:{chat_id}``.

The chats are the members of the Redis set ``CHATS_KEY`` (re-read every round, so a new chat is
picked up). Each chat's stream is read through the consumer group ``bot`` with one consumer name
that stays the same across restarts, so a restarted bot first re-reads what it read but did not
acknowledge (its pending entries, id ``0``), then new entries (``>``).

Per entry: decode it (a bad one goes to the dead-letter stream ``telegram:chat:dead`` and is
acknowledged), skip it if its delivery key was sent already (``telegram:sent:{chat}:{key}``), send
it, mark it sent, acknowledge it. A long text goes out as several messages; how many went out is
kept while sending, so a bot killed half-way goes on with the next one.

Entries of one chat go out in stream order, one at a time. A send that fails for a transient
reason (network, Telegram's 5xx, 429 flood control) leaves the entry pending: that chat pauses
(429: as long as Telegram says; else a growing backoff) and then re-reads its pending entries;
other chats go on. Telegram refusing the entry for good (blocked by the user, chat not found, ...)
sends it to the dead-letter stream. A text Telegram cannot parse as HTML is sent as plain text.

What is sent: the PO's replies (as replies to the user's message) and notes, rendered from
Markdown; of the task events only what a person wants in the chat: started, a stage started, a
question (with ForceReply; the sent message is remembered so that a reply to it answers the
task), completed (with the pull request link), failed (the reason), cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiogram import Bot
from aiogram.enums import ParseMode
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramEntityTooLarge,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNotFound,
    TelegramRetryAfter,
)
from aiogram.types import ForceReply, ReplyParameters
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from bot.chat import QUESTIONS_TTL_S, SENT_TTL_S, Typing, questions_key, sent_key, short_id
from bot.render import plain, split_message
from core.contracts.base import DATA_FIELD, ContractError
from core.contracts.chat import (
    CHATS_KEY,
    TELEGRAM_TEXT_LIMIT,
    ChatEntry,
    ChatNote,
    ChatReply,
    decode_chat_entry,
    delivery_key,
)
from core.contracts.events import TaskEvent
from core.enums import EventType, TaskStatus
from core.faults import crash_point
from core.ids import chat_stream
from core.logging import bound_context, get_logger

log = get_logger("bot.delivery")

GROUP = "bot"
CONSUMER = "bot"
DEAD_LETTER_STREAM = "telegram:chat:dead"
REASON_CHARS = 1000  # of a failure reason or an error shown in the chat
QUESTION_HINT = "<i>Reply to this message to answer.</i>"


def progress_key(chat_id: int, key: str) -> str:
    """How many messages of a long entry went out already (while it is being sent)."""
    return f"telegram:sending:{chat_id}:{key}"


@dataclass(frozen=True)
class Outgoing:
    """One Telegram message: HTML text, and what it replies to or asks."""

    text: str
    reply_to: int | None = None
    question_of: str | None = None  # the task whose question this (piece) is
    force_reply: bool = False


class Transient(Exception):
    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.delay = delay


class Permanent(Exception):
    pass


# --- what an entry looks like in the chat -------------------------------------------------------


def compose(entry: ChatEntry) -> list[Outgoing]:
    """The messages for one entry; [] for what the chat does not need to see."""
    if isinstance(entry, ChatReply):
        pieces = split_message(entry.text)
        return [
            Outgoing(text, reply_to=entry.message_id if i == 0 else None)
            for i, text in enumerate(pieces)
        ]
    if isinstance(entry, ChatNote):
        return [Outgoing(text) for text in split_message(entry.text)]
    return compose_event(entry)


def compose_event(event: TaskEvent) -> list[Outgoing]:
    task = f"Task <code>{html.escape(short_id(event.task_id))}</code>"
    if event.type is EventType.started:
        return [Outgoing(f"▶️ {task} started.")]
    if event.type is EventType.stage_started:
        stage = f" · {_quote(event.stage)}" if event.stage else ""
        return [Outgoing(f"🔧 {task}{stage}: {_quote(event.message)}")]
    question = event.data.get("question")
    if event.status is TaskStatus.waiting_human and isinstance(question, str) and question:
        return _question(event.task_id, task, question)
    if event.type is EventType.completed:
        link = _pull_request(event)
        if link:
            return [Outgoing(f"✅ {task} completed. Pull request: {link}")]
        return [Outgoing(f"✅ {task} completed: {_quote(event.message)}")]
    if event.type is EventType.failed:
        error = event.data.get("error")
        reason = error if isinstance(error, str) and error else event.message
        return [Outgoing(f"❌ {task} failed: {_quote(reason)}")]
    if event.type is EventType.cancelled:
        return [Outgoing(f"🚫 {task} was cancelled.")]
    return []  # progress chatter, stage_completed, an answer taken: not for the chat


def _question(task_id: str, task: str, question: str) -> list[Outgoing]:
    head = f"❓ {task} asks:\n\n"
    room = TELEGRAM_TEXT_LIMIT - len(head) - len(QUESTION_HINT) - 2
    pieces = split_message(question, limit=room) or [html.escape(question)]
    pieces[0] = head + pieces[0]
    pieces[-1] = pieces[-1] + "\n\n" + QUESTION_HINT
    last = len(pieces) - 1
    return [
        Outgoing(text, question_of=task_id, force_reply=i == last) for i, text in enumerate(pieces)
    ]


def _pull_request(event: TaskEvent) -> str | None:
    result = event.data.get("result")
    url = result.get("pr_url") if isinstance(result, dict) else None
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        return None
    return f'<a href="{html.escape(url, quote=True)}">{html.escape(url, quote=False)}</a>'


def _quote(text: str) -> str:
    text = text.strip()
    if len(text) > REASON_CHARS:
        text = text[: REASON_CHARS - 1] + "…"
    return html.escape(text, quote=False)


# --- the consumer -------------------------------------------------------------------------------


@dataclass
class _Chat:
    chat_id: int
    stream: str
    pending: bool = True  # its own pending entries come first (all of them, at start)
    retry_at: float = 0.0
    failures: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class ChatDelivery:
    def __init__(
        self,
        bot: Bot,
        redis: Redis,
        *,
        typing: Typing | None = None,
        group: str = GROUP,
        consumer: str = CONSUMER,
        block_ms: int = 500,
        batch: int = 50,
        backoff_min_s: float = 0.5,
        backoff_max_s: float = 30.0,
        drain_s: float = 5.0,
    ) -> None:
        self.bot = bot
        self.redis = redis
        self.typing = typing
        self.group = group
        self.consumer = consumer
        self.block_ms = block_ms
        self.batch = batch
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.drain_s = drain_s
        self.ready = asyncio.Event()
        self._chats: dict[int, _Chat] = {}
        self._grouped: set[int] = set()
        self._stop = asyncio.Event()
        self._errors = 0

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Deliver until ``stop`` is set; then let the sends in hand finish (briefly)."""
        self._stop = stop or asyncio.Event()
        try:
            while not self._stop.is_set():
                try:
                    await self._refresh_chats()
                    self.ready.set()
                    self._start_due()
                    await self._read_new()
                    self._errors = 0
                except RedisError as exc:
                    await self._on_redis_error(exc)
        finally:
            await self._finish()
            log.info("chat delivery stopped")

    # -- the round ---------------------------------------------------------------------------

    async def _refresh_chats(self) -> None:
        for member in await self.redis.smembers(CHATS_KEY):
            try:
                chat_id = int(member)
            except ValueError:
                log.warning("not a chat id in the chats set", member=repr(member))
                continue
            if chat_id not in self._grouped:
                await self._ensure_group(chat_id)
                self._grouped.add(chat_id)
            if chat_id not in self._chats:
                self._chats[chat_id] = _Chat(chat_id, chat_stream(chat_id))
                log.info("chat delivery started", chat_id=chat_id)

    async def _ensure_group(self, chat_id: int) -> None:
        try:
            await self.redis.xgroup_create(chat_stream(chat_id), self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _start_due(self) -> None:
        now = time.monotonic()
        for chat in self._chats.values():
            if chat.task is None and chat.pending and chat.retry_at <= now:
                self._spawn(chat, self._redeliver(chat))

    async def _read_new(self) -> None:
        idle = {c.stream: c for c in self._chats.values() if c.task is None and not c.pending}
        if not idle:
            await self._wait_a_little()
            return
        response = await self.redis.xreadgroup(
            self.group,
            self.consumer,
            dict.fromkeys(idle, ">"),
            count=self.batch,
            block=self.block_ms,
        )
        for stream, entries in _streams(response):
            chat = idle.get(stream)
            if chat is not None and entries and not self._stop.is_set():
                self._spawn(chat, self._deliver_all(chat, entries))
            elif chat is not None and entries:
                chat.pending = True  # read but stopping: they are pending, re-read next time

    async def _wait_a_little(self) -> None:
        """Nothing to read: until a chat's sending ends, stop, or the next round anyway."""
        waits = [c.task for c in self._chats.values() if c.task is not None]
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait(
                [stopping, *waits],
                timeout=self.block_ms / 1000,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            stopping.cancel()

    def _spawn(self, chat: _Chat, work: Any) -> None:
        chat.task = asyncio.create_task(self._guarded(chat, work))

    async def _guarded(self, chat: _Chat, work: Any) -> None:
        try:
            await work
        except asyncio.CancelledError:
            chat.pending = True
            raise
        except Exception as exc:
            # Redis away or a bug: the entries stay pending and this chat tries again later.
            log.warning("chat delivery failed; retrying", chat_id=chat.chat_id, error=repr(exc))
            if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                self._grouped.discard(chat.chat_id)  # created again in the next round
            self._later(chat, None)
        finally:
            chat.task = None

    async def _on_redis_error(self, exc: RedisError) -> None:
        if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
            # A stream or its group vanished (Redis lost its data): create them again.
            log.warning("consumer group missing; recreating", error=str(exc))
            self._grouped.clear()
            return
        self._errors += 1
        pause = min(self.backoff_min_s * 2 ** (self._errors - 1), self.backoff_max_s)
        log.warning("redis error; backing off", error=str(exc), pause_s=pause)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), pause)

    async def _finish(self) -> None:
        tasks = [c.task for c in self._chats.values() if c.task is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self.drain_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    # -- one chat ----------------------------------------------------------------------------

    async def _redeliver(self, chat: _Chat) -> None:
        """This consumer's pending entries of the chat, in order; then back to new ones."""
        after = "0"
        while not self._stop.is_set():
            response = await self.redis.xreadgroup(
                self.group, self.consumer, {chat.stream: after}, count=self.batch
            )
            entries = next((found for _, found in _streams(response)), [])
            if not entries:
                chat.pending = False
                return
            if not await self._deliver_all(chat, entries):
                return
            after = _text(entries[-1][0])

    async def _deliver_all(self, chat: _Chat, entries: list[Any]) -> bool:
        """The entries in order; False at the first that must wait (it and the rest stay
        pending, and the chat re-reads them once its pause is over)."""
        for entry_id, fields in entries:
            if self._stop.is_set():
                chat.pending = True
                return False
            try:
                await self.deliver(chat.chat_id, _text(entry_id), fields)
            except Transient as exc:
                log.warning(
                    "send failed; the entry stays pending",
                    chat_id=chat.chat_id,
                    entry_id=_text(entry_id),
                    reason=str(exc),
                )
                self._later(chat, exc.delay)
                return False
        chat.failures = 0
        return True

    def _later(self, chat: _Chat, delay: float | None) -> None:
        chat.pending = True
        chat.failures += 1
        if delay is None:
            delay = min(self.backoff_min_s * 2 ** (chat.failures - 1), self.backoff_max_s)
        chat.retry_at = time.monotonic() + delay

    # -- one entry ---------------------------------------------------------------------------

    async def deliver(self, chat_id: int, entry_id: str, fields: dict[Any, Any] | None) -> None:
        """Send one entry once, then acknowledge it; :class:`Transient` leaves it pending."""
        stream = chat_stream(chat_id)
        if not fields:  # trimmed from the stream while pending: nothing left to send
            await self._ack(stream, entry_id)
            return
        try:
            entry = decode_chat_entry(fields)
            if isinstance(entry, ChatReply | ChatNote) and entry.chat_id != chat_id:
                raise ContractError(f"an entry for chat {entry.chat_id} in the stream of {chat_id}")
        except ContractError as exc:
            await self._dead_letter(stream, entry_id, fields, exc.reason)
            return
        key = delivery_key(entry)
        with bound_context(chat_id=chat_id, entry_id=entry_id, delivery_key=key):
            done = sent_key(chat_id, key)
            if await self.redis.exists(done):
                log.info("already sent; acknowledging the duplicate")
            else:
                try:
                    await self._send_all(chat_id, key, compose(entry))
                except Permanent as exc:
                    await self._dead_letter(stream, entry_id, fields, f"Telegram refused: {exc}")
                    return
                await self.redis.set(done, "1", ex=SENT_TTL_S)
                await self.redis.delete(progress_key(chat_id, key))
                log.info("entry sent")
            crash_point("bot.delivery.before_ack")
            await self._ack(stream, entry_id)
        if isinstance(entry, ChatReply) and self.typing is not None:
            self.typing.done(chat_id, entry.message_id)

    async def _send_all(self, chat_id: int, key: str, messages: list[Outgoing]) -> None:
        progress = progress_key(chat_id, key)
        already = int(await self.redis.get(progress) or 0)
        for number, outgoing in enumerate(messages[already:], start=already + 1):
            message_id = await self.send(chat_id, outgoing)
            if outgoing.question_of is not None:
                questions = questions_key(chat_id)
                await self.redis.hset(questions, str(message_id), outgoing.question_of)
                await self.redis.expire(questions, QUESTIONS_TTL_S)
            if len(messages) > 1:
                await self.redis.set(progress, number, ex=SENT_TTL_S)

    async def send(self, chat_id: int, outgoing: Outgoing) -> int:
        """Send one message (as plain text if Telegram cannot parse its HTML); its id."""
        options: dict[str, Any] = {}
        if outgoing.reply_to is not None:
            options["reply_parameters"] = ReplyParameters(
                message_id=outgoing.reply_to, allow_sending_without_reply=True
            )
        if outgoing.force_reply:
            options["reply_markup"] = ForceReply(input_field_placeholder="Your answer")
        try:
            try:
                sent = await self.bot.send_message(
                    chat_id, outgoing.text, parse_mode=ParseMode.HTML, **options
                )
            except TelegramBadRequest as exc:
                if "can't parse entities" not in exc.message.lower():
                    raise
                log.warning("telegram could not parse the html; sending plain text", error=str(exc))
                sent = await self.bot.send_message(
                    chat_id, plain(outgoing.text), parse_mode=None, **options
                )
        except TelegramAPIError as exc:
            raise _classify(exc) from exc
        return sent.message_id

    async def _ack(self, stream: str, entry_id: str) -> None:
        await self.redis.xack(stream, self.group, entry_id)

    async def _dead_letter(
        self, stream: str, entry_id: str, fields: dict[Any, Any], reason: str
    ) -> None:
        log.warning("entry dead-lettered", stream=stream, entry_id=entry_id, reason=reason)
        await self.redis.xadd(
            DEAD_LETTER_STREAM,
            {
                "reason": reason,
                "stream": stream,
                "entry_id": entry_id,
                DATA_FIELD: _raw(fields),
            },
        )
        await self._ack(stream, entry_id)


def _classify(exc: TelegramAPIError) -> Exception:
    """Transient: worth sending again later. Permanent: Telegram will never take it."""
    if isinstance(exc, TelegramRetryAfter):
        return Transient(str(exc), float(exc.retry_after))
    if isinstance(
        exc,
        TelegramBadRequest
        | TelegramNotFound
        | TelegramForbiddenError
        | TelegramEntityTooLarge
        | TelegramMigrateToChat,
    ):
        return Permanent(exc.message)
    # Network errors, Telegram's 5xx, a 401/409 that an operator fixes: later.
    return Transient(str(exc))


def _streams(response: Any) -> Iterable[tuple[str, list[Any]]]:
    """(stream, entries) of an XREADGROUP answer, RESP2 or RESP3."""
    if not response:
        return []
    pairs: Any = response.items() if isinstance(response, dict) else response
    found = []
    for stream, entries in pairs:
        # RESP3 nests each stream's entries one level deeper.
        if entries and isinstance(entries[0], list) and len(entries) == 1:
            entries = entries[0]
        found.append((_text(stream), list(entries)))
    return found


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _raw(fields: dict[Any, Any]) -> bytes | str:
    """The entry's ``data`` as it was, or all its fields as JSON when it has none."""
    for name, value in fields.items():
        if _text(name) == DATA_FIELD:
            return value  # type: ignore[no-any-return]
    return json.dumps({_text(k): _text(v) for k, v in fields.items()})
