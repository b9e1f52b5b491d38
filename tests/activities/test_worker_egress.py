"""From inside a real Worker (no network): the internet is refused with the egress proxy's 403,
logged on the host with the task; a host the operator allows is reached through it.

The Worker is made by ``WorkerActivities.create_container`` for an agent that uses a model, so
it gets the task's gateway directory and the forwarder's routes as production does; the image is
the scripted one (what runs in it here are plain python3 and git). The gateway, and with it the
egress proxy, serves in this process, as the Temporal worker process serves it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest_asyncio
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.workers import CreateContainerInput, WorkerActivities
from core.settings import Settings
from db.engine import Database
from gateway import Gateway, GatewaySettings
from gateway.settings import PYPI_HOSTS
from infra.containers import ContainerRuntime, ExecResult
from infra.workers import EGRESS_PORT, EGRESS_URL, UV_CONFIG, UV_CONFIG_TARGET
from testing.logs import log_lines, logs_to
from testing.standins.server import serve
from testing.waiting import eventually
from testing.workflows import small_runtime

# The host's own server, on a loopback address of the host. Not 127.0.0.1: inside the Worker
# that is the Worker's loopback, which NO_PROXY sends straight there (the gateway's port).
HOST_ADDRESS = "127.0.0.2"


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"hello from the host: {request.url.path}")


@dataclass
class EgressWorker:
    runtime: ContainerRuntime
    worker_id: str
    task_id: str
    log_file: Path
    host_url: str

    async def python(self, code: str) -> ExecResult:
        return await self.run("python3", "-c", code)

    async def run(self, *argv: str) -> ExecResult:
        return await self.runtime.exec(self.worker_id, list(argv), workdir="/", timeout=60)

    def lines(self, event: str) -> list[dict[str, Any]]:
        return [line for line in log_lines(self.log_file) if line["event"] == event]


@pytest_asyncio.fixture
async def worker(
    short_dir: Path,
    tmp_path: Path,
    docker_client: docker.DockerClient,
    scripted_image: str,
    sqlite_database: Database,
    redis: Redis,
    temporal_client: Client,
) -> AsyncIterator[EgressWorker]:
    settings = Settings(home=short_dir, worker_memory="256m", worker_pids=128)
    runtime = small_runtime(docker_client)
    app = Starlette(routes=[Route("/{path:path}", hello)])
    worker_id = f"egress-{uuid.uuid4().hex[:8]}"
    task_id = f"task-{worker_id}"
    with (
        serve(app, host=HOST_ADDRESS) as host_url,
        logs_to(tmp_path / "logs") as log_file,
    ):
        allow = GatewaySettings(egress_allowlist=[HOST_ADDRESS, *PYPI_HOSTS])
        async with Gateway(sqlite_database, allow) as gateway:
            activities = WorkerActivities(
                settings, redis=redis, client=temporal_client, gateway=gateway, runtime=runtime
            )
            request = CreateContainerInput(
                worker_id=worker_id,
                task_id=task_id,
                workflow_id=f"worker-{worker_id}",
                agent="claude",  # one that uses a model: it gets the gateway's directory
                image=scripted_image,
            )
            try:
                await ActivityEnvironment().run(activities.create_container, request)
                made = EgressWorker(runtime, worker_id, task_id, log_file, host_url)
                await eventually(
                    lambda: _listens(made), f"the forwarder on {EGRESS_PORT}", within=20
                )
                yield made
            finally:
                await runtime.remove(worker_id)


async def _listens(worker: EgressWorker) -> bool:
    probe = f"import socket; socket.create_connection(('127.0.0.1', {EGRESS_PORT}), 2).close()"
    return (await worker.python(probe)).exit_code == 0


REFUSED = """
import urllib.request
try:
    urllib.request.urlopen("https://github.com/", timeout=30)
except OSError as exc:
    print(exc)
