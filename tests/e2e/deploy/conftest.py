"""Fixtures of the deploy tests: one sshd for the session, a deploy stack per test (its worker in
this process, or in processes a test spawns and kills)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest_asyncio
from redis.asyncio import Redis
from temporalio.client import Client

from db.engine import Database
from testing.deploy import DeployStack, deploy_stack_on
from testing.ssh_host import SshHost
from testing.worker_process import worker_env


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


@dataclass
class KillableStack:
    """A deploy stack with no worker of its own: ``env`` starts worker processes for it
    (testing/worker_process.py), which a test kills; their output goes to ``log``."""

    stack: DeployStack
    env: dict[str, str]
    log: Path


@pytest_asyncio.fixture
async def killable_stack(
    sqlite_database: Database,
    sqlite_database_url: str,
    redis: Redis,
    redis_url: str,
    temporal_client: Client,
    temporal_address: str,
    sshd: SshHost,
    tmp_path: Path,
) -> AsyncIterator[KillableStack]:
    home = tmp_path / "home"
    async with deploy_stack_on(
        sqlite_database, redis, temporal_client, sshd, home, in_process_worker=False
    ) as stack:
        env = worker_env(
            home,
            database_url=sqlite_database_url,
            redis_url=redis_url,
            temporal_address=temporal_address,
            task_queue=stack.queue,
            ORCHESTRATOR_DEPLOY_PORTS=stack.settings.deploy_ports,
            ORCHESTRATOR_DEPLOY_HEALTH_TIMEOUT_S="30",
        )
        yield KillableStack(stack, env, tmp_path / "workers.log")
