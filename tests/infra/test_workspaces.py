"""The host's git in a checkout an agent wrote runs none of the agent's commands."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from infra.git import git
from infra.workspaces import Workspaces


def run(*args: str, cwd: Path) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.fixture
def checkout(tmp_path: Path) -> tuple[Path, str]:
    repo = tmp_path / "workspace"
    repo.mkdir()
    git("init", "--quiet", "--initial-branch", "main", cwd=repo)
    (repo / "README.md").write_text("hello\n")
    git("add", "README.md", cwd=repo)
    git("commit", "--quiet", "-m", "first", cwd=repo)
    return repo, run("rev-parse", "HEAD", cwd=repo)


def test_hooks_filters_and_fsmonitor_of_the_agent_never_run(
    checkout: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, base = checkout
    marker = tmp_path / "ran-on-the-host"
    command = f"touch {marker}"
    # What an agent in the Worker could leave behind: a hook, a clean filter, an fsmonitor.
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text(f"#!/bin/sh\n{command}\n")
    hook.chmod(0o755)
    run("config", "filter.sneaky.clean", f"sh -c '{command}; cat'", cwd=repo)
    run("config", "core.fsmonitor", command, cwd=repo)
    run("config", "alias.st", f"!{command}", cwd=repo)
    (repo / ".gitattributes").write_text("* filter=sneaky\n")
    (repo / "app.py").write_text("print('feature')\n")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-must-not-reach-git")

    result = Workspaces(tmp_path).commit(repo, "the agent's work", base)

    assert not marker.exists()
    assert sorted(result.files_changed) == [".gitattributes", "app.py"]
    config = (repo / ".git" / "config").read_text()
    assert "sneaky" not in config and "fsmonitor" not in config and "alias" not in config
    # Host git processes get no secret from the worker's environment.
    env = git("var", "GIT_AUTHOR_IDENT", cwd=repo)  # runs; the env is checked directly below
    assert env.returncode == 0
    from infra.git import git_env

    assert "ANTHROPIC_API_KEY" not in git_env()
    assert os.environ["ANTHROPIC_API_KEY"] == "sk-must-not-reach-git"
