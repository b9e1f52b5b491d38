"""Host activities of the engineering stages (workflows/engineering.py): plan, workspace, tests.

- ``plan_task``: what the task asks for: its spec, its agent and its limits, from the task's
  ``EngineeringOptions`` over the settings' defaults (the default agent follows the model keys
  the gateway holds: claude, else codex).
- ``prepare_workspace``: a checkout of the project's repository per task, at
  ``<home>/workspaces/<task_id>``, on the branch ``task/<task_id>`` (mounted at /workspace in the
  task's Worker).
- ``run_tests``: the project's ``make test`` inside the Worker, parsed into a ``TestReport``.
- ``commit_workspace``: commits what the agent left uncommitted and gives the checkout back to
  this process's user (the Worker's uid owned it), so the host can push it.
- ``clean_workspaces`` (the reaper's): removes the workspaces of tasks finished longer than the
  retention ago, and unknown ones that old; never one of a task still running or waiting.

All are idempotent: a retry finds the checkout, the branch and the commit already made.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from sqlmodel import col, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.containers import WorkerNotFound
from activities.forge import git
from activities.heartbeat import heartbeating, run_blocking
from activities.workers import WorkerActivities
from api.db import Database
from api.models import Task
from core.contracts.engineering import EngineeringOptions
from core.contracts.events import TaskStatus
from core.logging import get_logger
from core.settings import Settings
from gateway.ledger import Budget
from gateway.settings import GatewaySettings

log = get_logger("activities.engineering")

DEFAULT_MAX_ROUNDS = 3
TEST_COMMAND = ["make", "test"]
OUTPUT_TAIL = 4000


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


class TestReport(BaseModel):
    __test__ = False  # not a pytest class
    passed: bool
    exit_code: int
    tests_run: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0
    failing_tests: list[str] = Field(default_factory=list)
    summary: str = ""
    output: str = Field(default="", description="The command's last lines")


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


_RAN = re.compile(r"^Ran (\d+) tests? in", re.MULTILINE)
_VERDICT = re.compile(r"^(OK|FAILED)(?: \(([^)]*)\))?\s*$", re.MULTILINE)
_FAILING = re.compile(r"^(?:FAIL|ERROR): (\S+) \(([^)]+)\)", re.MULTILINE)


def parse_unittest(output: str, exit_code: int) -> TestReport:
    """The outcome of ``python -m unittest`` (the template's ``make test``) from its output."""
    ran = _RAN.findall(output)
    counts: dict[str, int] = {}
    verdicts = _VERDICT.findall(output)
    if verdicts:
        for part in (verdicts[-1][1] or "").split(","):
            name, _, value = part.strip().partition("=")
            if value.strip().isdigit():
                counts[name] = int(value)
    # 3.11+ print "FAIL: test_y (tests.test_x.Case.test_y)"; older ones "(tests.test_x.Case)".
    found = (_dedupe_name(f"{where}.{name}") for name, where in _FAILING.findall(output))
    failing = list(dict.fromkeys(found))
    passed = exit_code == 0 and (not verdicts or verdicts[-1][0] == "OK")
    total = int(ran[-1]) if ran else 0
    if passed:
        summary = f"{total} tests passed"
    elif verdicts:
        summary = f"{total} tests ran: {verdicts[-1][0]} ({verdicts[-1][1]})"
    else:
        summary = f"the test command exited with {exit_code}"
    return TestReport(
        passed=passed,
        exit_code=exit_code,
        tests_run=total,
        failures=counts.get("failures", 0),
        errors=counts.get("errors", 0),
        skipped=counts.get("skipped", 0),
        failing_tests=failing,
        summary=summary,
        output=output[-OUTPUT_TAIL:],
    )


def gateway_keys() -> set[str]:
    """The providers the gateway of this process can call (it holds their key)."""
    settings = GatewaySettings()
    keys = set()
    if settings.anthropic_api_key is not None:
        keys.add("anthropic")
    if settings.openai_api_key is not None:
        keys.add("openai")
    return keys


def _dedupe_name(name: str) -> str:
    parts = name.split(".")
    if len(parts) >= 2 and parts[-1] == parts[-2]:
        return ".".join(parts[:-1])
    return name


class EngineeringActivities:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        workers: WorkerActivities,
        model_keys: set[str] | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.workers = workers
        # The providers this process's gateway holds a key for: they choose the default agent.
        self.model_keys = model_keys if model_keys is not None else gateway_keys()

    @property
    def workspaces(self) -> Path:
        return self.settings.home_dir / "workspaces"

    @activity.defn
    async def plan_task(self, task_id: str) -> TaskPlan:
        """The task's plan, read from its spec (kept out of the workflow's input and history)."""
        async with self.db.session() as session:
            task = await session.get(Task, task_id)
        if task is None:
            raise ApplicationError(f"no task {task_id}", type="TaskNotFound", non_retryable=True)
        try:
            options = EngineeringOptions.model_validate(task.details.get("engineering") or {})
        except ValidationError as exc:
            raise ApplicationError(
                f"bad engineering options: {exc}", type="BadSpec", non_retryable=True
            ) from None
        return plan_of(task.spec, options, self.settings, self.model_keys)

    @activity.defn
    async def prepare_workspace(self, request: WorkspaceInput) -> Workspace:
        return await run_blocking(self._prepare, request)

    def _prepare(self, request: WorkspaceInput) -> Workspace:
        path = self.workspaces / request.task_id
        if not (path / ".git").is_dir():
            staging = path.with_name(f".{path.name}.clone")
            shutil.rmtree(staging, ignore_errors=True)
            staging.parent.mkdir(parents=True, exist_ok=True)
            git("clone", "--quiet", "--branch", request.base, request.repository, str(staging))
            git("checkout", "--quiet", "-B", request.branch, cwd=staging)
            os.rename(staging, path)
        _take_back(path)
        base = git("rev-parse", f"origin/{request.base}", cwd=path).stdout.strip()
        return Workspace(path=str(path), branch=request.branch, base_sha=base)

    @activity.defn
    async def clean_workspaces(self, request: CleanWorkspacesInput) -> CleanWorkspacesResult:
        """Remove the workspaces of tasks finished (COMPLETED, FAILED, CANCELLED) longer than
        the retention ago, and those of no known task whose directory is that old."""
        hours = request.retention_hours
        retention = timedelta(
            hours=self.settings.workspace_retention_hours if hours is None else hours
        )
        entries = await run_blocking(self._workspace_entries)
        ends = await self._task_ends({task_id for task_id, _, _ in entries})
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
            elif await run_blocking(_remove_tree, path):
                result.removed.append(path.name)
            else:
                result.failed.append(path.name)
        if result.removed or result.failed:
            log.info("workspaces_cleaned", removed=result.removed, failed=result.failed)
        return result

    def _workspace_entries(self) -> list[tuple[str, Path, float]]:
        """(task id, path, mtime) of each workspace; a clone left half-made counts as its
        task's. Symbolic links are no workspace of ours: left alone."""
        if not self.workspaces.is_dir():
            return []
        entries = []
        for path in self.workspaces.iterdir():
            if path.is_symlink() or not path.is_dir():
                continue
            task_id = path.name
            if task_id.startswith(".") and task_id.endswith(".clone"):
                task_id = task_id.removeprefix(".").removesuffix(".clone")
            entries.append((task_id, path, path.lstat().st_mtime))
        return entries

    async def _task_ends(self, task_ids: set[str]) -> dict[str, datetime | None]:
        """Of ``task_ids``, each task that exists: when it ended, None while it has not."""
        if not task_ids:
            return {}
        async with self.db.session() as session:
            rows = await session.exec(
                select(Task.id, Task.status, Task.completed_at, Task.updated_at).where(
                    col(Task.id).in_(task_ids)
                )
            )
            found = list(rows.all())
        return {
            task_id: _aware(completed_at or updated_at) if TaskStatus(status).is_terminal else None
            for task_id, status, completed_at, updated_at in found
        }

    @activity.defn
    async def run_tests(self, request: RunTestsInput) -> TestReport:
        runtime = await self.workers.runtime()
        try:
            async with heartbeating("tests"):
                done = await runtime.exec(
                    request.worker_id,
                    TEST_COMMAND,
                    # A round rewrites files within the same second: no stale .pyc may shadow them.
                    env={"PYTHONDONTWRITEBYTECODE": "1"},
                    timeout=request.timeout_s,
                )
        except WorkerNotFound as exc:
            raise ApplicationError(str(exc), type="WorkerNotFound", non_retryable=True) from None
        output = done.stdout + done.stderr
        if done.timed_out:
            return TestReport(
                passed=False,
                exit_code=done.exit_code,
                summary=f"the tests ran past their {request.timeout_s:g} s limit",
                output=output[-OUTPUT_TAIL:],
            )
        return parse_unittest(output, done.exit_code)

    @activity.defn
    async def commit_workspace(self, request: CommitInput) -> CommitResult:
        return await run_blocking(self._commit, request)

    def _commit(self, request: CommitInput) -> CommitResult:
        path = Path(request.path)
        _take_back(path)  # the Worker's uid owned it; git refuses a repository of another user
        git("add", "--all", cwd=path)
        if git("diff", "--cached", "--quiet", cwd=path, check=False).returncode != 0:
            git("commit", "--quiet", "-m", request.message, cwd=path)
        sha = git("rev-parse", "HEAD", cwd=path).stdout.strip()
        names = git("diff", "--name-only", f"{request.base_sha}..HEAD", cwd=path).stdout
        return CommitResult(commit_sha=sha, files_changed=names.split())


def _aware(moment: datetime) -> datetime:
    # SQLite gives back naive datetimes; every time stored here is UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _remove_tree(path: Path) -> bool:
    """Remove a workspace; False (logged) when this process may not, e.g. files of the
    Worker's uid in a directory this non-root process cannot write."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass  # removed meanwhile (another worker process's reaper)
    except OSError as exc:
        log.warning("workspace_not_removed", path=str(path), error=str(exc))
        return False
    return True


# The repository settings a checkout may keep once an agent had it: nothing that runs a command
# (filters, diff/merge drivers, credential helpers, aliases, includes...) when the host's git
# works in it. Patterns are matched against ``git config --list`` keys.
_SAFE_CONFIG = re.compile(
    r"^(core\.(repositoryformatversion|filemode|bare|logallrefupdates|ignorecase|precomposeunicode)"
    r"|remote\.[^.]+\.(url|fetch)|branch\..+\.(remote|merge)|user\.(name|email))$"
)


def _take_back(path: Path) -> None:
    """Before the host's git works in a checkout an agent wrote: own it, and drop every
    repository setting that could run a command (its hooks are off for every host git)."""
    _reclaim(path)
    config = path / ".git" / "config"
    listed = git("config", "--file", str(config), "--list", "--name-only", check=False).stdout
    for key in dict.fromkeys(listed.split()):
        if not _SAFE_CONFIG.match(key):
            git("config", "--file", str(config), "--unset-all", key, check=False)
            log.warning("unsafe repository setting dropped", key=key, workspace=str(path))


def _reclaim(path: Path) -> None:
    """Give the checkout back to this process's user (a Worker ran as another uid)."""
    if os.geteuid() != 0:
        return
    uid, gid = os.geteuid(), os.getegid()
    for root, dirs, files in os.walk(path):
        os.chown(root, uid, gid)
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)
