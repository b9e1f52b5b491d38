"""``engineering:queue``: start an engineering task; and its result on ``Task.result``."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import Field

from core.contracts.base import Envelope, Strict

ENGINEERING_QUEUE = "engineering:queue"
# Update of the engineering workflow: a person's answer (HumanAnswer) to the task's question;
# rejected when the task is not waiting for one. Returns the question it answered.
ENGINEERING_RESPOND = "respond"
# Query of the engineering workflow: the pending question, or None.
ENGINEERING_QUESTION = "question"


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


AgentName = Literal["claude", "codex", "droid", "scripted"]


class EngineeringOptions(Strict):
    """How one engineering task runs: its agent and its limits. None takes the settings' default.

    Stored on the task (``Task.details["engineering"]``), never in a queue message or a workflow
    input: the workflow reads it in an activity.
    """

    agent: AgentName | None = Field(
        default=None,
        description="None: claude when the gateway has an Anthropic key, else codex when it has "
        "an OpenAI key, else the task fails saying no agent is configured",
    )
    model: str | None = Field(default=None, max_length=200, description="None: the CLI's default")
    script: dict[str, Any] | None = Field(
        default=None, description="The scripted agent's script (agent 'scripted' only)"
    )
    instructions: str | None = Field(
        default=None, max_length=20_000, description="Project rules added to the agent's own"
    )
    max_rounds: int | None = Field(default=None, ge=1, le=50, description="Developer turns")
    max_minutes: float | None = Field(
        default=None, gt=0, le=7 * 24 * 60, description="Wall time of the developer/tester loop"
    )
    max_tokens: int | None = Field(default=None, gt=0, description="Model tokens in + out")
    max_cost_usd: float | None = Field(default=None, gt=0, description="Model cost in USD")


class HumanAnswer(Strict):
    """A person's answer to the question of a task waiting in WAITING_HUMAN."""

    answer: str = Field(min_length=1, max_length=20_000)
    user_id: str | None = Field(default=None, description="Who answered")


class EngineeringResult(Strict):
    files_changed: list[str] = Field(default_factory=list)
    commit_sha: str | None = None
    branch: str | None = None
    pr_url: str | None = None
    repository: str | None = Field(default=None, description="The project's repository")
    stages: list[str] = Field(default_factory=list, description="Stages that really ran")
    rounds: int | None = Field(default=None, description="Developer rounds (agent turns) run")
    agent: str | None = None
    tokens_in: int = Field(default=0, description="Model tokens in, as the gateway counted them")
    tokens_out: int = 0
    cost_usd: float = Field(default=0.0, description="Model cost, as the gateway priced it")
