"""Pull requests on the local forge, and the activity that opens and records them."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from sqlmodel import select
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import infra_failures
from activities.forge import OpenPullRequestInput, PullRequestActivities, TestOutcome
from core.enums import PullRequestState
from db.engine import Database
from db.tables import PullRequest
from infra.forges.base import parse_numstat
from infra.forges.local import LocalForge
from testing.workflows import make_project

REPO = "local/shop"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def seeded_forge(tmp_path: Path) -> tuple[LocalForge, Path]:
    """A forge whose ``local/shop`` has main; and a worktree on ``task/t1`` with changes on it."""
    forge = LocalForge(tmp_path / "forge")
    forge.create(REPO)
    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "--quiet", "--initial-branch=main")
    (work / "README.md").write_text("# shop\nline two\nline three\n")
    (work / "old.txt").write_text("gone soon\n")
    git(work, "add", "--all")
    git(work, "commit", "--quiet", "-m", "initial")
    assert forge.push(REPO, work) is True
    git(work, "checkout", "--quiet", "-b", "task/t1")
    (work / "README.md").write_text("# shop\nline 2\nline three\nline four\n")
    (work / "app.py").write_text("def hello():\n    return 'hello'\n")
    (work / "logo.png").write_bytes(bytes(range(256)))
    (work / "old.txt").unlink()
    git(work, "add", "--all")
    git(work, "commit", "--quiet", "-m", "Add hello")
    return forge, work


def test_open_pull_request_on_the_local_forge(tmp_path: Path) -> None:
    forge, work = seeded_forge(tmp_path)
    sha = forge.push_branch(REPO, work, "task/t1")
    assert sha == git(work, "rev-parse", "HEAD")
    opened = forge.open_pull_request(REPO, "task/t1", "main", title="Add hello", body="B")

    assert opened.created is True
    assert (opened.number, opened.branch, opened.base, opened.head_sha) == (
        1,
        "task/t1",
        "main",
        sha,
    )
    assert opened.state == PullRequestState.open
    stat = opened.diff_stat
    assert (stat.files_changed, stat.insertions, stat.deletions) == (4, 4, 2)
    by_path = {f.path: (f.insertions, f.deletions) for f in stat.files}
    assert by_path == {
        "README.md": (2, 1),
        "app.py": (2, 0),
        "logo.png": (None, None),
        "old.txt": (0, 1),
    }
    # The URL is usable as it is: the repository, then '#', then the branch to fetch.
    repository, _, branch = opened.url.partition("#")
    clone = tmp_path / "reviewer"
    git(tmp_path, "clone", "--quiet", repository, str(clone))
    git(clone, "fetch", "--quiet", "origin", branch)
    assert git(clone, "rev-parse", "FETCH_HEAD") == sha

    again = forge.open_pull_request(REPO, "task/t1", "main", title="Other title")
    assert again.created is False
    assert again.model_dump(exclude={"created"}) == opened.model_dump(exclude={"created"})

    git(work, "checkout", "--quiet", "-b", "task/t2", "main")
    (work / "other.txt").write_text("x\n")
    git(work, "add", "--all")
    git(work, "commit", "--quiet", "-m", "other")
    forge.push_branch(REPO, work, "task/t2")
    second = forge.open_pull_request(REPO, "task/t2", title="Other")
    assert second.number == 2
    assert [pr.number for pr in forge.pull_requests(REPO)] == [1, 2]


def test_concurrent_opens_of_one_branch_make_one_pull_request(tmp_path: Path) -> None:
    forge, work = seeded_forge(tmp_path)
    forge.push_branch(REPO, work, "task/t1")

    async def open_all() -> list[int]:
        results = await asyncio.gather(
            *(
                asyncio.to_thread(forge.open_pull_request, REPO, "task/t1", title=f"try {i}")
                for i in range(6)
            )
        )
        return [r.number for r in results]

    assert asyncio.run(open_all()) == [1] * 6
    assert len(forge.pull_requests(REPO)) == 1


@pytest.mark.parametrize(
    ("full_name", "branch", "kind"),
    [
        (REPO, "task/none", "BranchNotFound"),
        ("local/none", "task/t1", "RepositoryNotFound"),
        (REPO, "../escape", "InvalidBranch"),
    ],
)
def test_open_fails_for_good_on_what_is_missing(
    tmp_path: Path, full_name: str, branch: str, kind: str
) -> None:
    forge, work = seeded_forge(tmp_path)
    forge.push_branch(REPO, work, "task/t1")
    with pytest.raises(ApplicationError) as failed, infra_failures():
        forge.open_pull_request(full_name, branch, title="X")
    assert failed.value.type == kind
    assert failed.value.non_retryable


def test_parse_numstat_counts_binary_files_as_changed() -> None:
    stat = parse_numstat("3\t1\ta.py\n-\t-\timg.png\n0\t7\tdir/b c.txt\n")
    assert (stat.files_changed, stat.insertions, stat.deletions) == (3, 3, 8)
    assert stat.files[2].path == "dir/b c.txt"


async def test_the_activity_pushes_opens_and_records_once(
    database: Database, tmp_path: Path
) -> None:
    forge, work = seeded_forge(tmp_path)
    project = await make_project(database)
    activities = PullRequestActivities(database, forge)
    request = OpenPullRequestInput(
        project_id=project.id,
        task_id="a" * 32,
        repo_full_name=REPO,
        branch="task/t1",
        title="Add hello",
        body="Adds hello().",
        test_outcome=TestOutcome(passed=3, failed=0, summary="3 passed"),
        worktree=str(work),
    )
    env = ActivityEnvironment()
    first = await env.run(activities.open_pull_request, request)
    retried = await env.run(activities.open_pull_request, request)

    assert retried.id == first.id
    assert (first.number, first.branch, first.base) == (1, "task/t1", "main")
    assert first.head_sha == git(work, "rev-parse", "HEAD") == forge.head(REPO, "task/t1")
    assert first.diff_stat["files_changed"] == 4
    assert first.test_outcome is not None
    assert (first.test_outcome["passed"], first.test_outcome["summary"]) == (3, "3 passed")
    assert first.project_id == project.id and first.task_id == "a" * 32
    async with database.session() as session:
        rows = (await session.exec(select(PullRequest))).all()
    assert [(r.repo_full_name, r.branch, r.number) for r in rows] == [(REPO, "task/t1", 1)]
