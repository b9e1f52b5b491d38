"""What goes to a Telegram chat: entries of its stream ``telegram:chat:{chat_id}``.

Three kinds of entry, each one field ``data`` holding JSON:

- :class:`ChatReply`: the Product Owner's answer to one user message (written by the PO session).
- :class:`ChatNote`: a message the session sends on its own, e.g. an agent's
  ``orchestrator respond`` (written by the PO session).
- a :class:`~core.contracts.events.TaskEvent` of a task started from the chat (its
  ``callback_stream`` is the chat's stream; written by the API's outbox).

Every entry has a delivery key (:func:`delivery_key`): writers may write an entry twice (at least
once), the bot sends each key once.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, Field, TypeAdapter

from core.contracts.base import DATA_FIELD, ContractError, JsonInput, Strict
from core.contracts.events import TaskEvent

# The chats whose streams the bot reads: a Redis set of chat ids, added to by the API when it
# takes a chat's first message.
CHATS_KEY = "telegram:chats"
# Telegram's limit for one message's text.
TELEGRAM_TEXT_LIMIT = 4096

# A Telegram chat or user id: at most 52 significant bits (Telegram's promise), so within what
# every client's JSON carries exactly (I-JSON, RFC 7493) and what the 64-bit columns that keep
# it hold. A larger number is refused as invalid input instead of failing in the database.
TelegramId = Annotated[int, Field(ge=-(2**53 - 1), le=2**53 - 1)]


class ChatReply(Strict):
    kind: Literal["reply"] = "reply"
    chat_id: int
    message_id: int = Field(description="The user's message this answers")
    text: str = Field(description="Markdown, as the agent wrote it")


class ChatNote(Strict):
    kind: Literal["note"] = "note"
    chat_id: int
    note_id: str = Field(description="Unique per note: a note written twice is sent once")
    text: str = Field(description="Markdown")
    source: str | None = Field(default=None, description="Who sent it, e.g. a Worker's id")


ChatOutput = Annotated[ChatReply | ChatNote, Field(discriminator="kind")]
_OUTPUT: TypeAdapter[ChatReply | ChatNote] = TypeAdapter(ChatOutput)

ChatEntry = ChatReply | ChatNote | TaskEvent


def delivery_key(entry: ChatEntry) -> str:
    if isinstance(entry, ChatReply):
        return f"reply:{entry.message_id}"
    if isinstance(entry, ChatNote):
        return f"note:{entry.note_id}"
    return f"task:{entry.task_id}:{entry.seq}"


def encode_chat_entry(entry: ChatReply | ChatNote) -> dict[str, str]:
    return {DATA_FIELD: entry.model_dump_json()}


def decode_chat_entry(fields: dict[bytes | str, bytes | str]) -> ChatEntry:
    """An entry of a chat stream; :class:`ContractError` when it is none of the three kinds."""
    raw = None
    for name, value in fields.items():
        if (name.decode() if isinstance(name, bytes) else name) == DATA_FIELD:
            raw = value.decode() if isinstance(value, bytes) else value
    if raw is None:
        raise ContractError(f"no {DATA_FIELD!r} field")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ContractError(f"data is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ContractError("data is not a JSON object")
    try:
        if "kind" in data:
            return _OUTPUT.validate_python(data)
        return TaskEvent.model_validate(data)
    except ValueError as exc:
        raise ContractError(f"not a chat entry: {exc}") from None


class ChatMessageIn(JsonInput):
    """``POST /chats/{chat_id}/messages``: one user message, as the bot received it."""

    message_id: int = Field(description="Telegram's message id (per chat): deduplicates")
    text: str = Field(min_length=1, max_length=20_000)
    telegram_user_id: TelegramId = Field(description="Who wrote it")


class ChatMessageAccepted(BaseModel):
    chat_id: int
    message_id: int
    workflow_id: str
    workflow_url: str | None = None


class ChatResponseIn(JsonInput):
    """``POST /chats/{chat_id}/responses``: ``orchestrator respond`` from a Worker's agent."""

    text: str = Field(min_length=1, max_length=20_000)
    response_id: str | None = Field(
        default=None,
        description="Unique per response; the same id sent twice is one message. Default: new",
    )
    source: str | None = Field(default=None, max_length=200, description="e.g. a Worker's id")


class ChatResponseAccepted(BaseModel):
    chat_id: int
    response_id: str
    workflow_id: str
