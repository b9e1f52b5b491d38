"""Host activities of the engineering stages (workflows/engineering.py): plan, workspace, tests.

- ``plan_task``: what the task asks for: its spec, its agent and its limits, from the task's
  ``EngineeringOptions`` over the settings' defaults (the default agent follows the model keys
  the gateway holds: claude, else codex).
- ``prepare_workspace``: a checkout of the project's repository per task, at
  ``<home>/workspaces/<task_id>``, on the branch ``task/<task_id>`` (mounted at /workspace in the
  task's Worker).
- ``run_tests``: the project's tests inside the Worker (its manifest's test command, ``make test``
  by default), their outcome as a ``TestReport`` (``infra.workers.run_tests``); the backing
  services its manifest names (a PostgreSQL) are started beside the Worker first, once.
- ``commit_workspace``: commits what the agent left uncommitted and gives the checkout back to
  this process's user (the Worker's uid owned it), so the host can push it.
- ``clean_workspaces`` (the reaper's): removes the workspaces of tasks finished longer than the
  retention ago, and unknown ones that old; never one of a task still running or waiting.

All are idempotent: a retry finds the checkout, the branch and the commit already made.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import heartbeating, infra_failures, run_blocking
from activities.workers import WorkerActivities
from core.contracts.agents import Budget
from core.contracts.engineering import EngineeringOptions
from core.logging import get_logger
from core.settings import Settings
from db.tasks import TaskNotFound, TaskService
from gateway.settings import GatewaySettings
from infra.containers import WorkerNotFound
from infra.test_reports import TestReport
from infra.workers import run_tests
from infra.workspaces import Workspaces

log = get_logger("activities.engineering")

DEFAULT_MAX_ROUNDS = 3


class TaskPlan(BaseModel):
    """What an engineering task asks for and within which limits (from its options and the
    settings' defaults). Read by an activity: the spec and options stay out of the history."""

    agent: str | None = Field(default=None, description="None: no agent is available")
    no_agent: str | None = Field(default=None, description="Why no agent runs, for the task")
    agent_options: dict[str, Any] = Field(default_factory=dict)
    model: str | None = None
    instructions: str | None = None
    prompt: str = ""
    max_rounds: int = DEFAULT_MAX_ROUNDS
    max_minutes: float = 60.0
    budget: Budget = Field(default_factory=Budget)


class WorkspaceInput(BaseModel):
    task_id: str
    repository: str = Field(description="Clone URL of the project's repository")
    branch: str
    base: str = "main"


class Workspace(BaseModel):
    path: str
    branch: str
    base_sha: str


class RunTestsInput(BaseModel):
    worker_id: str
    timeout_s: float = 600.0


class CommitInput(BaseModel):
    path: str
    base_sha: str
    message: str


class CommitResult(BaseModel):
    commit_sha: str
    files_changed: list[str] = Field(default_factory=list)


class CleanWorkspacesInput(BaseModel):
    retention_hours: float | None = Field(
        default=None, ge=0, description="None: the worker's workspace_retention_hours"
    )


class CleanWorkspacesResult(BaseModel):
    removed: list[str] = Field(default_factory=list, description="Names of removed workspaces")
    kept: int = Field(default=0, description="Workspaces left: in use or not old enough")
    failed: list[str] = Field(
        default_factory=list, description="Old enough, but this process may not remove them"
    )


NO_AGENT = (
    "No coding agent is configured: set ANTHROPIC_API_KEY (Claude Code) or OPENAI_API_KEY "
    "(Codex) for the worker, or choose one with `engineering start --agent`"
)


def plan_of(spec: str, options: EngineeringOptions, settings: Settings, keys: set[str]) -> TaskPlan:
    """The plan of a task: its options over the settings' defaults.

    ``keys``: the providers the gateway holds a key for ("anthropic", "openai"). A spec that is
    a JSON object with a ``script`` (the older way to ask for the scripted agent) still works.
    """
    legacy = _legacy_script(spec)
    if legacy is not None:
        prompt = legacy.pop("prompt", None)
        options = EngineeringOptions.model_validate(
            {**legacy, **options.model_dump(exclude_none=True)}
        )
        spec = str(prompt or "Follow the script")
    agent = options.agent or settings.default_agent or agent_for_keys(keys)
    if agent == "scripted" and options.script is None:
        raise ApplicationError(
            "the scripted agent needs a script (engineering start --script FILE)",
            type="BadSpec",
            non_retryable=True,
        )
    return TaskPlan(
        agent=agent,
        no_agent=None if agent else NO_AGENT,
        agent_options={"script": options.script} if agent == "scripted" else {},
        model=options.model,
        instructions=options.instructions,
        prompt=spec,
        max_rounds=options.max_rounds or settings.task_max_rounds,
        max_minutes=options.max_minutes or settings.task_max_minutes,
        budget=Budget(
            max_tokens=options.max_tokens or settings.task_max_tokens,
            max_cost_usd=options.max_cost_usd or settings.task_max_cost_usd,
        ),
    )


def agent_for_keys(keys: set[str]) -> str | None:
    """The agent whose provider the gateway holds a key for: Claude Code first."""
    if "anthropic" in keys:
        return "claude"
    if "openai" in keys:
        return "codex"
    return None


def _legacy_script(spec: str) -> dict[str, Any] | None:
    try:
        data = json.loads(spec)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("script"), dict):
        return None
    fields = {"script": data["script"], "agent": "scripted"}
    if "max_rounds" in data:
        fields["max_rounds"] = data["max_rounds"]
    try:
        EngineeringOptions.model_validate(fields)
    except ValidationError as exc:
        raise ApplicationError(
            f"bad options in the spec: {exc.errors()[0]['msg']}", type="BadSpec", non_retryable=True
        ) from None
    return {**fields, "prompt": data.get("prompt")}


