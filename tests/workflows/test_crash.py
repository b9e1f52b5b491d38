"""kill -9 of the Temporal worker in the middle of scaffolding loses nothing and doubles nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
from redis.asyncio import Redis
from temporalio.client import Client, WorkflowFailureError

from core.contracts.workflows import ScaffoldOutput
from core.enums import TaskStatus
from core.faults import CRASH_AT_ENV
from core.ids import scaffold_workflow_id
from core.settings import Settings
from db.engine import Database
from testing.waiting import eventually
from testing.worker_process import spawn_worker, stop, wait_ready, worker_env
from testing.workflows import (
    bare_repositories,
    commit_count,
    get_task,
    git_out,
    make_project,
    make_task,
    start_engineering,
)


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
    env = worker_env(
        home,
        database_url=sqlite_database_url,
        redis_url=redis_url,
        temporal_address=temporal_address,
        task_queue=queue,
    )
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
    lines = [
        json.loads(line)
        for line in (home / "logs" / "temporal-worker.log").read_text().splitlines()
    ]
    said = [(line["service"], line["event"]) for line in lines]
    assert said.count(("temporal-worker", "temporal worker polling")) == 2
    assert ("temporal-worker", "temporal worker stopped") in said
    # Activity log lines name their workflow and task.
    finished = [line for line in lines if line["event"] == "task finished"]
    assert [(f["task_id"], f["workflow_id"], f["status"]) for f in finished] == [
        (task.id, task.workflow_id, "FAILED")
    ]
    scaffolded = [line for line in lines if line["event"] == "repository already scaffolded"]
    assert scaffolded and scaffolded[0]["workflow_id"] == scaffold_workflow_id(project.id)
