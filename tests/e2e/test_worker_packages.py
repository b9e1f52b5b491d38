"""Sealed Workers install packages with pip, uv and npm through the registry path, and the second
Worker that installs the same set is served from the caches alone.

Real parts throughout: Workers made by ``WorkerActivities.create_container`` (the scripted image,
``network_mode=none``), the gateway on the task's socket, the forwarder inside, proxpi and
verdaccio as the stack runs them (the session's, tests/conftest.py) and the real upstreams. That
nothing went upstream for the second Worker is read from the caches' own logs: proxpi logs
``Refreshing '<package>'`` / ``Downloading '<url>'`` for each upstream request, verdaccio one JSON
line per uplink request whose URL is upstream's.

The caches run with private-index tokens set, as a deployment's would; the scan at the end shows
they appear in no Worker environment, no log and no file of either home.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest
import pytest_asyncio
from redis.asyncio import Redis
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.workers import CreateContainerInput, WorkerActivities
from core.settings import Settings
from db.engine import Database
from gateway import Gateway, GatewaySettings
from infra.containers import ContainerRuntime, ExecResult, container_name
from infra.images import WORKER_HOME
from infra.workers import REGISTRY_ENV
from testing.servers import PackageCaches
from testing.workflows import small_runtime
from tests.conftest import NPM_REGISTRY_TOKEN, PYPI_INDEX_TOKEN

# Small, pure-Python or plain-JS packages, pinned; none of them used by another test, so the
# first Worker's install is a first install for the caches.
PIP_PACKAGE, PIP_MODULE = "idna==3.10", "idna"
UV_PACKAGE, UV_MODULE = "iniconfig==2.0.0", "iniconfig"
NPM_PACKAGE, NPM_MODULE = "is-odd@3.0.1", "is-odd"
# pip into a venv made by the image's python3; uv into one uv makes; npm into a new project. Each
# imports what it installed, so a half-installed package fails here.
INSTALL = f"""set -eu
cd "$HOME"
timed() {{  # timed WHAT COMMAND...: prints "took WHAT <start> <end>"
    local what=$1 start=$EPOCHREALTIME
    shift
    "$@"
    echo "took $what $start $EPOCHREALTIME"
}}
python3 -m venv pip-venv
timed pip pip-venv/bin/pip install --quiet {PIP_PACKAGE}
pip-venv/bin/python -c 'import {PIP_MODULE}'
uv venv --quiet uv-venv
VIRTUAL_ENV=$HOME/uv-venv timed uv uv pip install --quiet {UV_PACKAGE}
uv-venv/bin/python -c 'import {UV_MODULE}'
mkdir npm-project && cd npm-project
npm init --yes > /dev/null
timed npm npm install --silent {NPM_PACKAGE}
node -e 'require("{NPM_MODULE}")'
echo installed
"""


@dataclass
class Workers:
    activities: WorkerActivities
    runtime: ContainerRuntime
    image: str
    caches: PackageCaches
    home: Path
    made: list[str] = field(default_factory=list)

    async def create(self) -> str:
        worker_id = f"pkg-{uuid.uuid4().hex[:8]}"
        request = CreateContainerInput(
            worker_id=worker_id,
            task_id=f"task-{worker_id}",
            workflow_id=f"wf-{worker_id}",
            agent="scripted",  # no model: the registry path is every Worker's
            image=self.image,
        )
        self.made.append(worker_id)
        await ActivityEnvironment().run(self.activities.create_container, request)
        return worker_id

    async def install(self, worker_id: str) -> tuple[ExecResult, dict[str, float]]:
        """Run INSTALL; returns its result and the seconds each tool's install took."""
        started = time.monotonic()
        done = await self.runtime.exec(worker_id, ["bash", "-c", INSTALL], workdir="/", timeout=300)
        took = {"all": time.monotonic() - started}
        for what, start, end in re.findall(r"^took (\S+) (\S+) (\S+)$", done.stdout, re.M):
            took[what] = float(end) - float(start)
        return done, took


@pytest_asyncio.fixture
async def workers(
    short_dir: Path,
    docker_client: docker.DockerClient,
    scripted_image: str,
    sqlite_database: Database,
    redis: Redis,
    temporal_client: Client,
    package_caches: PackageCaches,
) -> AsyncIterator[Workers]:
    settings = Settings(home=short_dir, worker_memory="512m", worker_pids=256)
    gateway_settings = GatewaySettings(
        pypi_cache_url=package_caches.settings.pypi_cache_url,
        npm_cache_url=package_caches.settings.npm_cache_url,
    )
    runtime = small_runtime(docker_client)
    async with Gateway(sqlite_database, gateway_settings) as gateway:
        activities = WorkerActivities(
            settings, redis=redis, client=temporal_client, gateway=gateway, runtime=runtime
        )
        made = Workers(activities, runtime, scripted_image, package_caches, short_dir)
        try:
            yield made
        finally:
            for worker_id in made.made:
                await runtime.remove(worker_id)


