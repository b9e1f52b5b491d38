"""Session-scoped real servers shared by the whole suite: Temporal, Redis, PostgreSQL."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import docker
import pytest
import pytest_asyncio
from redis.asyncio import Redis
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from core.settings import Settings
from core.temporal import SEARCH_ATTRIBUTES
from db.engine import Database
from db.migrate import upgrade_async
from testing import servers
from testing.registry_mirror import RegistryMirror, registry_server
from testing.ssh_host import SshHost, ssh_host

# The suite never calls a real model API (it would cost money and fail offline): the stand-ins'
# tests set their own keys. Without these, tasks choose their agent only from their options.
for _name in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "ORCHESTRATOR_DEFAULT_AGENT"):
    os.environ.pop(_name, None)


def pytest_unconfigure(config: pytest.Config) -> None:
    # The Temporal core runtime can abort at interpreter exit (sdk-python #300): leave at once.
    os._exit(config._exit_status if hasattr(config, "_exit_status") else 0)  # type: ignore[attr-defined]


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config._exit_status = exitstatus  # type: ignore[attr-defined]


@pytest_asyncio.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(servers.TEMPORAL_BIN),
        data_converter=pydantic_data_converter,
        search_attributes=SEARCH_ATTRIBUTES,
        dev_server_extra_args=servers.TEMPORAL_SQLITE_PRAGMAS,
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
def temporal_client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@pytest.fixture(scope="session")
def temporal_address(temporal_env: WorkflowEnvironment) -> str:
    return temporal_env.client.service_client.config.target_host


@pytest_asyncio.fixture(scope="session")
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(servers.TEMPORAL_TEST_SERVER_BIN),
        data_converter=pydantic_data_converter,
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with servers.redis_server() as url:
        yield url


@pytest_asyncio.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    with servers.postgres_server() as url:
        yield url


async def fresh_postgres_database(server_url: str) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(server_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return f"{server_url}/{name}"


@pytest_asyncio.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database: SQLite (the embedded default) and PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'orchestrator.db'}"
    else:
        url = await fresh_postgres_database(request.getfixturevalue("postgres_server_url"))
    await upgrade_async(url)
    return url


@pytest_asyncio.fixture
async def sqlite_database_url(tmp_path: Path) -> str:
    """A migrated SQLite database, for tests that need one database and not both."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'orchestrator.db'}"
    await upgrade_async(url)
    return url


@pytest_asyncio.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url)
    try:
        yield db
    finally:
        await db.dispose()


@pytest_asyncio.fixture
async def sqlite_database(sqlite_database_url: str) -> AsyncIterator[Database]:
    db = Database(sqlite_database_url)
    try:
        yield db
    finally:
        await db.dispose()


@pytest.fixture(scope="session")
def docker_host() -> Iterator[str]:
    """A Docker API for the session (testing/servers.py)."""
    with servers.docker_host() as url:
        yield url


@pytest.fixture(scope="session")
def docker_client(docker_host: str) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=docker_host, timeout=120)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def scripted_image(docker_client: docker.DockerClient) -> str:
    """The scripted agent's Worker image, built once per content hash (a worker's own builder
    then finds it by the same hash)."""
    from testing.images import image_builder

    return image_builder(docker_client).ensure("scripted").reference


@pytest.fixture(scope="session")
def postgresql_image(docker_client: docker.DockerClient) -> str:
    """The test PostgreSQL's sidecar image (deploy/images/services/postgresql), built once per
    content hash like the Worker images."""
    from testing.images import image_builder

    return image_builder(docker_client).ensure("service-postgresql").reference


@pytest.fixture(scope="session")
def registry_mirror_server() -> Iterator[RegistryMirror]:
    """The registry mirror the loopback target's podman pulls Docker Hub's names from
    (testing/registry_mirror.py), started; what it holds is whatever earlier sessions pushed."""
    with registry_server() as mirror:
        yield mirror


@pytest.fixture(scope="session")
def registry_mirror(
    registry_mirror_server: RegistryMirror, docker_client: docker.DockerClient
) -> RegistryMirror:
    """The registry mirror with the stand-in of ``python:3.12-slim`` in it: built and pushed
    once per hash of its recipe, kept between sessions."""
    from testing.images import image_builder
    from testing.registry_mirror import ensure_python_slim

    ensure_python_slim(registry_mirror_server, image_builder(docker_client))
    return registry_mirror_server


@pytest.fixture(scope="session")
def sshd(registry_mirror_server: RegistryMirror) -> Iterator[SshHost]:
    """A real sshd on loopback (this machine as a deploy target), shared by the session. Its
    sessions' podman resolves Docker Hub's names from the mirror (images in it: use the
    ``registry_mirror`` fixture too)."""
    with ssh_host(registry_mirror_server.target_environment()) as host:
        yield host


# The session's package caches run as a deployment with private upstream indexes would: with
# tokens (the public upstreams ignore them), so the secret scans can look for them.
PYPI_INDEX_TOKEN = "pypi-test-SECRET-7c41d09e2b6a8f35"
NPM_REGISTRY_TOKEN = "npm_testSECRET3e8a1f6c0d94b27e"


@pytest.fixture(scope="session")
def package_caches() -> Iterator[servers.PackageCaches]:
    """proxpi and verdaccio for the session, as the stack runs them (testing/servers.py), with
    a home of their own: their logs say what they asked upstream."""
    home = Path(tempfile.mkdtemp(prefix="orch-registries-"))
    settings = Settings(
        home=home,
        pypi_cache_port=servers.free_port(),
        npm_cache_port=servers.free_port(),
        pypi_index_token=PYPI_INDEX_TOKEN,
        npm_registry_token=NPM_REGISTRY_TOKEN,
    )
    try:
        with servers.package_caches(settings) as caches:
            yield caches
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A fresh directory with a short path, for homes and directories that hold Unix sockets: a
    socket's path has at most 107 bytes, and pytest's tmp_path is often longer."""
    path = Path(tempfile.mkdtemp(prefix="o-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
