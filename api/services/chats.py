"""Telegram chats: user messages into their PO session, Workers' responses back to it.

A chat's session is the workflow ``po-{chat_id}`` (workflows/po_session.py). A message is
delivered with update-with-start and this returns once the session has *accepted* it: from then on
it is in the workflow's history and survives any process; the reply comes later, on the chat's
stream ``telegram:chat:{chat_id}`` (the bot sends it).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client, WithStartWorkflowOperation, WorkflowUpdateStage
from temporalio.common import WorkflowIDConflictPolicy

from api.problems import Forbidden, ServiceUnavailable
from api.services.temporal_calls import delivering
from core.contracts.chat import (
    CHATS_KEY,
    ChatMessageAccepted,
    ChatMessageIn,
    ChatResponseAccepted,
    ChatResponseIn,
)
from core.contracts.workflows import (
    PO_RESPOND,
    PO_SEND,
    PO_SESSION_WORKFLOW,
    POMessage,
    POResponse,
    POSessionInput,
    POSessionOutput,
)
from core.ids import new_id, po_session_workflow_id
from core.logging import get_logger
from core.settings import Settings
from db import errors, users
from db.tables import User

log = get_logger(__name__)

# How long a message may wait for its session to accept it (a worker must be polling).
ACCEPT_TIMEOUT = 30.0


async def chat_user(
    session: AsyncSession, settings: Settings, caller: User, telegram_user_id: int
) -> User:
    """The orchestrator user who wrote to the chat.

    Admins from ``ORCHESTRATOR_TELEGRAM_ADMINS`` get a user on their first message; anyone else
    must have been added by an admin. Only an admin (the bot) may speak for someone else.
    """
    if not caller.is_admin and caller.telegram_id != telegram_user_id:
        raise Forbidden("only an admin (the bot) may post messages of other Telegram users")
    user = await users.user_by_telegram_id(session, telegram_user_id)
    if user is not None:
        return user
    if telegram_user_id not in settings.telegram_admins:
        raise Forbidden(
            f"Telegram user {telegram_user_id} is not a user of this orchestrator; "
            "an admin can add them with POST /users"
        )
    try:
        return await users.create_user(
            session,
            name=f"Telegram admin {telegram_user_id}",
            telegram_id=telegram_user_id,
            is_admin=True,
        )
    except errors.Conflict:  # made by a concurrent request a moment ago
        found = await users.user_by_telegram_id(session, telegram_user_id)
        assert found is not None
        return found


def session_input(settings: Settings, chat_id: int, user: User) -> POSessionInput:
    """How a new session starts; a running one keeps what it started with."""
    return POSessionInput(
        chat_id=chat_id,
        user_id=user.id,
        agent=settings.po_agent,
        model=settings.po_model,
        idle_timeout_s=settings.po_idle_minutes * 60,
        turn_timeout_s=settings.po_turn_timeout_s,
        max_turns_per_run=settings.po_max_turns_per_run,
        allowed_commands=settings.po_allowed_commands,
    )


async def deliver_message(
    client: Client,
    redis: Redis,
    settings: Settings,
    chat_id: int,
    user: User,
    message: ChatMessageIn,
) -> ChatMessageAccepted:
    workflow_id = po_session_workflow_id(chat_id)
    # Before the session hears of it, so the bot reads this chat's stream when the reply comes.
    try:
        await redis.sadd(CHATS_KEY, str(chat_id))  # type: ignore[misc]
    except RedisError as exc:
        raise ServiceUnavailable(f"Redis is not reachable: {exc}") from None
    start: WithStartWorkflowOperation[Any, POSessionOutput] = WithStartWorkflowOperation(
        PO_SESSION_WORKFLOW,
        session_input(settings, chat_id, user),
        id=workflow_id,
        task_queue=settings.temporal_task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        result_type=POSessionOutput,
    )
    update = POMessage(message_id=message.message_id, text=message.text, user_id=user.id)
    async with delivering(_session(chat_id), "the message", within_s=ACCEPT_TIMEOUT):
        await client.start_update_with_start_workflow(
            PO_SEND,
            update,
            start_workflow_operation=start,
            wait_for_stage=WorkflowUpdateStage.ACCEPTED,
            # Per message: the bot delivering it again is the same update for Temporal.
            id=f"po-message-{message.message_id}",
            result_type=str,
            rpc_timeout=timedelta(seconds=ACCEPT_TIMEOUT),
        )
    log.info("chat message accepted", chat_id=chat_id, message_id=message.message_id)
    return ChatMessageAccepted(
        chat_id=chat_id,
        message_id=message.message_id,
        workflow_id=workflow_id,
        workflow_url=settings.workflow_url(workflow_id),
    )


async def deliver_response(
    client: Client, chat_id: int, body: ChatResponseIn
) -> ChatResponseAccepted:
    workflow_id = po_session_workflow_id(chat_id)
    response = POResponse(
        response_id=body.response_id or new_id(), text=body.text, source=body.source
    )
    handle = client.get_workflow_handle(workflow_id)
    async with delivering(
        _session(chat_id),
        "the response",
        within_s=ACCEPT_TIMEOUT,
        not_running=f"no PO session is running for chat {chat_id}",
    ):
        await handle.execute_update(PO_RESPOND, response, id=f"po-response-{response.response_id}")
    return ChatResponseAccepted(
        chat_id=chat_id, response_id=response.response_id, workflow_id=workflow_id
    )


def _session(chat_id: int) -> str:
    return f"the PO session of chat {chat_id}"