async def test_a_second_worker_installs_the_same_packages_from_the_caches_alone(
    workers: Workers,
    docker_client: docker.DockerClient,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caches = workers.caches
    first = await workers.create()
    container = docker_client.containers.get(container_name(first))
    assert container.attrs["HostConfig"]["NetworkMode"] == "none"

    since = caches.log_sizes()
    done, first_s = await workers.install(first)
    assert done.exit_code == 0 and "installed" in done.stdout, (done.stdout, done.stderr)
    fetched = caches.upstream_requests(since)
    assert fetched["pypi"] and fetched["npm"], fetched  # a first install: from upstream

    second = await workers.create()
    since = caches.log_sizes()
    done, cached_s = await workers.install(second)
    assert done.exit_code == 0 and "installed" in done.stdout, (done.stdout, done.stderr)
    assert caches.upstream_requests(since) == {"pypi": [], "npm": []}

    # The gateway logged the second Worker's requests with its task, for both registries.
    logged = capfd.readouterr()
    lines = [line for line in (logged.out + logged.err).splitlines() if "registry request" in line]
    task = f"task-{second}"
    for registry, name in (("pypi", "idna"), ("pypi", "iniconfig"), ("npm", "is-odd")):
        assert any(task in line and registry in line and name in line for line in lines), lines
    print("\ninstalls in a sealed Worker, seconds (first, then from the caches):")
    for what in ("pip", "uv", "npm", "all"):
        print(f"  {what}: {first_s[what]:.2f} {cached_s[what]:.2f}")


async def test_no_private_index_token_in_a_worker_a_log_or_a_file(
    workers: Workers,
    docker_client: docker.DockerClient,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caches = workers.caches
    worker_id = await workers.create()
    done, _ = await workers.install(worker_id)
    assert done.exit_code == 0, (done.stdout, done.stderr)
    tokens = (PYPI_INDEX_TOKEN, NPM_REGISTRY_TOKEN)

    places: dict[str, str] = {}
    # The Worker: its container (environment, command, mounts), and what a process in it sees.
    container = docker_client.containers.get(container_name(worker_id))
    places["container"] = json.dumps(container.attrs, default=str)
    env = container.attrs["Config"]["Env"]
    assert all(f"{name}={value}" in env for name, value in REGISTRY_ENV.items())
    seen = await workers.runtime.exec(
        worker_id, ["sh", "-c", "env; cat ~/.npmrc 2>/dev/null; true"]
    )
    places["worker env"] = seen.stdout
    # Every file the Worker's tools wrote in its home (caches, venvs, lockfiles, logs), read
    # here: searching in the Worker would put the tokens there.
    archive = io.BytesIO(b"".join(container.get_archive(WORKER_HOME)[0]))
    with tarfile.open(fileobj=archive) as tar:
        for member in tar.getmembers():
            handle = tar.extractfile(member) if member.isfile() else None
            if handle is not None:
                places[f"worker file {member.name}"] = handle.read().decode(errors="replace")
    assert any("is-odd" in place for place in places)
    # The logs: the caches' own, and the gateway's (this process's output).
    places["pypi cache log"] = caches.pypi.log()
    places["npm cache log"] = caches.npm.log()
    logged = capfd.readouterr()
    places["gateway log"] = logged.out + logged.err
    assert "registry request" in places["gateway log"]
    # Every file under the caches' home (verdaccio's configuration, storage, proxpi's files) and
    # the orchestrator's home of this test (gateway sockets' directories).
    for home in (caches.settings.home_dir, workers.home):
        for path in sorted(p for p in home.rglob("*") if p.is_file() and not p.is_symlink()):
            places[f"file {path}"] = path.read_bytes().decode(errors="replace")
    assert any("config.yaml" in place for place in places)

    leaks = [(place, token) for place, text in places.items() for token in tokens if token in text]
    assert leaks == []
    # The scan would have found them: each cache's own process holds its token.
    for cache, token in ((caches.pypi, PYPI_INDEX_TOKEN), (caches.npm, NPM_REGISTRY_TOKEN)):
        assert token in Path(f"/proc/{cache.pid}/environ").read_bytes().decode(errors="replace")
