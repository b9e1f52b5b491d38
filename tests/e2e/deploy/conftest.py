"""Fixtures of the deploy tests: one sshd for the session, a deploy stack per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from redis.asyncio import Redis
from temporalio.client import Client

from db.engine import Database
from testing.deploy import DeployStack, deploy_stack_on
from testing.ssh_host import SshHost


@pytest_asyncio.fixture
async def deploy_stack(
    sqlite_database: Database,
    redis: Redis,
    temporal_client: Client,
    sshd: SshHost,
    tmp_path: Path,
) -> AsyncIterator[DeployStack]:
    async with deploy_stack_on(
        sqlite_database, redis, temporal_client, sshd, tmp_path / "home"
    ) as stack:
        yield stack
