"""``orchestrator respond MESSAGE``: a Worker's agent sends a message to its chat's PO session.

The session (workflows/po_session.py) turns it into a note on the chat. The chat is ``--chat``,
else ``ORCHESTRATOR_CHAT_ID`` (set in a PO Worker); the sender is ``ORCHESTRATOR_WORKER_ID``,
else the host name (a Worker's container id). Each call is a new response id: the API and the
session take a retried request with the same id once.
"""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING, Annotated

import typer

from cli.output import USAGE, CliError, JsonOption, Output, escape

if TYPE_CHECKING:
    from pydantic import ValidationError

CHAT_VARIABLE = "ORCHESTRATOR_CHAT_ID"
SOURCE_VARIABLE = "ORCHESTRATOR_WORKER_ID"


def chat_of(option: str | None) -> int:
    value = option if option is not None else os.environ.get(CHAT_VARIABLE)
    if value is None or not value.strip():
        raise CliError(
            USAGE,
            "no chat to respond to",
            f"Pass --chat CHAT_ID, or set {CHAT_VARIABLE} (a PO Worker has it set).",
        )
    try:
        return int(value.strip())
    except ValueError:
        origin = "--chat" if option is not None else CHAT_VARIABLE
        raise CliError(USAGE, f"{origin} must be a chat id (an integer), not {value!r}") from None


def source() -> str:
    import socket

    return os.environ.get(SOURCE_VARIABLE) or socket.gethostname()


def respond(
    message: Annotated[
        str, typer.Argument(help="What to tell the chat's Product Owner (Markdown).")
    ],
    chat: Annotated[
        str | None,
        typer.Option(help=f"The chat id; default: ${CHAT_VARIABLE}.", show_default=False),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Send a message to the chat's Product Owner session, which passes it on to the chat."""
    from pydantic import ValidationError

    from cli.client import ApiClient
    from core.contracts.chat import ChatResponseIn

    out = Output(json_output)
    chat_id = chat_of(chat)
    if not message.strip():
        raise CliError(USAGE, "the message is empty")
    try:
        body = ChatResponseIn(text=message, response_id=uuid.uuid4().hex, source=source()[:200])
    except ValidationError as exc:
        raise CliError(USAGE, "the message cannot be sent", _first_error(exc)) from None
    with ApiClient() as client:
        accepted = client.post(
            f"/chats/{chat_id}/responses", body.model_dump(mode="json", exclude_none=True)
        )
    out.emit(
        accepted,
        lambda: out.console.print(
            f"Sent to chat {chat_id}'s session ({escape(str(accepted.get('response_id')))})"
        ),
    )


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    return f"{'.'.join(map(str, error['loc']))}: {error['msg']}"
