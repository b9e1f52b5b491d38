"""Task workspaces: a checkout of the project's repository per task, at ``<root>/<task_id>``, on
the task's branch, mounted at /workspace in the task's Worker.

An agent wrote in it as another uid: before the host's git works in it again the checkout is
taken back (owned by this process's user, every repository setting that could run a command
dropped). Every step is idempotent: a retry finds the checkout, the branch and the commit made.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from core.logging import get_logger
from infra.git import git

log = get_logger(__name__)


@dataclass(frozen=True)
class Checkout:
    path: Path
    base_sha: str  # the base branch's head the task's branch starts from


@dataclass(frozen=True)
class Commit:
    sha: str
    files_changed: list[str]


class Workspaces:
    def __init__(self, root: Path) -> None:
        self.root = root

    def prepare(self, task_id: str, repository: str, branch: str, base: str) -> Checkout:
        """The task's checkout of ``repository`` on ``branch`` (made from ``base``)."""
        path = self.root / task_id
        if not (path / ".git").is_dir():
            staging = path.with_name(f".{path.name}.clone")
            shutil.rmtree(staging, ignore_errors=True)
            staging.parent.mkdir(parents=True, exist_ok=True)
            git("clone", "--quiet", "--branch", base, repository, str(staging))
            git("checkout", "--quiet", "-B", branch, cwd=staging)
            os.rename(staging, path)
        take_back(path)
        return Checkout(path, git("rev-parse", f"origin/{base}", cwd=path).stdout.strip())

    def commit(self, path: Path, message: str, base_sha: str) -> Commit:
        """Commit what the agent left uncommitted; the files changed since ``base_sha``."""
        take_back(path)  # the Worker's uid owned it; git refuses a repository of another user
        git("add", "--all", cwd=path)
        if git("diff", "--cached", "--quiet", cwd=path, check=False).returncode != 0:
            git("commit", "--quiet", "-m", message, cwd=path)
        sha = git("rev-parse", "HEAD", cwd=path).stdout.strip()
        names = git("diff", "--name-only", f"{base_sha}..HEAD", cwd=path).stdout
        return Commit(sha, names.split())

    def entries(self) -> list[tuple[str, Path, float]]:
        """(task id, path, mtime) of each workspace; a clone left half-made counts as its
        task's. Symbolic links are no workspace of ours: left alone."""
        if not self.root.is_dir():
            return []
        entries = []
        for path in self.root.iterdir():
            if path.is_symlink() or not path.is_dir():
                continue
            task_id = path.name
            if task_id.startswith(".") and task_id.endswith(".clone"):
                task_id = task_id.removeprefix(".").removesuffix(".clone")
            entries.append((task_id, path, path.lstat().st_mtime))
        return entries

    @staticmethod
    def remove(path: Path) -> bool:
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


def take_back(path: Path) -> None:
    """Before the host's git works in a checkout an agent wrote: own it, and drop every
    repository setting that could run a command (its hooks are off for every host git)."""
    reclaim(path)
    config = path / ".git" / "config"
    listed = git("config", "--file", str(config), "--list", "--name-only", check=False).stdout
    for key in dict.fromkeys(listed.split()):
        if not _SAFE_CONFIG.match(key):
            git("config", "--file", str(config), "--unset-all", key, check=False)
            log.warning("unsafe repository setting dropped", key=key, workspace=str(path))


def reclaim(path: Path) -> None:
    """Give the checkout back to this process's user (a Worker ran as another uid)."""
    if os.geteuid() != 0:
        return
    uid, gid = os.geteuid(), os.getegid()
    for root, dirs, files in os.walk(path):
        os.chown(root, uid, gid)
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)
