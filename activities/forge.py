"""The git forge: where project repositories live, and the activity that scaffolds one.

``LocalForge`` is the embedded default: bare repositories on disk under
``<forge_dir>/<owner>/<name>.git``, cloned through ``file://`` URLs. A GitHub forge can sit beside
it with the same methods (``full_name_for``, ``head``, ``create``, ``push``, ``clone_url``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Protocol

import copier
from copier.errors import CopierError
from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.heartbeat import run_blocking
from core.contracts.scaffolder import ScaffoldResult
from core.faults import crash_point
from core.logging import get_logger

log = get_logger(__name__)

BRANCH = "main"
BOT_NAME = "orchestrator"
BOT_EMAIL = "orchestrator@localhost"
_PART = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class ScaffoldRequest(BaseModel):
    project_id: str
    project_name: str
    repo_full_name: str | None = Field(
        default=None, description="owner/name; the forge's default owner and the project's slug"
    )
    description: str = ""
    modules: list[str] = Field(default_factory=list)


class FindRepositoryInput(BaseModel):
    project_id: str
    repo_full_name: str


def slugify(name: str) -> str:
    """A repository name from a project name: lower case, letters, digits, '.', '_', '-'."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.")
    slug = slug.removesuffix(".git")
    if not slug:
        raise ValueError(f"no repository name can be made from {name!r}")
    return slug


def _invalid(message: str) -> ApplicationError:
    return ApplicationError(message, type="InvalidScaffoldRequest", non_retryable=True)


def git_env() -> dict[str, str]:
    """Git isolated from the machine's configuration (hooks, signing) and committing as the bot."""
    return {
        **os.environ,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": BOT_NAME,
        "GIT_AUTHOR_EMAIL": BOT_EMAIL,
        "GIT_COMMITTER_NAME": BOT_NAME,
        "GIT_COMMITTER_EMAIL": BOT_EMAIL,
    }


