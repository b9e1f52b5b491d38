"""Telegram chats: the bot posts user messages; Workers' agents post responses."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, status

from api.deps import AppRuntime, CurrentUser, DbSession, KeyChat, TemporalClient, full_key
from api.problems import Forbidden, problem_responses
from api.services import chats
from core.contracts.chat import (
    ChatMessageAccepted,
    ChatMessageIn,
    ChatResponseAccepted,
    ChatResponseIn,
    TelegramId,
)

router = APIRouter(prefix="/chats", tags=["chats"], responses=problem_responses(403, 503))


@router.post(
    "/{chat_id}/messages",
    status_code=status.HTTP_202_ACCEPTED,
    summary="A user's message to the chat's Product Owner; the reply comes on the chat's stream",
    dependencies=[Depends(full_key)],
)
async def post_message(
    chat_id: TelegramId,
    message: ChatMessageIn,
    caller: CurrentUser,
    session: DbSession,
    runtime: AppRuntime,
    client: TemporalClient,
) -> ChatMessageAccepted:
    user = await chats.chat_user(session, runtime.settings, caller, message.telegram_user_id)
    return await chats.deliver_message(
        client, runtime.redis, runtime.settings, chat_id, user, message
    )


async def responding_chat(chat_id: TelegramId, caller: CurrentUser, key_chat: KeyChat) -> int:
    """The chat a Worker's response goes to, when the caller may respond there: with the key of
    that chat's PO session, or as an admin."""
    if key_chat is not None and key_chat != chat_id:
        raise Forbidden(f"this key belongs to chat {key_chat}'s session, not chat {chat_id}'s")
    if key_chat is None and not caller.is_admin:
        raise Forbidden("only a PO session's key or an admin may respond to a chat")
    return chat_id


RespondingChat = Annotated[int, Depends(responding_chat)]


@router.post(
    "/{chat_id}/responses",
    status_code=status.HTTP_202_ACCEPTED,
    summary="A Worker's message back to the chat's PO session (`orchestrator respond`)",
    responses=problem_responses(409),
)
async def post_response(
    chat_id: RespondingChat, body: ChatResponseIn, client: TemporalClient
) -> ChatResponseAccepted:
    return await chats.deliver_response(client, chat_id, body)
