"""``engineering:queue``: start an engineering task; and its result on ``Task.result``."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from core.contracts.base import Envelope, Strict

ENGINEERING_QUEUE = "engineering:queue"


class EngineeringAction(StrEnum):
    create = "create"
    feature = "feature"
    fix = "fix"


class EngineeringMessage(Envelope):
    task_id: str
    project_id: str
    user_id: str
    action: EngineeringAction = EngineeringAction.feature
    skip_deploy: bool = True


class EngineeringResult(Strict):
    files_changed: list[str] = Field(default_factory=list)
    commit_sha: str | None = None
    branch: str | None = None
    pr_url: str | None = None
    repository: str | None = Field(default=None, description="The project's repository")
    stages: list[str] = Field(default_factory=list, description="Stages that really ran")
    rounds: int | None = Field(default=None, description="Developer rounds (agent turns) run")
