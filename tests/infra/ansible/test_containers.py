"""Apps that run as containers on the deploy target: the `app` template's backend, its image
built on the server by podman from the release's files (FROM python:3.12-slim resolving from the
tests' registry mirror, as Docker Hub would on a real server), its migrations run in a container
of that image, its database on the server's cluster reached from inside, behind the edge like any
app; a Dockerfile that does not build, and nothing left behind."""

from __future__ import annotations

import subprocess
from pathlib import Path

import copier
import httpx
import pytest

from core.paths import TEMPLATES_DIR
from infra.ansible import AnsibleRunner, PlaybookRun, SshTarget
from testing.apps import APP, deploy, undeploy
from testing.servers import free_port
from tests.infra.ansible.conftest import commit_all, git, new_repository
from tests.infra.ansible.test_database import new_url

pytestmark = pytest.mark.usefixtures("registry_mirror")

CONTAINER = {"context": ".", "dockerfile": "Dockerfile", "port": 8000}
MIGRATE = "alembic upgrade head"
IMAGES = f"localhost/orchestrator-apps/{APP}"
# The first build on a machine installs the app's packages in its image (later ones reuse the
# layer: the lockfile did not change).
BUILD_S = 600


@pytest.fixture(scope="session")
def shelf_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `app` template's backend, committed on `main`; `broken-image` adds a build step
    that fails."""
    repo = tmp_path_factory.mktemp("shelf") / "repo"
    data = {"project_name": "shelf", "modules": ["backend"]}
    copier.run_copy(str(TEMPLATES_DIR / "app"), str(repo), data=data, defaults=True, quiet=True)
    new_repository(repo, "Scaffold")
    git(repo, "checkout", "-q", "-b", "broken-image")
    dockerfile = repo / "Dockerfile"
    lines = dockerfile.read_text().splitlines()
    after_from = next(i for i, line in enumerate(lines) if line.startswith("FROM ")) + 1
    lines.insert(after_from, "RUN echo 'the build breaks here' && exit 3")
    dockerfile.write_text("\n".join(lines) + "\n")
    commit_all(repo, "Break the image")
    git(repo, "checkout", "-q", "main")
    return repo


def deploy_shelf(
    runner: AnsibleRunner,
    target: SshTarget,
    repo: Path,
    apps_root: Path,
    release: str,
    port: int,
    url: str,
    ref: str = "main",
) -> PlaybookRun:
    return deploy(
        runner, target, repo, apps_root, release, port, ref=ref,
        database_url=url, release_command=MIGRATE,
        extravars={"start_command": "", "container": CONTAINER, "health_retries": 60},
        timeout_s=BUILD_S,
    )  # fmt: skip


def containers() -> list[str]:
    """The names of this app's containers, running or not, on this machine's podman."""
    listed = subprocess.run(
        ["podman", "ps", "--all", "--format", "{{.Names}}",
         "--filter", f"name=orchestrator-{APP}-"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return sorted(listed.stdout.split())


def images() -> list[str]:
    listed = subprocess.run(
        ["podman", "images", "--format", "{{.Repository}}:{{.Tag}}",
         "--filter", f"reference={IMAGES}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return sorted(listed.stdout.split())


def test_a_container_app_is_built_on_the_server_keeps_its_data_and_leaves_nothing_behind(
    runner: AnsibleRunner, target: SshTarget, shelf_repo: Path, apps_root: Path
) -> None:
    port = free_port()
    url, password = new_url(apps_root, "app_shelf")

    first = deploy_shelf(runner, target, shelf_repo, apps_root, "c1", port, url)
    assert first.ok, first.failed_msg
    assert first.data["database"] == "app_shelf"
    # Served through the edge on the app's port; the migration made its table before that.
    created = httpx.post(f"http://127.0.0.1:{port}/items", json={"name": "kept"}, timeout=10)
    assert created.status_code == 201, created.text
    assert containers() == [f"orchestrator-{APP}-c1"]
    build_log = (apps_root / APP / "logs" / "c1.build.log").read_text()
    assert password not in build_log

    second = deploy_shelf(runner, target, shelf_repo, apps_root, "c2", port, url)
    assert second.ok, second.failed_msg
    assert second.data["previous_release"] == "c1"
    listed = httpx.get(f"http://127.0.0.1:{port}/items", timeout=10).json()
    assert [item["name"] for item in listed] == ["kept"]
    # The old release's container is gone, its image kept for a rollback.
    assert containers() == [f"orchestrator-{APP}-c2"]
    assert images() == [
        f"localhost/orchestrator-apps/{APP}:c1",
        f"localhost/orchestrator-apps/{APP}:c2",
    ]

    broken = deploy_shelf(
        runner, target, shelf_repo, apps_root, "c3", port, url, ref="broken-image"
    )
    assert not broken.ok
    assert broken.failed_task == "Refuse a release whose image does not build"
    assert "release c3: its image did not build" in broken.failed_msg
    assert "the build breaks here" in broken.failed_msg
    assert httpx.get(f"http://127.0.0.1:{port}/items", timeout=10).status_code == 200
    assert containers() == [f"orchestrator-{APP}-c2"]

    gone = undeploy(runner, target, apps_root)
    assert gone.ok, gone.failed_msg
    assert containers() == [] and images() == []
