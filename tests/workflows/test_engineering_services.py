"""An engineering task whose manifest asks for PostgreSQL: its test command runs in its Worker
against a PostgreSQL of its own (a sidecar in the Worker's network namespace), and the sidecar
is gone after the task, after a cancel, and after a kill -9 of the Temporal worker (the reaper);
a worker process that takes the killed one's run over plays the tests again on the same database.

Real Temporal dev server, real container service, the real scripted Worker image and the real
PostgreSQL image (deploy/images/services/postgresql), real SQLite and Redis. The Worker image has
python3 and no database driver: the test command is testing/postgres_probe.py, a client of the
real wire protocol.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import docker
import pytest
from redis.asyncio import Redis
from temporalio.client import Client, WorkflowFailureError

from core.enums import EventType, TaskStatus
from core.settings import Settings
from db.engine import Database
from infra.containers import SERVICE, TASK_ID, WORKER_ID, ContainerRuntime
from testing.postgres_probe import PROBE
from testing.waiting import eventually
from testing.worker_process import spawn_worker, stop, wait_ready, worker_env
from testing.workflows import (
    events,
    get_task,
    make_project,
    make_scripted_task,
    running_worker,
    small_runtime,
    start_engineering,
)
from tests.workflows.test_engineering_lifecycle import (
    api_client,
    cleaned_up,
    containers_of,
    status_is,
)
from workflows.reaper import ReaperInput, ReaperOutput, ReaperWorkflow

# The test command writes a row and reads it back through $DATABASE_URL; its output must be it.
QUERY = "CREATE TABLE notes (body text); INSERT INTO notes VALUES ('stored'); SELECT * FROM notes"
CHECK = f'python3 probe.py "{QUERY}" | grep -qx stored'
# Connected (it says so with a file in its workspace, which the host sees), then held: long
# enough to cancel the task or kill its worker under it.
CONNECTED = ".git/connected"
HOLD = f'python3 probe.py "SELECT 1" && touch {CONNECTED} && sleep 300'


def manifest(command: str) -> str:
    return f"backing_services: [postgresql]\ntest: {command}\n"


def script(command: str) -> dict[str, Any]:
    return {
        "rounds": [
            {
                "write": [
                    {"path": ".orchestrator.yml", "content": manifest(command)},
                    {"path": "probe.py", "content": PROBE},
                ],
                "commit": "Test against the database",
                "report": "completed",
                "summary": "The tests use the test PostgreSQL.",
            }
        ]
    }


def sidecars_of(docker_client: docker.DockerClient, task_id: str) -> list[dict[str, str]]:
    """The labels of the task's sidecars (from the list alone: no inspect per container)."""
    found = docker_client.api.containers(all=True, filters={"label": f"{TASK_ID}={task_id}"})
    return [e["Labels"] for e in found if SERVICE in (e.get("Labels") or {})]


async def test_test_command_runs_against_its_postgresql_and_the_sidecar_goes_with_the_task(
    temporal_client: Client,
    docker_client: docker.DockerClient,
    scripted_image: str,
    postgresql_image: str,
    sqlite_database: Database,
    redis: Redis,
    tmp_path: Path,
) -> None:
    project = await make_project(sqlite_database, name="notes")
    task = await make_scripted_task(sqlite_database, redis, project, script(CHECK))
    async with (
        cleaned_up(temporal_client, docker_client, task),
        running_worker(
            temporal_client,
            sqlite_database,
            redis,
            tmp_path / "home",
            runtime=small_runtime(docker_client),
        ) as queue,
    ):
        handle = await start_engineering(temporal_client, task, queue)
        output = await handle.result()

    assert output.status == TaskStatus.completed, output
    rows = await events(sqlite_database, task.id)
    tester = [e for e in rows if e.stage == "tester" and e.type == EventType.stage_completed]
    assert [(e.data["passed"], e.data["command"]) for e in tester] == [(True, CHECK)]
    assert containers_of(docker_client, task.id) == []


