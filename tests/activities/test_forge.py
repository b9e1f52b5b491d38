"""The local forge and the scaffold activity, run through Temporal's ActivityEnvironment."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.forge import FindRepositoryInput, ForgeActivities, ScaffoldRequest
from core.paths import SERVICE_TEMPLATE_DIR
from infra.forges.base import slugify
from infra.forges.local import LocalForge
from testing.workflows import bare_repositories, commit_count, git_out


def request(**overrides: object) -> ScaffoldRequest:
    values: dict[str, object] = {"project_id": "p1", "project_name": "My App", "modules": []}
    return ScaffoldRequest.model_validate({**values, **overrides})


async def test_scaffold_creates_one_repository_and_is_idempotent(tmp_path: Path) -> None:
    forge_dir = tmp_path / "forge"
    activities = ForgeActivities(SERVICE_TEMPLATE_DIR, LocalForge(forge_dir))
    env = ActivityEnvironment()
    beats: list[tuple[object, ...]] = []
    env.on_heartbeat = lambda *details: beats.append(details)

    first = await env.run(activities.scaffold_repository, request())
    again = await env.run(activities.scaffold_repository, request())

    assert first.created is True and again.created is False
    assert first.repo_full_name == again.repo_full_name == "local/my-app"
    assert first.commit_sha == again.commit_sha
    repos = bare_repositories(forge_dir)
    assert repos == [forge_dir / "local" / "my-app.git"]
    assert first.repository == repos[0].resolve().as_uri()
    assert commit_count(repos[0]) == 1
    assert git_out(repos[0], "rev-parse", "main") == first.commit_sha
    assert beats, "the activity heartbeats while it works"
    # The clone URL works for a plain git clone.
    clone = tmp_path / "clone"
    git_out(tmp_path, "clone", "--quiet", first.repository, str(clone))
    assert (clone / ".orchestrator.yml").is_file()
    assert "- backend" in (clone / ".copier-answers.yml").read_text()  # the default module


async def test_concurrent_scaffolds_make_one_commit(tmp_path: Path) -> None:
    forge_dir = tmp_path / "forge"
    activities = ForgeActivities(SERVICE_TEMPLATE_DIR, LocalForge(forge_dir))
    results = await asyncio.gather(
        *(ActivityEnvironment().run(activities.scaffold_repository, request()) for _ in range(4))
    )
    assert len({r.commit_sha for r in results}) == 1
    assert sorted(r.created for r in results).count(True) == 1
    repos = bare_repositories(forge_dir)
    assert len(repos) == 1 and commit_count(repos[0]) == 1


async def test_find_repository(tmp_path: Path) -> None:
    activities = ForgeActivities(SERVICE_TEMPLATE_DIR, LocalForge(tmp_path))
    env = ActivityEnvironment()
    lookup = FindRepositoryInput(project_id="p1", repo_full_name="local/my-app")
    assert await env.run(activities.find_repository, lookup) is None
    made = await env.run(activities.scaffold_repository, request())
    found = await env.run(activities.find_repository, lookup)
    assert found is not None and found.commit_sha == made.commit_sha and not found.created


@pytest.mark.parametrize(
    ("overrides", "error_type", "words"),
    [
        ({"modules": ["frontend"]}, "InvalidScaffoldRequest", "template refused"),
        ({"repo_full_name": "../escape"}, "InvalidScaffoldRequest", "owner/name"),
        ({"repo_full_name": "local/../x"}, "InvalidScaffoldRequest", "owner/name"),
        ({"project_name": "!!!"}, "InvalidScaffoldRequest", "no repository name"),
    ],
)
async def test_requests_no_retry_can_fix_fail_for_good(
    tmp_path: Path, overrides: dict[str, object], error_type: str, words: str
) -> None:
    activities = ForgeActivities(SERVICE_TEMPLATE_DIR, LocalForge(tmp_path / "forge"))
    with pytest.raises(ApplicationError) as failed:
        await ActivityEnvironment().run(activities.scaffold_repository, request(**overrides))
    assert failed.value.non_retryable and failed.value.type == error_type
    assert words in failed.value.message


async def test_missing_template_fails_for_good(tmp_path: Path) -> None:
    activities = ForgeActivities(tmp_path / "nowhere", LocalForge(tmp_path / "forge"))
    with pytest.raises(ApplicationError) as failed:
        await ActivityEnvironment().run(activities.scaffold_repository, request())
    assert failed.value.non_retryable and failed.value.type == "TemplateMissing"
    # Nothing was pushed, so a later attempt with the template present starts cleanly.
    assert LocalForge(tmp_path / "forge").head("local/my-app") is None


def test_slugify() -> None:
    assert slugify("Shop API_v2") == "shop-api_v2"
    assert slugify("site.git") == "site"
    with pytest.raises(ValueError):
        slugify("///")


def test_create_is_idempotent_and_leaves_no_staging(tmp_path: Path) -> None:
    forge = LocalForge(tmp_path)
    forge.create("local/a")
    forge.create("local/a")
    assert [p.name for p in (tmp_path / "local").iterdir()] == ["a.git"]
    assert forge.head("local/a") is None  # no branch before the first push
