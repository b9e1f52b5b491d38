"""Fixtures of the deploy tests: one sshd for the session, a deploy stack per test (its worker in
this process, or in processes a test spawns and kills)."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest_asyncio
from redis.asyncio import Redis
from temporalio.client import Client

from db.engine import Database
from testing.deploy import DeployStack, deploy_stack_on
from testing.ssh_host import SshHost
from testing.worker_process import spawn_worker, stop, wait_ready, worker_env


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
    (testing/worker_process.py), which a test kills; their output goes to ``log``. Every worker
    started is stopped at the end, whatever happened."""

    stack: DeployStack
    env: dict[str, str]
    log: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    async def worker(self) -> subprocess.Popen[bytes]:
        """A new worker process, once it polls its task queues."""
        started = spawn_worker(self.env, self.log)
        self.workers.append(started)
        await wait_ready(self.stack.settings, started)
        return started

    @staticmethod
    def kill(worker: subprocess.Popen[bytes]) -> None:
        worker.send_signal(signal.SIGKILL)
        assert worker.wait(10) == -signal.SIGKILL

    def stop(self, worker: subprocess.Popen[bytes]) -> int:
        """Stop ``worker`` as a person would (SIGTERM); its exit status."""
        stop(worker)
        return worker.returncode


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
        killable = KillableStack(stack, env, tmp_path / "workers.log")
        try:
            yield killable
        finally:
            for worker in killable.workers:
                stop(worker)