async def test_cancel_while_the_tests_run_removes_the_sidecar_with_the_worker(
    temporal_client: Client,
    docker_client: docker.DockerClient,
    scripted_image: str,
    postgresql_image: str,
    sqlite_database: Database,
    redis: Redis,
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    project = await make_project(sqlite_database, name="cancelled-notes")
    task = await make_scripted_task(sqlite_database, redis, project, script(HOLD))
    async with (
        cleaned_up(temporal_client, docker_client, task),
        api_client(sqlite_database, redis, temporal_client, tmp_path / "api") as api,
        running_worker(
            temporal_client,
            sqlite_database,
            redis,
            home,
            runtime=small_runtime(docker_client),
        ) as queue,
    ):
        handle = await start_engineering(temporal_client, task, queue)
        await until_the_tests_hold(home, task.id)
        assert len(sidecars_of(docker_client, task.id)) == 1

        response = await api.post(f"/tasks/{task.id}/cancel")
        assert response.status_code == 202, response.text

        async def gone() -> bool:
            return await asyncio.to_thread(containers_of, docker_client, task.id) == []

        await eventually(gone, "the Worker and its sidecar to be removed", within=20)
        await status_is(sqlite_database, task.id, TaskStatus.cancelled, within=10)
        with pytest.raises(WorkflowFailureError):
            await handle.result()


async def test_after_a_kill_9_of_the_worker_process_the_reaper_removes_the_sidecar(
    temporal_client: Client,
    temporal_address: str,
    docker_client: docker.DockerClient,
    docker_host: str,
    scripted_image: str,
    postgresql_image: str,
    sqlite_database_url: str,
    sqlite_database: Database,
    redis_url: str,
    redis: Redis,
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    queue = f"services-{uuid.uuid4().hex}"
    env = process_env(home, sqlite_database_url, redis_url, temporal_address, queue, docker_host)
    log = tmp_path / "worker.log"
    project = await make_project(sqlite_database, name="orphaned-notes")
    task = await make_scripted_task(sqlite_database, redis, project, script(HOLD))
    doomed = spawn_worker(env, log)
    async with cleaned_up(temporal_client, docker_client, task):
        try:
            await wait_ready(Settings(home=home), doomed)
            handle = await start_engineering(temporal_client, task, queue)
            await until_the_tests_hold(home, task.id)
            (sidecar,) = sidecars_of(docker_client, task.id)
            worker_id = sidecar[WORKER_ID]
            doomed.send_signal(signal.SIGKILL)
            assert doomed.wait(10) == -signal.SIGKILL
        finally:
            stop(doomed)
        # Nobody finishes the run: it closes without removing its Worker, as an operator's
        # terminate of a stuck task does. Its Worker and sidecar stay until the reaper comes.
        await handle.terminate("its worker process was killed")
        assert len(sidecars_of(docker_client, task.id)) == 1

        settings = Settings(home=home, temporal_address=temporal_address)
        runtime = ContainerRuntime(docker_client, settings)  # the killed worker's stack
        async with running_worker(
            temporal_client, sqlite_database, redis, home, settings=settings, runtime=runtime
        ) as reaper_queue:
            reaped = await reap(temporal_client, reaper_queue)

    assert worker_id in reaped.workers_removed, reaped
    assert containers_of(docker_client, task.id) == []
    assert (await get_task(sqlite_database, task.id)).status != TaskStatus.completed


# The first play makes a table and holds (its worker is killed under it); the play again
# passes only if it finds that table: on the same database, in the same sidecar.
HOLD_ONCE = (
    f'test -e {CONNECTED} || {{ python3 probe.py "CREATE TABLE held (x int)" && touch {CONNECTED}'
    ' && sleep 300; }; python3 probe.py "SELECT count(*) FROM held" | grep -qx 0'
)


async def test_a_new_worker_process_plays_the_tests_again_on_the_same_sidecar(
    temporal_client: Client,
    temporal_address: str,
    docker_client: docker.DockerClient,
    docker_host: str,
    scripted_image: str,
    postgresql_image: str,
    sqlite_database_url: str,
    sqlite_database: Database,
    redis_url: str,
    redis: Redis,
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    queue = f"services-{uuid.uuid4().hex}"
    env = process_env(home, sqlite_database_url, redis_url, temporal_address, queue, docker_host)
    log = tmp_path / "workers.log"
    project = await make_project(sqlite_database, name="resumed-notes")
    task = await make_scripted_task(sqlite_database, redis, project, script(HOLD_ONCE))
    doomed = spawn_worker(env, log)
    survivor = None
    async with cleaned_up(temporal_client, docker_client, task):
        try:
            await wait_ready(Settings(home=home), doomed)
            handle = await start_engineering(temporal_client, task, queue)
            await until_the_tests_hold(home, task.id)
            doomed.send_signal(signal.SIGKILL)
            assert doomed.wait(10) == -signal.SIGKILL
            survivor = spawn_worker(env, log)
            await wait_ready(Settings(home=home), survivor)

            # The Tester's activity times out on its heartbeat and plays again on the survivor,
            # which finds the sidecar the killed process started.
            output = await handle.result()
        finally:
            stop(doomed)
            if survivor is not None:
                stop(survivor)

    assert output.status == TaskStatus.completed, output
    rows = await events(sqlite_database, task.id)
    tester = [e for e in rows if e.stage == "tester" and e.type == EventType.stage_completed]
    assert [e.data["passed"] for e in tester] == [True]
    assert containers_of(docker_client, task.id) == []
    assert survivor is not None and survivor.returncode == 0, log.read_text()[-3000:]


def process_env(
    home: Path, database_url: str, redis_url: str, temporal_address: str, queue: str, host: str
) -> dict[str, str]:
    """The environment of a Temporal worker process of its own (killed by the test)."""
    return worker_env(
        home,
        database_url=database_url,
        redis_url=redis_url,
        temporal_address=temporal_address,
        task_queue=queue,
        DOCKER_HOST=host,
        ORCHESTRATOR_WORKER_MEMORY="256m",
        ORCHESTRATOR_WORKER_PIDS="128",
    )


async def until_the_tests_hold(home: Path, task_id: str) -> None:
    """Wait until the task's test command has connected to its database and holds."""
    connected = home / "workspaces" / task_id / CONNECTED
    await eventually(connected.exists, "the test command connected to its database", within=240)


async def reap(client: Client, task_queue: str) -> ReaperOutput:
    return await client.execute_workflow(
        ReaperWorkflow.run,
        ReaperInput(),
        id=f"reaper-{uuid.uuid4().hex[:8]}",
        task_queue=task_queue,
        execution_timeout=timedelta(minutes=2),
    )