"""


async def test_the_internet_is_refused_and_logged_with_the_task(worker: EgressWorker) -> None:
    environment = (await worker.run("env")).stdout.splitlines()
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        assert f"{name}={EGRESS_URL}" in environment
    assert "NO_PROXY=127.0.0.1,localhost" in environment

    # python's urllib, as pip meets it: the proxy's refusal, not a bare connection error.
    refused = await worker.python(REFUSED)
    assert refused.exit_code == 0, refused.stderr
    assert (
        "Tunnel connection failed: 403 github.com is not in the egress allowlist" in refused.stdout
    )
    assert "ORCHESTRATOR_EGRESS_ALLOWLIST" in refused.stdout

    # git (libcurl) too.
    cloned = await worker.run("git", "ls-remote", "https://example.com/x")
    assert cloned.exit_code != 0
    assert "CONNECT tunnel failed, response 403" in cloned.stderr

    refusals = {(r["host"], r["port"]): r for r in worker.lines("egress refused")}
    assert set(refusals) == {("github.com", 443), ("example.com", 443)}
    for line in refusals.values():
        assert line["task_id"] == worker.task_id and line["outcome"] == "refused"
        assert line["level"] == "warning" and line["method"] == "CONNECT"


TUNNELLED = """
import http.client, sys
host, port = sys.argv[1], int(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", {port}, timeout=30)
conn.set_tunnel(host, port)  # CONNECT host:port through the proxy, then HTTP inside the tunnel
conn.request("GET", "/through-a-tunnel")
print(conn.getresponse().read().decode())
"""


async def test_an_allowed_host_is_reached_through_the_proxy(worker: EgressWorker) -> None:
    # Plain HTTP with the environment's proxy, as any client does.
    fetched = await worker.python(
        f"import urllib.request; print(urllib.request.urlopen('{worker.host_url}/plain').read()"
        ".decode())"
    )
    assert fetched.exit_code == 0, fetched.stderr
    assert fetched.stdout.strip() == "hello from the host: /plain"

    port = worker.host_url.rsplit(":", 1)[1]
    tunnelled = await worker.run(
        "python3", "-c", TUNNELLED.format(port=EGRESS_PORT), HOST_ADDRESS, port
    )
    assert tunnelled.exit_code == 0, tunnelled.stderr
    assert tunnelled.stdout.strip() == "hello from the host: /through-a-tunnel"

    allowed = worker.lines("egress allowed")
    assert [(a["method"], a["host"], a["port"]) for a in allowed] == [
        ("GET", HOST_ADDRESS, int(port)),
        ("CONNECT", HOST_ADDRESS, int(port)),
    ]
    assert all(a["task_id"] == worker.task_id for a in allowed)
    assert worker.lines("egress refused") == []


# A project with one dependency, locked in the Worker as a coding agent would (uv lock, uv add).
LOCK = """set -e
cd "$(mktemp -d)"
printf '[project]\\nname = "x"\\nversion = "0"\\nrequires-python = ">=3.11"\\n' > pyproject.toml
printf 'dependencies = ["six==1.17.0"]\\n' >> pyproject.toml
uv lock --quiet
cat uv.lock
"""


async def test_uv_locks_against_pypi_through_the_proxy(worker: EgressWorker) -> None:
    """uv's project commands keep PyPI's URLs in the lockfile (portable off the Worker) and
    reach PyPI through the egress proxy, trusting what the host trusts; uv pip keeps the
    registry path (its system configuration)."""
    locked = await worker.run("sh", "-c", LOCK)
    assert locked.exit_code == 0, locked.stdout + locked.stderr
    assert 'source = { registry = "https://pypi.org/simple" }' in locked.stdout
    assert "https://files.pythonhosted.org/packages/" in locked.stdout
    allowed = {(a["host"], a["port"], a["task_id"]) for a in worker.lines("egress allowed")}
    assert ("pypi.org", 443, worker.task_id) in allowed

    configured = await worker.run("cat", UV_CONFIG_TARGET)
    assert configured.stdout == UV_CONFIG
