"""Git on the host: isolated from the machine's and the repository's configuration, committing
as the orchestrator's bot, authenticated per URL for forges that need it (GitHub over HTTPS)."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from infra.errors import refused

BOT_NAME = "orchestrator"
BOT_EMAIL = "orchestrator@localhost"


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


_BRANCH = re.compile(r"^(?!/)(?!.*(?:\.\.|//|@\{|\.lock$|/$))[A-Za-z0-9._/-]+$")


def check_branch(branch: str) -> str:
    if not _BRANCH.match(branch) or branch.startswith("-"):
        raise refused(f"{branch!r} is not a usable branch name", "InvalidBranch")
    return branch


def resolve_commit(checkout: Path, ref: str) -> str:
    """The commit ``ref`` names in a fresh clone: a branch of the origin, a tag or a commit."""
    for candidate in (f"refs/remotes/origin/{ref}", f"refs/tags/{ref}", ref):
        found = git(
            "rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}", cwd=checkout, check=False
        )
        if found.returncode == 0:
            return found.stdout.strip()
    raise ValueError(f"the repository has no branch, tag or commit {ref!r}")


def archive_commit(repository: str, wanted: str, path: Path, *, name: str) -> str:
    """``git archive`` (tar.gz) at ``path`` of the commit ``wanted`` (a ref or a sha) names in
    ``repository`` (``name`` in messages), from a fresh bare clone beside ``path``; returns the
    commit. The archive is all a server gets: no forge access, no credential."""
    checkout = path.parent / "repository"
    git("clone", "--quiet", "--bare", repository, str(checkout))
    found = git(
        "rev-parse", "--verify", "--quiet", f"{wanted}^{{commit}}", cwd=checkout, check=False
    )
    if found.returncode != 0:
        raise refused(f"{name} has no commit {wanted}", "ReleaseFailed")
    commit = found.stdout.strip()
    git("archive", "--format=tar.gz", "-o", str(path), commit, cwd=checkout)
    return commit
