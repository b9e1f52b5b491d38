"""What every forge shares: the default branch, repository names, the protocols the local forge
and GitHub both follow, and the pull request and diff models they report."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, Field

from core.enums import PullRequestState

BRANCH = "main"


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
    merge_commit_sha: str | None = Field(default=None, description="The merge's commit, merged")
    merged_at: datetime | None = None
    created: bool = Field(default=False, description="True when this call opened it")


def slugify(name: str) -> str:
    """A repository name from a project name: lower case, letters, digits, '.', '_', '-'."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.")
    slug = slug.removesuffix(".git")
    if not slug:
        raise ValueError(f"no repository name can be made from {name!r}")
    return slug


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


class MergingForge(Protocol):
    """What the repository sync and ``pr merge`` need: a pull request as the forge has it now,
    and its merge (a merge commit of the branch into the base). A merge the forge refuses (the
    pull request is closed, the branch conflicts) raises a non-retryable ``InfraError`` whose
    kind says why: ``PullRequestClosed``, ``MergeConflict``, ``PullRequestNotFound``."""

    def pull_request(self, full_name: str, number: int) -> PullRequestInfo: ...
    def merge_pull_request(self, full_name: str, number: int) -> PullRequestInfo:
        """Merge it; one already merged is returned as it is (a retry after a crash)."""
        ...


def merge_message(number: int, branch: str, title: str) -> str:
    """The merge commit's message, as GitHub writes it."""
    return f"Merge pull request #{number} from {branch}\n\n{title}"


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