def git(
    *args: str, cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["git", *args], cwd=cwd, env=git_env(), capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result


class Forge(Protocol):
    default_owner: str

    def full_name_for(self, project_name: str) -> str: ...
    def clone_url(self, full_name: str) -> str: ...
    def head(self, full_name: str, branch: str = BRANCH) -> str | None: ...
    def create(self, full_name: str) -> None: ...
    def push(self, full_name: str, worktree: Path, branch: str = BRANCH) -> bool: ...


class LocalForge:
    """Bare repositories under ``root/<owner>/<name>.git``."""

    def __init__(self, root: Path, default_owner: str = "local") -> None:
        self.root = root
        self.default_owner = default_owner

    def full_name_for(self, project_name: str) -> str:
        return f"{self.default_owner}/{slugify(project_name)}"

    def path(self, full_name: str) -> Path:
        owner, _, name = full_name.partition("/")
        if not (_PART.match(owner) and _PART.match(name)) or ".." in full_name:
            raise _invalid(f"{full_name!r} is not a repository name of the form owner/name")
        return self.root / owner / f"{name}.git"

    def clone_url(self, full_name: str) -> str:
        return self.path(full_name).resolve().as_uri()

    def head(self, full_name: str, branch: str = BRANCH) -> str | None:
        """The commit ``branch`` points at, or None when the repository or branch is missing."""
        path = self.path(full_name)
        if not path.is_dir():
            return None
        found = git(
            "rev-parse",
            "--verify",
            "--quiet",
            f"refs/heads/{branch}^{{commit}}",
            cwd=path,
            check=False,
        )
        return found.stdout.strip() if found.returncode == 0 else None

    def create(self, full_name: str) -> None:
        """Create the bare repository unless it exists. Atomic: made aside, then renamed in."""
        path = self.path(full_name)
        if (path / "HEAD").is_file():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        try:
            git("init", "--quiet", "--bare", f"--initial-branch={BRANCH}", str(staging))
            os.rename(staging, path)
        except OSError:
            if not (path / "HEAD").is_file():  # not a lost race with another creator
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def push(self, full_name: str, worktree: Path, branch: str = BRANCH) -> bool:
        """Push ``branch``; False when the forge already had that branch (so nothing changed)."""
        target = str(self.path(full_name))
        ref = f"HEAD:refs/heads/{branch}"
        pushed = git("push", "--porcelain", target, ref, cwd=worktree, check=False)
        if pushed.returncode == 0:
            # "*" marks a branch this push created; "=" one that already held this very commit
            # (the same render, in the same second, by a concurrent attempt).
            return any(line.startswith("*\t") for line in pushed.stdout.splitlines())
        if self.head(full_name, branch) is not None:
            return False
        raise RuntimeError(f"git push to {full_name} failed: {pushed.stderr.strip()}")


class ForgeActivities:
    def __init__(self, forge_dir: Path, template_dir: Path, forge: Forge | None = None) -> None:
        self.template_dir = template_dir
        self.forge: Forge = forge or LocalForge(forge_dir)

    @activity.defn
    async def scaffold_repository(self, request: ScaffoldRequest) -> ScaffoldResult:
        """Create the project's repository with one commit rendered from the template.

        Idempotent: when the repository already has its branch (a retry after a crash, or a second
        request), that commit is returned with ``created=False`` and nothing is pushed again.
        """
        result = await run_blocking(self._scaffold, request)
        log.info(
            "repository scaffolded" if result.created else "repository already scaffolded",
            repository=result.repo_full_name,
            commit_sha=result.commit_sha,
        )
        return result

    @activity.defn
    async def find_repository(self, found: FindRepositoryInput) -> ScaffoldResult | None:
        head = await run_blocking(self.forge.head, found.repo_full_name)
        if head is None:
            return None
        return self._result(found.project_id, found.repo_full_name, head, created=False)

    def _result(
        self, project_id: str, full_name: str, sha: str, *, created: bool
    ) -> ScaffoldResult:
        return ScaffoldResult(
            project_id=project_id,
            repository=self.forge.clone_url(full_name),
            repo_full_name=full_name,
            commit_sha=sha,
            created=created,
        )

    def _scaffold(self, request: ScaffoldRequest) -> ScaffoldResult:
        try:
            full_name = request.repo_full_name or self.forge.full_name_for(request.project_name)
        except ValueError as exc:
            raise _invalid(str(exc)) from None
        existing = self.forge.head(full_name)
        if existing is not None:
            return self._result(request.project_id, full_name, existing, created=False)
        self.forge.create(full_name)
        with tempfile.TemporaryDirectory(prefix="scaffold-") as tmp:
            worktree = Path(tmp) / "repo"
            self._render(request, worktree)
            git("init", "--quiet", f"--initial-branch={BRANCH}", cwd=worktree)
            git("add", "--all", cwd=worktree)
            git("commit", "--quiet", "-m", f"Scaffold {request.project_name}", cwd=worktree)
            pushed = self.forge.push(full_name, worktree)
            crash_point("scaffold.after_push")
        head = self.forge.head(full_name)
        if head is None:
            raise RuntimeError(f"{full_name} has no {BRANCH} branch right after the push")
        return self._result(request.project_id, full_name, head, created=pushed)

    def _render(self, request: ScaffoldRequest, worktree: Path) -> None:
        if not (self.template_dir / "copier.yml").is_file():
            raise ApplicationError(
                f"the project template is missing: no copier.yml in {self.template_dir}",
                type="TemplateMissing",
                non_retryable=True,
            )
        data = {
            "project_name": request.project_name,
            "description": request.description or f"The {request.project_name} project.",
            "modules": request.modules or ["backend"],
        }
        try:
            copier.run_copy(
                str(self.template_dir),
                str(worktree),
                data=data,
                defaults=True,
                quiet=True,
                unsafe=False,
            )
        except (CopierError, ValueError) as exc:
            # A bad answer (an unknown module) stays bad however often it is retried.
            raise _invalid(f"the template refused the project: {exc}") from None
