"""``engineering:queue``: start an engineering task; and its result on ``Task.result``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from core.contracts.base import Envelope, JsonInput, ReadModel, Strict
from core.enums import AgentName, EngineeringAction, PullRequestState  # pydantic-free there

ENGINEERING_QUEUE = "engineering:queue"


class EngineeringMessage(Envelope):
    task_id: str
    project_id: str
    user_id: str
    action: EngineeringAction = EngineeringAction.feature
    skip_deploy: bool = True


class EngineeringOptions(JsonInput):
    """How one engineering task runs: its agent and its limits. None takes the settings' default.

    Stored on the task (``Task.details["engineering"]``), never in a queue message or a workflow
    input: the workflow reads it in an activity.
    """

    # Part of a request body (POST /tasks); unknown fields are refused, as by Strict.
    model_config = ConfigDict(extra="forbid")

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


class PullRequestCreate(BaseModel):
    """What an activity records once the forge has opened the pull request."""

    model_config = ConfigDict(extra="forbid")
    project_id: str = Field(min_length=1, max_length=32)
    task_id: str | None = Field(default=None, max_length=32)
    repo_full_name: str = Field(min_length=3, max_length=200)
    number: int = Field(ge=1)
    branch: str = Field(min_length=1, max_length=250)
    base: str = Field(min_length=1, max_length=250)
    title: str = Field(min_length=1, max_length=500)
    body: str = ""
    url: str = Field(min_length=1, max_length=1000)
    head_sha: str | None = Field(default=None, max_length=64)
    diff_stat: dict[str, Any] = Field(default_factory=dict)
    test_outcome: dict[str, Any] | None = None
    state: PullRequestState = PullRequestState.open
    merge_commit_sha: str | None = Field(default=None, max_length=64)
    merged_at: datetime | None = None


class PullRequestRead(ReadModel):
    id: str
    project_id: str
    task_id: str | None
    repo_full_name: str
    number: int
    branch: str
    base: str
    title: str
    body: str
    url: str
    head_sha: str | None
    diff_stat: dict[str, Any]
    test_outcome: dict[str, Any] | None
    state: PullRequestState
    merge_commit_sha: str | None = Field(default=None, description="Once merged: its commit")
    merged_at: datetime | None = None
    deploy_task_id: str | None = Field(
        default=None, description="The deploy its merge started (a project with auto-deploy)"
    )
    created_at: datetime