def gateway_keys() -> set[str]:
    """The providers the gateway of this process can call (it holds their key)."""
    settings = GatewaySettings()
    keys = set()
    if settings.anthropic_api_key is not None:
        keys.add("anthropic")
    if settings.openai_api_key is not None:
        keys.add("openai")
    return keys


class EngineeringActivities:
    def __init__(
        self,
        settings: Settings,
        tasks: TaskService,
        workers: WorkerActivities,
        model_keys: set[str] | None = None,
    ) -> None:
        self.settings = settings
        self.tasks = tasks
        self.workers = workers
        # The providers this process's gateway holds a key for: they choose the default agent.
        self.model_keys = model_keys if model_keys is not None else gateway_keys()
        self.workspaces = Workspaces(settings.home_dir / "workspaces")

    @activity.defn
    async def plan_task(self, task_id: str) -> TaskPlan:
        """The task's plan, read from its spec (kept out of the workflow's input and history)."""
        try:
            task = await self.tasks.get(task_id)
        except TaskNotFound:
            raise ApplicationError(
                f"no task {task_id}", type="TaskNotFound", non_retryable=True
            ) from None
        try:
            options = EngineeringOptions.model_validate(task.details.get("engineering") or {})
        except ValidationError as exc:
            raise ApplicationError(
                f"bad engineering options: {exc}", type="BadSpec", non_retryable=True
            ) from None
        return plan_of(task.spec, options, self.settings, self.model_keys)

    @activity.defn
    async def prepare_workspace(self, request: WorkspaceInput) -> Workspace:
        checkout = await run_blocking(
            self.workspaces.prepare,
            request.task_id,
            request.repository,
            request.branch,
            request.base,
        )
        return Workspace(path=str(checkout.path), branch=request.branch, base_sha=checkout.base_sha)

    @activity.defn
    async def clean_workspaces(self, request: CleanWorkspacesInput) -> CleanWorkspacesResult:
        """Remove the workspaces of tasks finished (COMPLETED, FAILED, CANCELLED) longer than
        the retention ago, and those of no known task whose directory is that old."""
        hours = request.retention_hours
        retention = timedelta(
            hours=self.settings.workspace_retention_hours if hours is None else hours
        )
        entries = await run_blocking(self.workspaces.entries)
        ends = await self.tasks.end_times({task_id for task_id, _, _ in entries})
        now = datetime.now(UTC)
        result = CleanWorkspacesResult()
        for task_id, path, mtime in entries:
            if task_id in ends:
                ended = ends[task_id]  # None: the task is queued, running or waiting
                expired = ended is not None and now - ended >= retention
            else:  # no task of ours: judged by the directory's age
                expired = time.time() - mtime >= retention.total_seconds()
            if not expired:
                result.kept += 1
            elif await run_blocking(self.workspaces.remove, path):
                result.removed.append(path.name)
            else:
                result.failed.append(path.name)
        if result.removed or result.failed:
            log.info("workspaces_cleaned", removed=result.removed, failed=result.failed)
        return result

    @activity.defn
    async def run_tests(self, request: RunTestsInput) -> TestReport:
        runtime = await self.workers.runtime()
        try:
            async with heartbeating("tests"):
                with infra_failures():
                    return await run_tests(
                        runtime,
                        request.worker_id,
                        timeout_s=request.timeout_s,
                        image_for=self.workers.service_image,
                    )
        except WorkerNotFound as exc:
            raise ApplicationError(str(exc), type="WorkerNotFound", non_retryable=True) from None

    @activity.defn
    async def commit_workspace(self, request: CommitInput) -> CommitResult:
        path = Path(request.path)
        commit = await run_blocking(self.workspaces.commit, path, request.message, request.base_sha)
        return CommitResult(commit_sha=commit.sha, files_changed=commit.files_changed)
