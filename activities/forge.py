"""Activities on the forge: scaffold a project's repository, find it, open a task's pull request.

The forge itself (the local one or GitHub, infra/forges) is given by the worker; these record
what it did in the database and tell Temporal which failures a retry can fix.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from temporalio import activity

from activities import infra_failures, run_blocking
from core.contracts.engineering import PullRequestCreate, PullRequestRead
from core.contracts.scaffolder import ScaffoldResult
from core.enums import ProjectTemplate
from core.logging import get_logger
from core.paths import TEMPLATE_DIRS
from db import pull_requests
from db.engine import Database
from infra.forges.base import Forge, PullRequestForge, PullRequestInfo
from infra.forges.scaffold import Scaffolded, scaffold

log = get_logger(__name__)


class ScaffoldRequest(BaseModel):
    project_id: str
    project_name: str
    repo_full_name: str | None = Field(
        default=None, description="owner/name; the forge's default owner and the project's slug"
    )
    description: str = ""
    modules: list[str] = Field(default_factory=list)
    template: ProjectTemplate | None = Field(default=None, description="Else the default one")


class FindRepositoryInput(BaseModel):
    project_id: str
    repo_full_name: str


class TestOutcome(BaseModel):
    """The Tester's verdict on the branch, shown with the pull request."""

    __test__ = False  # not a pytest class, whatever its name
    model_config = ConfigDict(extra="allow")
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    summary: str = ""


class OpenPullRequestInput(BaseModel):
    project_id: str
    task_id: str | None = None
    repo_full_name: str
    branch: str
    base: str = "main"
    title: str
    body: str = ""
    test_outcome: TestOutcome | None = None
    worktree: str | None = Field(
        default=None, description="A checkout on this host to push the branch from first"
    )


class ForgeActivities:
    def __init__(self, template_dir: Path, forge: Forge) -> None:
        self.template_dir = template_dir  # for projects that name no template
        self.forge = forge

    @activity.defn
    async def scaffold_repository(self, request: ScaffoldRequest) -> ScaffoldResult:
        """Create the project's repository with one commit rendered from the template.

        Idempotent: when the repository already has its branch (a retry after a crash, or a second
        request), that commit is returned with ``created=False`` and nothing is pushed again.
        """
        with infra_failures():
            made = await run_blocking(self._scaffold, request)
        log.info(
            "repository scaffolded" if made.created else "repository already scaffolded",
            repository=made.full_name,
            commit_sha=made.commit_sha,
        )
        return self._result(request.project_id, made)

    def _scaffold(self, request: ScaffoldRequest) -> Scaffolded:
        return scaffold(
            self.forge,
            self._template(request.template),
            project_name=request.project_name,
            full_name=request.repo_full_name,
            description=request.description,
            modules=request.modules,
        )

    def _template(self, template: ProjectTemplate | None) -> Path:
        return self.template_dir if template is None else TEMPLATE_DIRS[template]

    @activity.defn
    async def find_repository(self, found: FindRepositoryInput) -> ScaffoldResult | None:
        with infra_failures():
            head = await run_blocking(self.forge.head, found.repo_full_name)
        if head is None:
            return None
        made = Scaffolded(found.repo_full_name, head, created=False)
        return self._result(found.project_id, made)

    def _result(self, project_id: str, made: Scaffolded) -> ScaffoldResult:
        return ScaffoldResult(
            project_id=project_id,
            repository=self.forge.clone_url(made.full_name),
            repo_full_name=made.full_name,
            commit_sha=made.commit_sha,
            created=made.created,
        )


class PullRequestActivities:
    """Opens a task's pull request on the forge, then records it in the database."""

    def __init__(self, db: Database, forge: PullRequestForge) -> None:
        self.db = db
        self.forge = forge

    @activity.defn
    async def open_pull_request(self, request: OpenPullRequestInput) -> PullRequestRead:
        """Idempotent per (repository, branch): a retry returns the pull request opened first."""
        with infra_failures():
            info = await run_blocking(self._open, request)
        row = await pull_requests.record(
            self.db,
            PullRequestCreate(
                project_id=request.project_id,
                task_id=request.task_id,
                test_outcome=_outcome(request.test_outcome),
                **info.model_dump(exclude={"created"}),
            ),
        )
        log.info(
            "pull request opened" if info.created else "pull request already open",
            repository=info.repo_full_name,
            number=info.number,
            branch=info.branch,
        )
        return PullRequestRead.model_validate(row)

    def _open(self, request: OpenPullRequestInput) -> PullRequestInfo:
        if request.worktree is not None:
            self.forge.push_branch(request.repo_full_name, Path(request.worktree), request.branch)
        return self.forge.open_pull_request(
            request.repo_full_name,
            request.branch,
            request.base,
            title=request.title,
            body=request.body,
        )


def _outcome(outcome: TestOutcome | None) -> dict[str, Any] | None:
    if outcome is None:
        return None
    return {**outcome.model_dump(), "recorded_at": datetime.now(UTC).isoformat()}
