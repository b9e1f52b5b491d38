"""Progress events of a task, as published on ``task_progress:{task_id}``."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field

from core.contracts.base import Strict, utcnow


class TaskStatus(StrEnum):
    queued = "QUEUED"
    running = "RUNNING"
    waiting_human = "WAITING_HUMAN"
    completed = "COMPLETED"
    failed = "FAILED"
    cancelled = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({TaskStatus.completed, TaskStatus.failed, TaskStatus.cancelled})


class EventType(StrEnum):
    started = "started"
    progress = "progress"
    stage_started = "stage_started"
    stage_completed = "stage_completed"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL_EVENTS = frozenset({EventType.completed, EventType.failed, EventType.cancelled})


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
