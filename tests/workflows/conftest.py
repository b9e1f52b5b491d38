"""Fixtures of the workflow tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import docker
import pytest_asyncio
from redis.asyncio import Redis
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from db.engine import Database
from testing.workflows import running_worker, small_runtime
from tests.workflows.mocks import Fakes


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


@pytest_asyncio.fixture
async def fakes(time_skipping_env: WorkflowEnvironment) -> AsyncIterator[Fakes]:
    """The real task workflows on the time-skipping test server, over stand-in activities and
    graph nodes the test sets up (tests/workflows/mocks.py)."""
    async with Fakes(time_skipping_env).running() as made:
        yield made
