"""The embedded forge: bare repositories on disk under ``<forge_dir>/<owner>/<name>.git``, cloned
through ``file://`` URLs, with pull requests recorded beside them. ``GitHubForge``
(infra/forges/github.py) has the same methods; ``infra.forges.make_forge`` picks one."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from core.enums import PullRequestState
from infra.errors import InfraError, refused
from infra.forges.base import (
    BRANCH,
    DiffStat,
    PullRequestInfo,
    merge_message,
    parse_numstat,
    slugify,
)
from infra.git import check_branch, git

# Tries of a merge whose base branch moved under it (a push between reading and moving it).
MERGE_TRIES = 3

_PART = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


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
            raise refused(
                f"{full_name!r} is not a repository name of the form owner/name",
                "InvalidScaffoldRequest",
            )
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
            raise refused(f"the forge has no repository {full_name}", "RepositoryNotFound")
        for name in (branch, base):
            if self.head(full_name, name) is None:
                raise refused(f"{full_name} has no branch {name!r}", "BranchNotFound")
        # One opener at a time per repository: numbers increase, and a branch gets one request.
        with self._pulls_locked(path):
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
            self._save(path, info)
        return info.model_copy(update={"created": True})

    def pull_request(self, full_name: str, number: int) -> PullRequestInfo:
        record = self.path(full_name) / "pulls" / f"{number}.json"
        if not record.is_file():
            raise refused(f"{full_name} has no pull request #{number}", "PullRequestNotFound")
        return PullRequestInfo.model_validate_json(record.read_text())

    def merge_pull_request(self, full_name: str, number: int) -> PullRequestInfo:
        """Merge the branch into the base with a merge commit (``git merge --no-ff``), made in
        the bare repository itself; recorded as merged with that commit. One already merged is
        returned as it is; a closed one, or a branch that conflicts with the base, is refused."""
        path = self.path(full_name)
        with self._pulls_locked(path):
            info = self.pull_request(full_name, number)
            if info.state == PullRequestState.merged:
                return info
            if info.state == PullRequestState.closed:
                raise refused(
                    f"{full_name} #{number} is closed: it cannot be merged", "PullRequestClosed"
                )
            commit, head = self._merge(full_name, info)
            info = info.model_copy(
                update={
                    "state": PullRequestState.merged,
                    "merge_commit_sha": commit,
                    "merged_at": datetime.now(UTC),
                    "head_sha": head,
                }
            )
            self._save(path, info)
        return info

    def close_pull_request(self, full_name: str, number: int) -> PullRequestInfo:
        """Close it unmerged (a merged one stays merged)."""
        path = self.path(full_name)
        with self._pulls_locked(path):
            info = self.pull_request(full_name, number)
            if info.state == PullRequestState.open:
                info = info.model_copy(update={"state": PullRequestState.closed})
                self._save(path, info)
        return info

    def _merge(self, full_name: str, info: PullRequestInfo) -> tuple[str, str]:
        """The merge commit of the branch's head into the base's, and that head. The tree comes
        from ``git merge-tree`` (no worktree); the base moves to the commit only from the
        commit it was made on, so a push to the base meanwhile makes it start over."""
        path = self.path(full_name)
        for _ in range(MERGE_TRIES):
            base, head = self.head(full_name, info.base), self.head(full_name, info.branch)
            if base is None or head is None:
                missing = info.base if base is None else info.branch
                raise refused(f"{full_name} has no branch {missing!r}", "BranchNotFound")
            tree = git(
                "merge-tree", "--write-tree", "--name-only", "--no-messages", base, head,
                cwd=path, check=False,
            )  # fmt: skip
            lines = tree.stdout.splitlines()
            if tree.returncode == 1:
                conflicted = ", ".join(line for line in lines[1:] if line)
                raise refused(
                    f"{info.branch} conflicts with {info.base} of {full_name} in {conflicted}: "
                    "it cannot be merged as it is",
                    "MergeConflict",
                )
            if tree.returncode != 0 or not lines:
                raise RuntimeError(f"git merge-tree in {full_name} failed: {tree.stderr.strip()}")
            message = merge_message(info.number, info.branch, info.title)
            commit = git(
                "commit-tree", lines[0], "-p", base, "-p", head, "-m", message, cwd=path
            ).stdout.strip()
            ref = f"refs/heads/{info.base}"
            if git("update-ref", ref, commit, base, cwd=path, check=False).returncode == 0:
                return commit, head
        raise InfraError(f"{info.base} of {full_name} kept moving during the merge; try again")

    @contextlib.contextmanager
    def _pulls_locked(self, path: Path) -> Iterator[None]:
        """The repository's pull requests, one writer at a time (across processes)."""
        (path / "pulls").mkdir(exist_ok=True)
        with open(path / "pulls.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    @staticmethod
    def _save(path: Path, info: PullRequestInfo) -> None:
        record = path / "pulls" / f"{info.number}.json"
        staging = record.with_suffix(".tmp")
        staging.write_text(info.model_dump_json(indent=2, exclude={"created"}))
        os.replace(staging, record)
