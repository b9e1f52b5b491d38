"""The GitHub adapter against a local stand-in of GitHub's REST API and git smart HTTP."""

from __future__ import annotations

import base64
import logging
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import infra_failures
from activities.forge import OpenPullRequestInput, PullRequestActivities
from db.engine import Database
from infra.errors import InfraError
from infra.forges.github import (
    GitHubAuthError,
    GitHubForge,
    GitHubNotFound,
    GitHubRateLimited,
    GitHubValidationError,
    PullRequestExists,
    SecretUnavailable,
    resolve_secret,
)
from testing.standins.github import TOKEN, TOKEN_ENV, github_standin
from testing.standins.github_api import GitHubStandIn
from testing.workflows import make_project


def as_temporal_failure(error: InfraError) -> ApplicationError:
    """What an activity that met ``error`` tells Temporal."""
    with pytest.raises(ApplicationError) as translated, infra_failures():
        raise error
    return translated.value


@pytest.fixture
def github(tmp_path: Path) -> Iterator[GitHubStandIn]:
    with github_standin(tmp_path / "github") as state:
        yield state


@pytest.fixture
def forge(github: GitHubStandIn, monkeypatch: pytest.MonkeyPatch) -> GitHubForge:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    return GitHubForge(
        f"env:{TOKEN_ENV}", default_owner="acme", api_url=f"{github.base_url}/api/v3"
    )


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def worktree_with_change(tmp_path: Path, clone_of: Path, branch: str) -> Path:
    """A checkout of the repository's main with one commit on ``branch``."""
    work = tmp_path / "work"
    git(tmp_path, "clone", "--quiet", str(clone_of), str(work))
    git(work, "checkout", "--quiet", "-b", branch)
    (work / "app.py").write_text("def hello():\n    return 'hello'\n")
    (work / "README.md").write_text("# service\n\nNow with hello.\n")
    git(work, "add", "--all")
    git(work, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "Add hello")
    return work


def test_secret_references_resolve_and_fail_without_the_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    (tmp_path / "token").write_text(TOKEN + "\n")
    assert resolve_secret(f"env:{TOKEN_ENV}") == TOKEN
    assert resolve_secret(f"file:{tmp_path / 'token'}") == TOKEN
    for bad in ("env:ORCHESTRATOR_TEST_NOT_SET", f"file:{tmp_path / 'none'}", TOKEN):
        with pytest.raises(SecretUnavailable) as raised:
            resolve_secret(bad)
        if bad != TOKEN:
            assert TOKEN not in str(raised.value)


