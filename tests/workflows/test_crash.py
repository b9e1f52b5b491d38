"""kill -9 of the Temporal worker in the middle of scaffolding loses nothing and doubles nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from redis.asyncio import Redis
from temporalio.client import Client, WorkflowFailureError

from api.db import Database
from core.contracts.events import TaskStatus
from core.faults import CRASH_AT_ENV
from core.ids import scaffold_workflow_id
from core.readiness import is_ready
from core.settings import Settings
from tests.waiting import eventually
from tests.workflows.helpers import (
    bare_repositories,
    commit_count,
    get_task,
    git_out,
    make_project,
    make_task,
    start_engineering,
)
from workflows.io import ScaffoldOutput

REPO_ROOT = Path(__file__).resolve().parents[2]


def spawn_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "stack.worker"],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def wait_ready(settings: Settings, proc: subprocess.Popen[bytes]) -> None:
    async def ready() -> bool:
        assert proc.poll() is None, f"worker exited with {proc.returncode}"
        return is_ready(settings, "worker", proc.pid)

    await eventually(ready, within=30)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_kill_9_during_scaffold_then_a_new_worker_finishes_once(
    temporal_client: Client,
    temporal_address: str,
    sqlite_database_url: str,
    sqlite_database: Database,
    redis_url: str,
    redis: Redis,
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    settings = Settings(home=home)
    queue = f"crash-{uuid.uuid4().hex}"
    env = {
        **os.environ,
        "ORCHESTRATOR_HOME": str(home),
        "DATABASE_URL": sqlite_database_url,
        "REDIS_URL": redis_url,
        "TEMPORAL_ADDRESS": temporal_address,
        "ORCHESTRATOR_TEMPORAL_TASK_QUEUE": queue,
    }
    env.pop(CRASH_AT_ENV, None)
    log = tmp_path / "workers.log"
    project = await make_project(sqlite_database, name="crashy")
    task = await make_task(sqlite_database, redis, project)

    doomed = spawn_worker({**env, CRASH_AT_ENV: "scaffold.after_push"}, log)
    survivor: subprocess.Popen[bytes] | None = None
    try:
        await wait_ready(settings, doomed)
        handle = await start_engineering(temporal_client, task, queue)

        async def died() -> bool:
            return doomed.poll() is not None

        await eventually(died, within=30, interval=0.05)
        assert doomed.returncode == -signal.SIGKILL, log.read_text()[-3000:]
        # The push happened before the crash: the repository and its commit are there already.
        repos = bare_repositories(home / "forge")
        assert len(repos) == 1 and commit_count(repos[0]) == 1

        survivor = spawn_worker(env, log)
        await wait_ready(settings, survivor)

        # No coding agent is configured here: after its scaffold the task ends FAILED saying so.
        async def ended() -> bool:
            return (await get_task(sqlite_database, task.id)).status == TaskStatus.failed

        await eventually(ended, within=60, interval=0.2)
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    finally:
        stop(doomed)
        if survivor is not None:
            stop(survivor)

    assert survivor.returncode == 0, log.read_text()[-3000:]
    assert "No coding agent" in str((await get_task(sqlite_database, task.id)).error)
    repos = bare_repositories(home / "forge")
    assert [p.name for p in repos] == ["crashy.git"]
    assert commit_count(repos[0]) == 1
    # The retried activity found the pushed commit instead of making a second repository.
    scaffold = temporal_client.get_workflow_handle(
        scaffold_workflow_id(project.id), result_type=ScaffoldOutput
    )
    result = await scaffold.result()
    assert result.created is False
    assert result.commit_sha == git_out(repos[0], "rev-parse", "main")
    # Both workers logged JSON lines to the service's log file; the survivor stopped cleanly.
    lines = [json.loads(line) for line in (home / "logs" / "worker.log").read_text().splitlines()]
    said = [(line["service"], line["event"]) for line in lines]
    assert said.count(("worker", "worker polling")) == 2
    assert ("worker", "worker stopped") in said
    # Activity log lines name their workflow and task.
    finished = [line for line in lines if line["event"] == "task finished"]
    assert [(f["task_id"], f["workflow_id"], f["status"]) for f in finished] == [
        (task.id, task.workflow_id, "FAILED")
    ]
    scaffolded = [line for line in lines if line["event"] == "repository already scaffolded"]
    assert scaffolded and scaffolded[0]["workflow_id"] == scaffold_workflow_id(project.id)
