"""A repository that says how it runs with a compose file (the `app` template without its
manifest): the EnvAnalyzer picks the container runtime, the image is built on the server, the
compose file's PostgreSQL becomes a database of the app's own there, and it goes live at its
HTTPS name. A kill -9 of the Temporal worker in the middle of the image build: a new worker
builds again and one release serves, with no container, build or process of the dead attempt
left behind."""

from __future__ import annotations

import contextlib
import http.server
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import jinja2
import pytest

from core.enums import ProjectTemplate
from core.paths import APP_TEMPLATE_DIR
from testing.deploy import (
    AppAtName,
    DeployStack,
    commit_files,
    give_base_domain,
)
from testing.servers import free_port
from testing.waiting import eventually
from tests.e2e.deploy.conftest import KillableStack

pytestmark = pytest.mark.usefixtures("registry_mirror")

BASE_DOMAIN = "apps.example.internal"
MANIFEST = ".orchestrator.yml"
TEMPLATE_DOCKERFILE = (APP_TEMPLATE_DIR / "project" / "Dockerfile.jinja").read_text()
# The first build on a machine installs the app's packages into its image.
FIRST_DEPLOY_S = 600.0


def podman(*args: str) -> list[str]:
    listed = subprocess.run(["podman", *args], capture_output=True, text=True, check=True)
    return sorted(listed.stdout.split())


def containers_of(project: str) -> list[str]:
    return podman("ps", "--all", "--format", "{{.Names}}", "--filter", f"name=-{project}-")


def builds_running() -> list[str]:
    found = subprocess.run(["pgrep", "-f", "podman build"], capture_output=True, text=True)
    return found.stdout.split()


async def test_a_compose_project_goes_live_as_a_container_with_a_database_of_its_own(
    deploy_stack: DeployStack,
) -> None:
    stack = deploy_stack
    await give_base_domain(stack, BASE_DOMAIN)
    project = await stack.project("crates", ProjectTemplate.app, remove=(MANIFEST,))
    app = AppAtName(stack, f"crates.{BASE_DOMAIN}")

    first = await stack.run_deploy(project["id"], within=FIRST_DEPLOY_S)
    assert first["status"] == "COMPLETED", first["error"]
    result = first["result"]
    assert (result["runtime"], result["database"]) == ("container", "app_crates")
    assert result["deployed_url"] == f"https://{app.name}:{app.port}/"
    analyzed = [e for e in await stack.events(first["id"]) if e["stage"] == "analyze"][-1]
    assert "runs as a container built from Dockerfile (from its compose" in analyzed["message"]
    assert "a PostgreSQL database of its own" in analyzed["message"]
    await app.learn_ca(stack)
    # The app migrated its database (inside its container, at its start) and writes to it.
    await app.add("in a container")

    again = await stack.run_deploy(project["id"])
    assert again["status"] == "COMPLETED", again["error"]
    assert [item["name"] for item in await app.items()] == ["in a container"]
    assert containers_of("crates") == [f"orchestrator-crates-{again['result']['release']}"]
    await app.add("second")
    back = await stack.run_deploy(project["id"], "rollback")
    assert back["status"] == "COMPLETED", back["error"]
    assert back["result"]["release"] == result["release"]
    assert [item["name"] for item in await app.items()] == ["in a container", "second"]

    # A Dockerfile that does not build: the task fails saying so; what serves serves on.
    shown = (await stack.api.get(f"/projects/{project['id']}")).json()
    repository = Path(str(shown["repository"]).removeprefix("file://"))
    broken = _rendered(TEMPLATE_DOCKERFILE).replace("\nWORKDIR", "\nRUN exit 3\nWORKDIR", 1)
    commit_files(repository, {"Dockerfile": broken}, "Break the image")
    failed = await stack.run_deploy(project["id"])
    assert failed["status"] == "FAILED"
    assert "its image did not build" in failed["error"] and "exit 3" in failed["error"]
    assert len(await app.items()) == 2
    assert containers_of("crates") == [f"orchestrator-crates-{result['release']}"]


@contextlib.contextmanager
def gate(port: int) -> Iterator[threading.Event]:
    """A gate on ``port`` that answers once the event is set (the build waits for it)."""
    opened = threading.Event()

    class Gate(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if opened.is_set() else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Gate)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield opened
    finally:
        server.shutdown()
        server.server_close()


def gated_dockerfile(dockerfile: str, port: int) -> str:
    """The template's Dockerfile with a step that waits for the gate (the build uses the
    server's network): the build is under way, and stays so, until the test opens it."""
    wait = (
        'RUN until python3 -c "import urllib.request; '
        f"urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=1)\" 2>/dev/null; "
        "do sleep 0.2; done"
    )
    lines = dockerfile.splitlines()
    after_from = next(i for i, line in enumerate(lines) if line.startswith("FROM ")) + 1
    return "\n".join([*lines[:after_from], wait, *lines[after_from:]]) + "\n"


async def test_kill_9_of_the_worker_during_the_image_build(
    killable_stack: KillableStack,
) -> None:
    stack = killable_stack.stack
    port = free_port()
    doomed = await killable_stack.worker()
    with gate(port) as opened:
        project = await stack.project(
            "crashed", ProjectTemplate.app, remove=(MANIFEST,),
            Dockerfile=gated_dockerfile(_rendered(TEMPLATE_DOCKERFILE), port),
        )  # fmt: skip
        task = await stack.deploy(project["id"])
        build_logs = stack.apps_root / "crashed" / "logs"
        await eventually(
            lambda: _waits_at_the_gate(build_logs), "the build at the gate", within=120
        )
        killable_stack.kill(doomed)
        opened.set()

        survivor = await killable_stack.worker()
        done = await stack.finished(task["id"], within=FIRST_DEPLOY_S)
        survived = killable_stack.stop(survivor)

    assert done["status"] == "COMPLETED", done["error"]
    release = done["result"]["release"]
    assert await stack.releases_of(task["id"]) == [("RUNNING", release)]
    # One container (the serving release's), no build of the dead attempt still running.
    assert containers_of("crashed") == [f"orchestrator-crashed-{release}"]
    assert builds_running() == []
    # The build really ran twice: the killed worker's attempt and the one that finished.
    attempts = await stack.playbook_attempts(task["id"], release)
    assert max(attempts) >= 2, attempts
    assert survived == 0, killable_stack.log.read_text()[-3000:]


def _rendered(dockerfile: str) -> str:
    """The template's Dockerfile for a backend (its only Jinja: the backend's port and CMD)."""
    return jinja2.Template(dockerfile).render(modules=["backend"], port=8000)


def _waits_at_the_gate(logs: Path) -> bool:
    return any("until python3" in p.read_text(errors="replace") for p in logs.glob("*.build.log"))
