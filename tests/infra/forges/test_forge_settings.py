"""Choosing the forge in the settings, and scaffolding a project's repository on GitHub."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.forge import ForgeActivities, ScaffoldRequest
from core.paths import SERVICE_TEMPLATE_DIR
from core.settings import Settings
from infra.forges import make_forge
from infra.forges.github import GitHubForge
from infra.forges.local import LocalForge
from infra.git import git
from testing.standins.github import TOKEN, TOKEN_ENV, github_standin
from testing.standins.github_api import GitHubStandIn


@pytest.fixture
def github(tmp_path: Path) -> Iterator[GitHubStandIn]:
    with github_standin(tmp_path / "github") as state:
        yield state


def github_settings(github: GitHubStandIn, home: Path, **more: object) -> Settings:
    return Settings(
        home=home,
        forge="github",
        github_owner="acme",
        github_token_ref=f"env:{TOKEN_ENV}",
        github_api_url=f"{github.base_url}/api/v3",
        **more,  # type: ignore[arg-type]
    )


def git_out(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def test_github_without_owner_or_token_ref_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ORCHESTRATOR_FORGE", "github")
    with pytest.raises(ValidationError) as neither:
        Settings()
    message = str(neither.value)
    assert "ORCHESTRATOR_FORGE=github needs ORCHESTRATOR_GITHUB_OWNER" in message
    assert "ORCHESTRATOR_GITHUB_TOKEN_REF" in message

    monkeypatch.setenv("ORCHESTRATOR_GITHUB_OWNER", "acme")
    with pytest.raises(ValidationError) as no_token:
        Settings()
    assert "needs ORCHESTRATOR_GITHUB_TOKEN_REF" in str(no_token.value)
    assert "ORCHESTRATOR_GITHUB_OWNER" not in str(no_token.value)

    # The token itself where its reference belongs: refused, and not repeated in the error.
    monkeypatch.setenv("ORCHESTRATOR_GITHUB_TOKEN_REF", TOKEN)
    with pytest.raises(ValidationError) as raw:
        Settings()
    assert "env:NAME or file:PATH" in str(raw.value)
    assert TOKEN not in str(raw.value)

    monkeypatch.setenv("ORCHESTRATOR_GITHUB_TOKEN_REF", f"env:{TOKEN_ENV}")
    settings = Settings()
    assert (settings.forge, settings.github_owner) == ("github", "acme")
    assert settings.github_api_url == "https://api.github.com" and settings.github_private


def test_the_forge_follows_the_settings(tmp_path: Path) -> None:
    local = make_forge(Settings(home=tmp_path))
    assert isinstance(local, LocalForge) and local.root == tmp_path / "forge"

    forge = make_forge(
        Settings(
            home=tmp_path,
            forge="github",
            github_owner="acme",
            github_token_ref="file:/run/secrets/github",
            github_template="acme/service-template",
            github_private=False,
        )
    )
    assert isinstance(forge, GitHubForge)
    assert (forge.default_owner, forge.template, forge.private) == (
        "acme",
        "acme/service-template",
        False,
    )
    assert forge.token_ref == "file:/run/secrets/github"
    assert forge.git_origin == "https://github.com/"
    enterprise = GitHubForge("env:X", default_owner="o", api_url="https://ghe.example/api/v3")
    assert enterprise.git_origin == "https://ghe.example/"

    with pytest.raises(ValueError, match="ORCHESTRATOR_GITHUB_OWNER"):
        make_forge(Settings.model_construct(forge="github"))


async def test_scaffolding_renders_the_template_into_a_new_github_repository(
    github: GitHubStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    settings = github_settings(github, tmp_path / "home")
    forge = make_forge(settings)
    activities = ForgeActivities(SERVICE_TEMPLATE_DIR, forge)
    request = ScaffoldRequest(project_id="p1", project_name="Web Shop", description="A shop")

    result = await ActivityEnvironment().run(activities.scaffold_repository, request)

    assert result.created is True
    assert result.repo_full_name == "acme/web-shop"
    assert result.repository == f"{github.base_url}/acme/web-shop.git"
    assert "POST /api/v3/orgs/acme/repos" in github.requests
    assert github.repos["acme/web-shop"]["private"] is True
    bare = github.bare("acme/web-shop")
    assert result.commit_sha == git_out(bare, "rev-parse", "main")
    assert git_out(bare, "log", "-1", "--format=%an %s") == "orchestrator Scaffold Web Shop"
    assert "Makefile" in git_out(bare, "ls-tree", "--name-only", "main").split()
    assert not settings.forge_dir.exists()  # nothing went to the local forge

    again = await ActivityEnvironment().run(activities.scaffold_repository, request)
    assert (again.created, again.commit_sha) == (False, result.commit_sha)

    # A task's workspace is cloned by plain git: the forge lends it the token for that process.
    work = tmp_path / "work"
    git("clone", "--quiet", result.repository, str(work))
    assert git_out(work, "rev-parse", "HEAD") == result.commit_sha
    config = (work / ".git" / "config").read_text()
    assert TOKEN not in config and "extraheader" not in config


async def test_scaffolding_from_a_github_template_repository(
    github: GitHubStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    github.add_repository("acme/service-template", {"README.md": "# template\n"}, is_template=True)
    settings = github_settings(github, tmp_path / "home", github_template="acme/service-template")
    activities = ForgeActivities(SERVICE_TEMPLATE_DIR, make_forge(settings))

    result = await ActivityEnvironment().run(
        activities.scaffold_repository, ScaffoldRequest(project_id="p2", project_name="shop")
    )

    # GitHub made it from the template repository: the copier template is not rendered.
    assert result.created is True and result.repo_full_name == "acme/shop"
    assert "POST /api/v3/repos/acme/service-template/generate" in github.requests
    bare = github.bare("acme/shop")
    assert result.commit_sha == git_out(bare, "rev-parse", "main")
    assert git_out(bare, "ls-tree", "--name-only", "main") == "README.md"
    assert not any("git-receive-pack" in r for r in github.requests)


async def test_a_refused_token_fails_the_scaffold_without_retries(
    github: GitHubStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "ghp_revoked")
    settings = github_settings(github, tmp_path / "home")
    activities = ForgeActivities(SERVICE_TEMPLATE_DIR, make_forge(settings))
    with pytest.raises(ApplicationError) as refused:
        await ActivityEnvironment().run(
            activities.scaffold_repository, ScaffoldRequest(project_id="p3", project_name="shop")
        )
    assert (refused.value.type, refused.value.non_retryable) == ("GitHubAuthError", True)
    assert "Bad credentials" in str(refused.value) and "ghp_revoked" not in str(refused.value)
    assert github.repos == {}
