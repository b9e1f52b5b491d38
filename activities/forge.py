"""The git forge: where project repositories live, and the activity that scaffolds one.

``LocalForge`` is the embedded default: bare repositories on disk under
``<forge_dir>/<owner>/<name>.git``, cloned through ``file://`` URLs. ``GitHubForge``
(activities/github.py) has the same methods (the ``Forge`` and ``PullRequestForge`` protocols);
``activities.forges.make_forge`` picks one from the settings.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import copier
from copier.errors import CopierError
from pydantic import BaseModel, ConfigDict, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.heartbeat import run_blocking
from api.db import Database
from api.models import PullRequestCreate, PullRequestRead, PullRequestState
from api.services import pull_requests
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


class FileStat(BaseModel):
    path: str
    insertions: int | None = Field(description="None for a binary file")
    deletions: int | None


class DiffStat(BaseModel):
    """What a pull request changes, as ``git diff --numstat base...branch`` counts it."""

    files_changed: int = 0
    insertions: int = 0
    deletions: int = 0
    files: list[FileStat] = Field(default_factory=list)


class TestOutcome(BaseModel):
    """The Tester's verdict on the branch, shown with the pull request."""

    __test__ = False  # not a pytest class, whatever its name
    model_config = ConfigDict(extra="allow")
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    summary: str = ""


class PullRequestInfo(BaseModel):
    """A pull request as a forge (local or GitHub) reports it."""

    repo_full_name: str
    number: int
    url: str
    branch: str
    base: str
    title: str
    body: str = ""
    head_sha: str | None = None
    diff_stat: DiffStat = Field(default_factory=DiffStat)
    state: PullRequestState = PullRequestState.open
    created: bool = Field(default=False, description="True when this call opened it")


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


