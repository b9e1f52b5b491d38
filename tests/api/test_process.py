"""``python -m api`` as the supervisor runs it: killed between the commit and the XADD of a task,
restarted, the message still goes out exactly once and the task starts; SIGTERM stops it
cleanly; logs are JSON."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from sqlmodel import select
from temporalio.client import Client

from bridges.consumer import Bridge
from bridges.routes import routes
from core.contracts.engineering import ENGINEERING_QUEUE, EngineeringMessage
from core.faults import CRASH_AT_ENV
from core.paths import REPO_ROOT
from core.readiness import is_ready, ready_file
from core.settings import Settings
from db.engine import Database
from db.tables import OutboxMessage, Project, Task, User
from db.users import ensure_admin_key
from testing.servers import free_port
from tests.api.conftest import auth

REPO = REPO_ROOT


@pytest.fixture
def api_env(
    tmp_path: Path, sqlite_database_url: str, redis_url: str, temporal_address: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env.update(
        ORCHESTRATOR_HOME=str(tmp_path / "home"),
        ORCHESTRATOR_API_PORT=str(free_port()),
        DATABASE_URL=sqlite_database_url,
        REDIS_URL=redis_url,
        TEMPORAL_ADDRESS=temporal_address,
    )
    return env


@contextmanager
def api_process(env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-m", "api"], cwd=REPO, env=env)
    try:
        settings = Settings(home=Path(env["ORCHESTRATOR_HOME"]))
        deadline = time.monotonic() + 30
        while not is_ready(settings, "api", proc.pid):
            assert proc.poll() is None, f"the API exited with {proc.returncode}"
            assert time.monotonic() < deadline, "the API did not become ready"
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def _wait_until_published(db: Database, redis: Redis, deadline: float) -> None:
    while True:
        async with db.session() as session:
            pending = (
                await session.exec(select(OutboxMessage).where(OutboxMessage.published_at == None))  # noqa: E711
            ).all()
        if not pending and await redis.xlen(ENGINEERING_QUEUE):
            return
        assert time.monotonic() < deadline, "the relay did not send the message"
        await asyncio.sleep(0.1)


async def _bridge_once(redis: Redis, temporal_client: Client) -> None:
    """Run a real bridge until it has taken everything on the queue."""
    queue = f"api-crash-{uuid.uuid4().hex[:8]}"  # no worker polls it: the run stays visible
    bridge = Bridge(redis, temporal_client, routes(Settings(temporal_task_queue=queue)))
    stop = asyncio.Event()
    running = asyncio.create_task(bridge.run(stop))
    deadline = time.monotonic() + 15
    try:
        while True:
            groups = await redis.xinfo_groups(ENGINEERING_QUEUE)
            if groups and groups[0]["pending"] == 0 and groups[0]["lag"] == 0:
                return
            assert time.monotonic() < deadline, "the bridge did not take the message"
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(running, 15)


async def test_crash_between_commit_and_xadd_loses_nothing(
    api_env: dict[str, str],
    sqlite_database: Database,
    redis: Redis,
    temporal_client: Client,
    tmp_path: Path,
) -> None:
    home = Path(api_env["ORCHESTRATOR_HOME"])
    key = await ensure_admin_key(sqlite_database, home / "api_key")
    async with sqlite_database.session() as session:
        admin = (await session.exec(select(User))).one()
        project = Project(name="shop", owner_id=admin.id)
        session.add(project)
        await session.commit()
    base_url = f"http://127.0.0.1:{api_env['ORCHESTRATOR_API_PORT']}"
    body = {"project_id": project.id, "spec": "add a /ping endpoint"}

    with api_process({**api_env, CRASH_AT_ENV: "outbox.before_xadd"}) as proc:
        async with httpx.AsyncClient(base_url=base_url, headers=auth(key)) as client:
            with pytest.raises(httpx.TransportError):  # the process dies mid-request
                await client.post("/tasks", json=body)
        assert proc.wait(10) == -signal.SIGKILL

    async with sqlite_database.session() as session:
        task = (await session.exec(select(Task))).one()  # the commit happened...
    assert await redis.xlen(ENGINEERING_QUEUE) == 0  # ...the XADD did not

    with api_process(api_env) as proc:
        await _wait_until_published(sqlite_database, redis, time.monotonic() + 15)
        entries = await redis.xrange(ENGINEERING_QUEUE)
        assert len(entries) == 1
        assert EngineeringMessage.from_fields(entries[0][1]).task_id == task.id
        async with httpx.AsyncClient(base_url=base_url, headers=auth(key)) as client:
            assert (await client.get(f"/tasks/{task.id}")).json()["status"] == "QUEUED"
        await _bridge_once(redis, temporal_client)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    assert not ready_file(Settings(home=home), "api").exists()
    # ...and the task started: its workflow runs, once.
    runs = [r async for r in temporal_client.list_workflows(f'WorkflowId = "{task.workflow_id}"')]
    assert len(runs) == 1

    lines = (home / "logs" / "api.log").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is JSON
    access = [
        r for r in records if r.get("event") == "request" and r.get("path") == "/tasks/" + task.id
    ]
    assert access and access[0]["status"] == 200 and access[0]["service"] == "api"
    assert access[0]["task_id"] == task.id and access[0]["correlation_id"]
