"""Merging pull requests on both forges: the local one (bare repositories on disk) and GitHub's
REST API (its stand-in, whose merges are real git merges in its bare repositories)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.enums import PullRequestState
from infra.errors import InfraError
from infra.forges.github import GitHubForge
from infra.forges.local import LocalForge
from testing.standins.github import TOKEN, TOKEN_ENV, github_standin


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@dataclass
class Repo:
    """``full_name`` on ``forge`` with one commit on main (a README); ``bare`` is where the
    forge keeps it on disk, ``work`` a clone to make branches in."""

    forge: LocalForge | GitHubForge
    full_name: str
    bare: Path
    work: Path
    close: Callable[[int], object]

    def branch(self, name: str, files: dict[str, str]) -> str:
        """A branch off main changing ``files``, pushed; its commit."""
        git(self.work, "checkout", "--quiet", "-B", name, "origin/main")
        for path, text in files.items():
            (self.work / path).write_text(text)
        git(self.work, "add", "--all")
        git(self.work, "commit", "--quiet", "-m", f"work of {name}")
        return self.forge.push_branch(self.full_name, self.work, name)

    def main(self) -> str:
        return git(self.bare, "rev-parse", "refs/heads/main")


def _clone(bare: Path, work: Path) -> Path:
    git(work.parent, "clone", "--quiet", str(bare), str(work))
    return work


@pytest.fixture(params=["local", "github"])
def repo(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Repo]:
    if request.param == "local":
        forge = LocalForge(tmp_path / "forge")
        forge.create("local/shop")
        seed = tmp_path / "seed"
        seed.mkdir()
        git(seed, "init", "--quiet", "--initial-branch=main")
        (seed / "README.md").write_text("# shop\n")
        git(seed, "add", "--all")
        git(seed, "commit", "--quiet", "-m", "initial")
        forge.push("local/shop", seed)
        bare = forge.path("local/shop")
        yield Repo(
            forge,
            "local/shop",
            bare,
            _clone(bare, tmp_path / "work"),
            lambda number: forge.close_pull_request("local/shop", number),
        )
        return
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    with github_standin(tmp_path / "github") as github:
        github.add_repository("acme/shop", {"README.md": "# shop\n"})
        hub = GitHubForge(
            f"env:{TOKEN_ENV}", default_owner="acme", api_url=f"{github.base_url}/api/v3"
        )
        bare = github.bare("acme/shop")

        def close(number: int) -> object:
            return hub._request(
                "PATCH", f"/repos/acme/shop/pulls/{number}", json={"state": "closed"}
            )

        yield Repo(hub, "acme/shop", bare, _clone(bare, tmp_path / "work"), close)


def test_a_merge_is_a_merge_commit_of_the_branch_into_its_base(repo: Repo) -> None:
    head = repo.branch("task/a", {"app.py": "print('hello')\n"})
    opened = repo.forge.open_pull_request(repo.full_name, "task/a", title="Add app")
    shown = repo.forge.pull_request(repo.full_name, opened.number)
    assert (shown.state, shown.merge_commit_sha, shown.merged_at) == (
        PullRequestState.open,
        None,
        None,
    )
    before = repo.main()

    merged = repo.forge.merge_pull_request(repo.full_name, opened.number)
    assert merged.state == PullRequestState.merged
    assert merged.merge_commit_sha == repo.main() != before
    assert merged.merged_at is not None and merged.head_sha == head
    # --no-ff: a commit whose parents are the base's commit and the branch's.
    parents = git(repo.bare, "rev-list", "--parents", "-n", "1", "refs/heads/main").split()
    assert parents == [merged.merge_commit_sha, before, head]
    assert git(repo.bare, "show", "main:app.py") == "print('hello')"
    assert git(repo.bare, "show", "main:README.md") == "# shop"
    message = git(repo.bare, "log", "-1", "--format=%B", "main")
    assert message.startswith("Merge pull request #1 from ") and "Add app" in message

    read = repo.forge.pull_request(repo.full_name, opened.number)
    assert (read.state, read.merge_commit_sha) == (PullRequestState.merged, merged.merge_commit_sha)
    # Merged already (a retry after a crash): as it is, main untouched.
    again = repo.forge.merge_pull_request(repo.full_name, opened.number)
    assert again.merge_commit_sha == merged.merge_commit_sha == repo.main()


def test_a_conflicting_branch_or_a_closed_pull_request_is_refused(repo: Repo) -> None:
    repo.branch("task/b", {"README.md": "# shop\n\nby b\n"})
    repo.branch("task/c", {"README.md": "# shop\n\nby c\n"})
    repo.branch("task/d", {"d.txt": "d\n"})
    b, c, d = (
        repo.forge.open_pull_request(repo.full_name, f"task/{name}", title=name).number
        for name in "bcd"
    )
    repo.forge.merge_pull_request(repo.full_name, b)
    main = repo.main()

    with pytest.raises(InfraError) as conflict:
        repo.forge.merge_pull_request(repo.full_name, c)
    assert (conflict.value.kind, conflict.value.retryable) == ("MergeConflict", False)
    if isinstance(repo.forge, LocalForge):
        assert "README.md" in str(conflict.value)  # the file it conflicts in
    assert repo.main() == main
    assert repo.forge.pull_request(repo.full_name, c).state == PullRequestState.open

    repo.close(d)
    assert repo.forge.pull_request(repo.full_name, d).state == PullRequestState.closed
    with pytest.raises(InfraError) as closed:
        repo.forge.merge_pull_request(repo.full_name, d)
    assert (closed.value.kind, closed.value.retryable) == ("PullRequestClosed", False)
    assert repo.main() == main

    with pytest.raises(InfraError) as missing:
        repo.forge.pull_request(repo.full_name, 99)
    assert missing.value.retryable is False
