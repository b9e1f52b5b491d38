"""Fixtures of the workflow tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import docker
import pytest_asyncio
from redis.asyncio import Redis
from temporalio.client import Client

from api.db import Database
from tests.workflows.helpers import running_worker, small_runtime


@pytest_asyncio.fixture
async def worker_queue(
    temporal_client: Client,
    docker_client: docker.DockerClient,
    sqlite_database: Database,
    redis: Redis,
    tmp_path: Path,
) -> AsyncIterator[str]:
    """The task queue of a real worker running Workers with test-sized limits."""
    async with running_worker(
        temporal_client,
        sqlite_database,
        redis,
        tmp_path / "home",
        runtime=small_runtime(docker_client),
    ) as queue:
        yield queue
