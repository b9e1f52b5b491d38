"""Sealed Workers install packages with pip, uv and npm through the registry path, and the second
Worker that installs the same set is served from the caches alone; the real ``claude`` CLI in
its Worker installs a package with a Bash tool call the same way.

Real parts throughout: Workers made by ``WorkerActivities.create_container`` (the scripted image,
``network_mode=none``), the gateway on the task's socket, the forwarder inside, proxpi and
verdaccio as the stack runs them (the session's, tests/conftest.py) and the real upstreams. That
nothing went upstream for the second Worker is read from the caches' own logs: proxpi logs
``Refreshing '<package>'`` / ``Downloading '<url>'`` for each upstream request, verdaccio one JSON
line per uplink request whose URL is upstream's.

claude's model is the Anthropic stand-in (testing/standins), reached through the same gateway
socket; the stand-in's script asks for the Bash tool first.

The caches run with private-index tokens set, as a deployment's would; the scan at the end shows
they appear in no Worker environment, no log and no file of either home.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import tarfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest
import pytest_asyncio
from redis.asyncio import Redis
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.workers import AgentTurnInput, CreateContainerInput, WorkerActivities
from core.settings import Settings
from db.engine import Database
from gateway import Gateway, GatewaySettings
from infra.containers import ContainerRuntime, ExecResult, container_name
from infra.images import WORKER_HOME
from infra.workers import REGISTRY_ENV
from testing.images import image_builder
from testing.servers import PackageCaches
from testing.standins.anthropic_api import AnthropicStandIn
from testing.standins.recording import ModelScript
from testing.standins.server import serve
from testing.workflows import small_runtime
from tests.conftest import NPM_REGISTRY_TOKEN, PYPI_INDEX_TOKEN

# Small, pure-Python or plain-JS packages, pinned; none of them used by another test, so the
# first Worker's install is a first install for the caches.
PIP_PACKAGE, PIP_MODULE = "idna==3.10", "idna"
UV_PACKAGE, UV_MODULE = "iniconfig==2.0.0", "iniconfig"
NPM_PACKAGE, NPM_MODULE = "is-odd@3.0.1", "is-odd"
# What the claude CLI's Bash tool call runs (the model asks for it): a package no other test
# installs, so proxpi fetches it for this test.
CLAUDE_PACKAGE, CLAUDE_MODULE = "toml==0.10.2", "toml"
CLAUDE_INSTALL = f"python3 -m venv /tmp/env && /tmp/env/bin/pip install --quiet {CLAUDE_PACKAGE}"
# The gateway's model API key: fake; the stand-in takes any.
ANTHROPIC_KEY = "sk-ant-test-SECRET-packages-5e1d8c"
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
    agent: str = "scripted"  # no model: the registry path is every Worker's
    made: list[str] = field(default_factory=list)

    async def create(self) -> str:
        worker_id = f"pkg-{uuid.uuid4().hex[:8]}"
        workspace = self.home / "workspaces" / worker_id  # the agent's working directory
        workspace.mkdir(parents=True)
        request = CreateContainerInput(
            worker_id=worker_id,
            task_id=f"task-{worker_id}",
            workflow_id=f"wf-{worker_id}",
            agent=self.agent,
            image=self.image,
            workspace=str(workspace),
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


@contextlib.asynccontextmanager
async def making_workers(
    home: Path,
    docker_client: docker.DockerClient,
    image: str,
    database: Database,
    redis: Redis,
    temporal_client: Client,
    caches: PackageCaches,
    agent: str = "scripted",
    model_api_url: str | None = None,
) -> AsyncIterator[Workers]:
    """Workers of ``image`` made by the Worker activities, with the gateway on the session's
    caches (and forwarding the model API to ``model_api_url``); removed afterwards."""
    settings = Settings(home=home, worker_memory="512m", worker_pids=256)
    models: dict[str, Any] = {}
    if model_api_url is not None:
        models = {"anthropic_base_url": model_api_url, "anthropic_api_key": ANTHROPIC_KEY}
    gateway_settings = GatewaySettings(
        pypi_cache_url=caches.settings.pypi_cache_url,
        npm_cache_url=caches.settings.npm_cache_url,
        **models,
    )
    runtime = small_runtime(docker_client)
    async with Gateway(database, gateway_settings) as gateway:
        activities = WorkerActivities(
            settings, redis=redis, client=temporal_client, gateway=gateway, runtime=runtime
        )
        made = Workers(activities, runtime, image, caches, home, agent)
        try:
            yield made
        finally:
            for worker_id in made.made:
                await runtime.remove(worker_id)


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
    async with making_workers(
        short_dir,
        docker_client,
        scripted_image,
        sqlite_database,
        redis,
        temporal_client,
        package_caches,
    ) as made:
        yield made


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


async def test_claude_installs_a_package_in_its_worker_with_a_bash_tool_call(
    short_dir: Path,
    docker_client: docker.DockerClient,
    sqlite_database: Database,
    redis: Redis,
    temporal_client: Client,
    package_caches: PackageCaches,
) -> None:
    """The real claude CLI in its Worker image, its model the Anthropic stand-in behind the
    gateway, asks for a Bash tool call that installs a package: it lands, and it came through the
    session's PyPI cache."""
    claude_image = image_builder(docker_client).ensure("claude").reference
    script = ModelScript(commands=[CLAUDE_INSTALL], writes=[], final_text="Installed it.")
    standin = AnthropicStandIn(script)
    with serve(standin.app) as url:
        async with making_workers(
            short_dir,
            docker_client,
            claude_image,
            sqlite_database,
            redis,
            temporal_client,
            package_caches,
            agent="claude",
            model_api_url=url,
        ) as workers:
            worker_id = await workers.create()
            since = package_caches.log_sizes()
            turn = AgentTurnInput(
                worker_id=worker_id,
                task_id=f"task-{worker_id}",
                agent="claude",
                prompt="Install toml 0.10.2 in a virtual environment at /tmp/env.",
                timeout_s=240,
            )
            result = await ActivityEnvironment().run(workers.activities.run_agent_turn, turn)

            assert result.status == "completed", result
            assert result.summary == "Installed it."
            # The model asked for the command once; the CLI ran it and sent its outcome back.
            calls = standin.message_requests()
            assert len(calls) == 2, calls
            assert "tool_result" in json.dumps(calls[1].body)
            imported = await workers.runtime.exec(
                worker_id,
                ["/tmp/env/bin/python", "-c", f"import {CLAUDE_MODULE} as m; print(m.__version__)"],
            )
            assert (imported.exit_code, imported.stdout.strip()) == (0, "0.10.2"), imported
    # The install went through the registry path: proxpi fetched the package for it.
    fetched = package_caches.upstream_requests(since)["pypi"]
    assert any(CLAUDE_MODULE in line for line in fetched), fetched
