"""Progress events of a task, as published on ``task_progress:{task_id}``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from core.contracts.base import Strict, utcnow
from core.enums import TERMINAL_EVENTS, EventType, TaskStatus

# Update of every task workflow that may wait for a person (engineering, deploy): a person's
# answer (HumanAnswer) to the task's question; rejected when the task is not waiting for one.
# Returns the question it answered.
TASK_RESPOND = "respond"
# Query of the same workflows: the pending question, or None.
TASK_QUESTION = "question"


class TaskEvent(Strict):
    version: str = "1"
    task_id: str
    seq: int = Field(description="Position of the event in its task, from 1")
    type: EventType
    status: TaskStatus
    stage: str | None = None
    message: str = ""
    progress: float | None = Field(default=None, ge=0, le=1)
    data: dict[str, Any] = Field(default_factory=dict)
    correlation_id: str | None = None
    workflow_id: str | None = None
    timestamp: datetime = Field(default_factory=utcnow)

    @property
    def is_terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS


class HumanAnswer(Strict):
    """A person's answer to the question of a task waiting in WAITING_HUMAN."""

    answer: str = Field(min_length=1, max_length=20_000)
    user_id: str | None = Field(default=None, description="Who answered")