def test_generate_push_and_open_a_pull_request_once(
    github: GitHubStandIn,
    forge: GitHubForge,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    github.add_repository(
        "acme/service-template",
        {"README.md": "# service\n", "main.py": "print(1)\n"},
        is_template=True,
    )
    forge.template = "acme/service-template"

    repo = forge.create_repository("acme/shop", description="a shop")
    assert repo.full_name == "acme/shop"
    assert repo.clone_url == f"{github.base_url}/acme/shop.git"
    assert "POST /api/v3/repos/acme/service-template/generate" in github.requests
    # Generated like GitHub does: the template's files in one new commit, not its history.
    bare = github.bare("acme/shop")
    assert git(bare, "rev-list", "--count", "main") == "1"
    assert git(bare, "show", "main:main.py") == "print(1)"
    assert forge.create_repository("acme/shop").full_name == "acme/shop"  # idempotent

    work = worktree_with_change(tmp_path, bare, "task/abc")
    config_before = (work / ".git" / "config").read_text()
    sha = forge.push_branch("acme/shop", work, "task/abc")
    assert sha == git(work, "rev-parse", "HEAD")
    assert forge.head("acme/shop", "task/abc") == sha
    assert git(bare, "rev-parse", "task/abc") == sha
    # The token went to git for the push only: not into the worktree's configuration.
    config_after = (work / ".git" / "config").read_text()
    assert config_after == config_before
    assert TOKEN not in config_after and "extraheader" not in config_after

    opened = forge.open_pull_request(
        "acme/shop", "task/abc", "main", title="Add hello", body="Adds hello()."
    )
    assert opened.created is True
    assert opened.number == 1
    assert opened.url == f"{github.base_url}/acme/shop/pull/1"
    assert (opened.branch, opened.base, opened.head_sha) == ("task/abc", "main", sha)
    assert opened.diff_stat.files_changed == 2
    assert opened.diff_stat.insertions == 4 and opened.diff_stat.deletions == 0

    again = forge.open_pull_request("acme/shop", "task/abc", "main", title="Add hello")
    assert again.created is False
    assert again.number == opened.number and again.url == opened.url
    assert again.diff_stat == opened.diff_stat
    assert len(github.pulls["acme/shop"]) == 1
    assert "GET /api/v3/repos/acme/shop/pulls" in github.requests

    # The token reached GitHub (API and git) but nothing this process logged or printed.
    basic = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    assert f"Bearer {TOKEN}" in github.seen_authorizations
    assert f"Basic {basic}" in github.seen_authorizations
    out, err = capfd.readouterr()
    for text in (caplog.text, out, err):
        assert TOKEN not in text and basic not in text


def test_plain_repositories_for_the_user_and_an_org(
    github: GitHubStandIn, forge: GitHubForge
) -> None:
    assert forge.create_repository("octocat/mine").full_name == "octocat/mine"
    assert "POST /api/v3/user/repos" in github.requests
    assert forge.create_repository("acme/theirs").full_name == "acme/theirs"
    assert "POST /api/v3/orgs/acme/repos" in github.requests
    assert forge.head("acme/theirs") is None  # empty: no main yet
    with pytest.raises(GitHubNotFound):
        forge.create_repository("nobody/repo")


def test_a_pull_request_opened_elsewhere_is_found_not_duplicated(
    github: GitHubStandIn, forge: GitHubForge, tmp_path: Path
) -> None:
    github.add_repository("acme/shop", {"README.md": "# shop\n"})
    work = worktree_with_change(tmp_path, github.bare("acme/shop"), "task/x")
    forge.push_branch("acme/shop", work, "task/x")
    first = forge.open_pull_request("acme/shop", "task/x", title="X")
    # Creating it straight away is refused the way GitHub refuses it...
    with pytest.raises(PullRequestExists) as raised:
        forge._request(
            "POST", "/repos/acme/shop/pulls", json={"title": "X", "head": "task/x", "base": "main"}
        )
    assert raised.value.status == 422
    assert "A pull request already exists for acme:task/x" in str(raised.value)
    assert as_temporal_failure(raised.value).non_retryable is True
    # ...and a lookup that misses it once (a race) still ends with the one pull request.
    github.respond("GET", r"/api/v3/repos/acme/shop/pulls", 200, [])
    again = forge.open_pull_request("acme/shop", "task/x", title="X")
    assert again.number == first.number and again.created is False
    assert len(github.pulls["acme/shop"]) == 1


def test_errors_map_to_clear_exceptions(
    github: GitHubStandIn, forge: GitHubForge, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    github.add_repository("acme/shop", {"README.md": "# shop\n"})

    with pytest.raises(GitHubNotFound) as missing:
        forge.open_pull_request("acme/none", "task/x", title="X")
    assert missing.value.status == 404
    assert as_temporal_failure(missing.value).non_retryable is True

    with pytest.raises(GitHubValidationError) as invalid:
        forge.open_pull_request("acme/shop", "task/no-such-branch", title="X")
    assert invalid.value.status == 422 and not isinstance(invalid.value, PullRequestExists)

    reset = int(time.time()) + 120
    github.fail(
        "GET",
        r"/api/v3/repos/acme/shop/pulls",
        403,
        "API rate limit exceeded for user ID 1.",
        headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)},
    )
    with pytest.raises(GitHubRateLimited) as limited:
        forge.open_pull_request("acme/shop", "main", title="X")
    assert 100 < limited.value.retry_after <= 120
    retry = as_temporal_failure(limited.value)
    assert isinstance(retry, ApplicationError) and retry.non_retryable is False
    assert retry.next_retry_delay is not None and retry.next_retry_delay.total_seconds() > 100

    github.fail(
        "POST",
        r"/api/v3/.*",
        403,
        "You have exceeded a secondary rate limit.",
        headers={"retry-after": "30"},
    )
    with pytest.raises(GitHubRateLimited) as secondary:
        forge.create_repository("acme/other")
    assert secondary.value.retry_after == 30

    monkeypatch.setenv(TOKEN_ENV, "ghp_wrong")
    with pytest.raises(GitHubAuthError) as unauthorized:
        forge.repository("acme/shop")
    assert unauthorized.value.status == 401 and "Bad credentials" in str(unauthorized.value)
    work = worktree_with_change(tmp_path, github.bare("acme/shop"), "task/y")
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    url = forge.clone_url("acme/shop")
    # Only git sees the wrong token here: the API lookup of the clone URL is skipped.
    monkeypatch.setattr(forge, "clone_url", lambda _full_name: url)
    monkeypatch.setenv(TOKEN_ENV, "ghp_wrong")
    with pytest.raises(GitHubAuthError) as refused:
        forge.push_branch("acme/shop", work, "task/y")
    assert "ghp_wrong" not in str(refused.value)
    assert github.head("acme/shop", "task/y") is None


async def test_the_pull_request_activity_works_with_github(
    github: GitHubStandIn, forge: GitHubForge, database: Database, tmp_path: Path
) -> None:
    github.add_repository("acme/shop", {"README.md": "# shop\n"})
    work = worktree_with_change(tmp_path, github.bare("acme/shop"), "task/gh")
    project = await make_project(database)
    activities = PullRequestActivities(database, forge)
    request = OpenPullRequestInput(
        project_id=project.id,
        task_id="e" * 32,
        repo_full_name="acme/shop",
        branch="task/gh",
        title="Add hello",
        worktree=str(work),
    )
    # The input names the token by nothing at all: the forge holds only its reference.
    assert TOKEN not in request.model_dump_json()
    first = await ActivityEnvironment().run(activities.open_pull_request, request)
    again = await ActivityEnvironment().run(activities.open_pull_request, request)
    assert again.id == first.id
    assert first.url == f"{github.base_url}/acme/shop/pull/1"
    assert first.head_sha == github.head("acme/shop", "task/gh")
    assert first.diff_stat["files_changed"] == 2
    assert len(github.pulls["acme/shop"]) == 1

    # GitHub's refusals reach Temporal as errors that say whether a retry may help.
    other = request.model_copy(update={"branch": "task/other", "worktree": None})
    github.fail("GET", r"/api/v3/repos/acme/shop/pulls", 401, "Bad credentials")
    with pytest.raises(ApplicationError) as refused:
        await ActivityEnvironment().run(activities.open_pull_request, other)
    assert (refused.value.type, refused.value.non_retryable) == ("GitHubAuthError", True)
    forge.token_ref = "env:ORCHESTRATOR_TEST_NOT_SET"
    with pytest.raises(ApplicationError) as unset:
        await ActivityEnvironment().run(activities.open_pull_request, other)
    assert (unset.value.type, unset.value.non_retryable) == ("SecretUnavailable", True)