def slugify(name: str) -> str:
    """A repository name from a project name: lower case, letters, digits, '.', '_', '-'."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.")
    slug = slug.removesuffix(".git")
    if not slug:
        raise ValueError(f"no repository name can be made from {name!r}")
    return slug


def _invalid(message: str) -> ApplicationError:
    return ApplicationError(message, type="InvalidScaffoldRequest", non_retryable=True)


# What a host git process inherits: nothing else (no model key, no token by ``env:``).
_GIT_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR")


def git_env() -> dict[str, str]:
    """Git isolated from the machine's configuration (hooks, signing) and committing as the bot.

    Workspaces are written by agents: their hooks and fsmonitor command never run on the host
    (these settings override the repository's own), and git gets no secret from this process.
    """
    return {
        **{name: os.environ[name] for name in _GIT_INHERITED if name in os.environ},
        "GIT_CONFIG_COUNT": "2",
        "GIT_CONFIG_KEY_0": "core.hooksPath",
        "GIT_CONFIG_VALUE_0": os.devnull,
        "GIT_CONFIG_KEY_1": "core.fsmonitor",
        "GIT_CONFIG_VALUE_1": "false",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": BOT_NAME,
        "GIT_AUTHOR_EMAIL": BOT_EMAIL,
        "GIT_COMMITTER_NAME": BOT_NAME,
        "GIT_COMMITTER_EMAIL": BOT_EMAIL,
    }


# Forges that need credentials over HTTPS, by URL prefix (``https://github.com/``): each gives the
# environment one git process needs to reach a URL of its own (see ``authenticate_git``).
_GIT_AUTH: dict[str, Callable[[str], dict[str, str]]] = {}


def authenticate_git(origin: str, env_for: Callable[[str], dict[str, str]]) -> None:
    """Let ``git()`` commands that name a URL under ``origin`` (a workspace's clone) authenticate:
    ``env_for(url)`` gives that one process's environment, credentials included. The forge of
    the worker registers itself; nothing is written into a repository's configuration."""
    _GIT_AUTH[origin.rstrip("/") + "/"] = env_for


def _env_for(args: tuple[str, ...]) -> dict[str, str]:
    for arg in args:
        for origin, env_for in _GIT_AUTH.items():
            if arg.startswith(origin):
                return env_for(arg)
    return git_env()


def git(
    *args: str, cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["git", *args], cwd=cwd, env=_env_for(args), capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result


class Forge(Protocol):
    default_owner: str

    def full_name_for(self, project_name: str) -> str: ...
    def clone_url(self, full_name: str) -> str: ...
    def head(self, full_name: str, branch: str = BRANCH) -> str | None: ...
    def create(self, full_name: str) -> bool:
        """Make the repository unless it exists; True when the forge filled it itself (GitHub,
        from a template repository): then there is nothing to render and push."""
        ...

    def push(self, full_name: str, worktree: Path, branch: str = BRANCH) -> bool: ...


class PullRequestForge(Protocol):
    """What opening a pull request needs; ``LocalForge`` and ``GitHubForge`` both have it."""

    def push_branch(self, full_name: str, worktree: Path, branch: str) -> str: ...
    def open_pull_request(
        self, full_name: str, branch: str, base: str = BRANCH, *, title: str, body: str = ""
    ) -> PullRequestInfo: ...


_BRANCH = re.compile(r"^(?!/)(?!.*(?:\.\.|//|@\{|\.lock$|/$))[A-Za-z0-9._/-]+$")


def check_branch(branch: str) -> str:
    if not _BRANCH.match(branch) or branch.startswith("-"):
        raise ApplicationError(
            f"{branch!r} is not a usable branch name", type="InvalidBranch", non_retryable=True
        )
    return branch


def parse_numstat(output: str) -> DiffStat:
    """``git diff --numstat`` lines (``added<TAB>deleted<TAB>path``; ``-`` for binary files)."""
    files = []
    for line in output.splitlines():
        added, deleted, path = [*line.split("\t", 2), "", ""][:3]
        if not path:
            continue
        files.append(
            FileStat(
                path=path,
                insertions=None if added == "-" else int(added),
                deletions=None if deleted == "-" else int(deleted),
            )
        )
    return DiffStat(
        files_changed=len(files),
        insertions=sum(f.insertions or 0 for f in files),
        deletions=sum(f.deletions or 0 for f in files),
        files=files,
    )


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

    def create(self, full_name: str) -> bool:
        """Create the bare repository unless it exists. Atomic: made aside, then renamed in.

        Always empty (False): the activity renders the project template into it.
        """
        path = self.path(full_name)
        if (path / "HEAD").is_file():
            return False
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
        return False

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

    # --- pull requests ----------------------------------------------------------------------------
    # Kept in the bare repository itself (``pulls/<number>.json``), as a forge keeps them: the
    # database row the activity writes is a copy, and a retry finds the first one here.

    def push_branch(self, full_name: str, worktree: Path, branch: str) -> str:
        """Push the worktree's HEAD to ``branch``; returns the commit the forge now has there.

        Forced: a task's branch belongs to that task alone, and a later round may rewrite it.
        """
        check_branch(branch)
        target = str(self.path(full_name))
        pushed = git(
            "push", "--porcelain", target, f"+HEAD:refs/heads/{branch}", cwd=worktree, check=False
        )
        if pushed.returncode != 0:
            raise RuntimeError(f"git push to {full_name} failed: {pushed.stderr.strip()}")
        head = self.head(full_name, branch)
        if head is None:
            raise RuntimeError(f"{full_name} has no branch {branch} right after the push")
        return head

    def pull_url(self, full_name: str, branch: str) -> str:
        # What a person can use: `git fetch <repository> <branch>` (the part after '#').
        return f"{self.clone_url(full_name)}#{branch}"

    def diff_stat(self, full_name: str, branch: str, base: str = BRANCH) -> DiffStat:
        path = self.path(full_name)
        since_fork = f"refs/heads/{base}...refs/heads/{branch}"
        numstat = git("diff", "--numstat", "--no-renames", since_fork, cwd=path, check=False)
        if numstat.returncode != 0:
            # Unrelated histories have no merge base: compare the two tips instead.
            tips = (f"refs/heads/{base}", f"refs/heads/{branch}")
            numstat = git("diff", "--numstat", "--no-renames", *tips, cwd=path)
        return parse_numstat(numstat.stdout)

    def pull_requests(self, full_name: str) -> list[PullRequestInfo]:
        folder = self.path(full_name) / "pulls"
        found = [PullRequestInfo.model_validate_json(p.read_text()) for p in folder.glob("*.json")]
        return sorted(found, key=lambda pr: pr.number)

    def find_pull_request(self, full_name: str, branch: str) -> PullRequestInfo | None:
        return next((pr for pr in self.pull_requests(full_name) if pr.branch == branch), None)

    def open_pull_request(
        self, full_name: str, branch: str, base: str = BRANCH, *, title: str, body: str = ""
    ) -> PullRequestInfo:
        """Open a pull request of ``branch`` into ``base``; the one already open for it if any."""
        check_branch(branch)
        check_branch(base)
        path = self.path(full_name)
        if not (path / "HEAD").is_file():
            raise ApplicationError(
                f"the forge has no repository {full_name}",
                type="RepositoryNotFound",
                non_retryable=True,
            )
        for name in (branch, base):
            if self.head(full_name, name) is None:
                raise ApplicationError(
                    f"{full_name} has no branch {name!r}",
                    type="BranchNotFound",
                    non_retryable=True,
                )
        (path / "pulls").mkdir(exist_ok=True)
        # One opener at a time per repository: numbers increase, and a branch gets one request.
        with open(path / "pulls.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            existing = self.find_pull_request(full_name, branch)
            if existing is not None:
                return existing
            number = max((pr.number for pr in self.pull_requests(full_name)), default=0) + 1
            info = PullRequestInfo(
                repo_full_name=full_name,
                number=number,
                url=self.pull_url(full_name, branch),
                branch=branch,
                base=base,
                title=title,
                body=body,
                head_sha=self.head(full_name, branch),
                diff_stat=self.diff_stat(full_name, branch, base),
            )
            record = path / "pulls" / f"{number}.json"
            staging = record.with_suffix(".tmp")
            staging.write_text(info.model_dump_json(indent=2))
            os.replace(staging, record)
        return info.model_copy(update={"created": True})


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
        with forge_errors():
            result = await run_blocking(self._scaffold, request)
        log.info(
            "repository scaffolded" if result.created else "repository already scaffolded",
            repository=result.repo_full_name,
            commit_sha=result.commit_sha,
        )
        return result

    @activity.defn
    async def find_repository(self, found: FindRepositoryInput) -> ScaffoldResult | None:
        with forge_errors():
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
        if self.forge.create(full_name):
            # The forge made it from its own template (GitHub's template repository).
            generated = self.forge.head(full_name)
            if generated is None:
                raise RuntimeError(f"{full_name} has no {BRANCH} branch after its generation")
            return self._result(request.project_id, full_name, generated, created=True)
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


class PullRequestActivities:
    """Opens a task's pull request on the forge, then records it in the database."""

    def __init__(self, db: Database, forge: PullRequestForge) -> None:
        self.db = db
        self.forge = forge

    @activity.defn
    async def open_pull_request(self, request: OpenPullRequestInput) -> PullRequestRead:
        """Idempotent per (repository, branch): a retry returns the pull request opened first."""
        info = await run_blocking(self._open, request)
        row = await pull_requests.record(
            self.db,
            PullRequestCreate(
                project_id=request.project_id,
                task_id=request.task_id,
                repo_full_name=info.repo_full_name,
                number=info.number,
                branch=info.branch,
                base=info.base,
                title=info.title,
                body=info.body,
                url=info.url,
                head_sha=info.head_sha,
                diff_stat=info.diff_stat.model_dump(),
                test_outcome=_outcome(request.test_outcome),
                state=info.state,
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
        with forge_errors():
            if request.worktree is not None:
                path = Path(request.worktree)
                self.forge.push_branch(request.repo_full_name, path, request.branch)
            return self.forge.open_pull_request(
                request.repo_full_name,
                request.branch,
                request.base,
                title=request.title,
                body=request.body,
            )


@contextlib.contextmanager
def forge_errors() -> Iterator[None]:
    """A forge's own errors (GitHub's) say whether a retry can help, and when: Temporal is told."""
    try:
        yield
    except Exception as exc:
        convert = getattr(exc, "to_application_error", None)
        if callable(convert):
            raise convert() from exc
        raise


def _outcome(outcome: TestOutcome | None) -> dict[str, Any] | None:
    if outcome is None:
        return None
    return {**outcome.model_dump(), "recorded_at": datetime.now(UTC).isoformat()}
