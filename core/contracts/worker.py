"""``worker:commands`` and ``worker:responses``: the life of a Worker container."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from core.contracts.base import Envelope, Strict

WORKER_COMMANDS_QUEUE = "worker:commands"
WORKER_RESPONSES_QUEUE = "worker:responses"


class WorkerConfig(Strict):
    name: str
    agent: str = Field(description="claude, codex, droid or scripted")
    capabilities: list[str] = Field(default_factory=list)
    env_refs: dict[str, str] = Field(
        default_factory=dict, description="Environment variable -> reference of a stored secret"
    )
    instructions: str | None = None


class CreateWorker(Envelope):
    command: Literal["create"] = "create"
    config: WorkerConfig


class SendMessage(Envelope):
    command: Literal["send_message"] = "send_message"
    worker_id: str
    message: str
    timeout: float = 600.0


class SendFile(Envelope):
    command: Literal["send_file"] = "send_file"
    worker_id: str
    path: str
    content: str


class DeleteWorker(Envelope):
    command: Literal["delete"] = "delete"
    worker_id: str


WorkerCommand = Annotated[
    CreateWorker | SendMessage | SendFile | DeleteWorker, Field(discriminator="command")
]
worker_command_adapter: TypeAdapter[WorkerCommand] = TypeAdapter(WorkerCommand)


class WorkerResponse(Envelope):
    success: bool
    worker_id: str | None = None
    response: str | None = None
    error: str | None = None


class WorkerResult(Strict):
    worker_id: str
    deleted: bool
