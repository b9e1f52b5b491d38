"""Temporal workers on several hosts: each takes the work its capabilities allow, and a host that
dies mid-task leaves its work to another.

Each "host" is an ``orchestrator worker run --capabilities ...`` process of its own, joining the
same Temporal dev server, SQLite database and Redis (the test's), with the same home: the shared
path docs/production.md asks of the hosts for the local forge and the workspaces. They share this
machine's container engine. Real scripted Worker image, real engineering tasks. Which process ran
an activity is read from the runs' histories (``ActivityTaskStarted.identity`` is ``pid@host``).
"""

from __future__ import annotations

import signal
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
from redis.asyncio import Redis
from temporalio.api.enums.v1 import EventType as HistoryEventType
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import Client

from core.enums import TaskStatus
from core.settings import Settings
from core.task_queues import containers_queue
from db.engine import Database
from db.tables import Task
from infra.forges.local import LocalForge
from testing.waiting import eventually
from testing.worker_process import spawn_joining_worker, stop, wait_ready, worker_env
from testing.workflows import end_pools, get_project, make_project, make_scripted_task, pools_of
from testing.workflows import start_engineering as start
from tests.workflows.test_engineering_lifecycle import (
    SLEEP_ONCE,
    WRITE_FEATURE,
    agent_running,
    cleaned_up,
    containers_of,
    pull_requests,
)
from workflows.development import DEVELOPMENT_GRAPH

DEVELOPER = f"{DEVELOPMENT_GRAPH}.developer"
# What needs the host of the task's Worker: its container, its workspace, the commands in it.
ON_THE_WORKER_HOST = {
    "prepare_workspace",
    "create_container",
    DEVELOPER,
    f"{DEVELOPMENT_GRAPH}.tester",
    f"{DEVELOPMENT_GRAPH}.propose",
    "remove_container",
    "close_gateway",  # every Worker's socket (its package registries) is served on its host
}


def script(run: str = "true") -> dict[str, Any]:
    return {
        "rounds": [
            {
                "write": WRITE_FEATURE,
                "run": run,
                "commit": "Add greet()",
                "report": "completed",
                "summary": "Added greet() and its test.",
            }
        ]
    }


@dataclass
class Ran:
    """One activity of a run, as its history tells it."""

    type: str
    task_queue: str
    identity: str
    attempt: int

    @property
    def pid(self) -> int:
        return int(self.identity.split("@", 1)[0])


async def activities_ran(client: Client, workflow_id: str) -> list[Ran]:
    scheduled: dict[int, tuple[str, str]] = {}
    ran = []
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        if event.event_type == HistoryEventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attributes = event.activity_task_scheduled_event_attributes
            scheduled[event.event_id] = (attributes.activity_type.name, attributes.task_queue.name)
        elif event.event_type == HistoryEventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            started = event.activity_task_started_event_attributes
            type_, queue = scheduled[started.scheduled_event_id]
            ran.append(Ran(type_, queue, started.identity, started.attempt))
    return ran


class Hosts:
    """The test's worker processes, stopped (or found killed) at the end."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.settings = Settings(home=tmp_path / "home")
        self.env = env
        self.log = tmp_path / "workers.log"
        self.procs: list[subprocess.Popen[bytes]] = []

    async def join(self, capabilities: str | None, **env: str) -> subprocess.Popen[bytes]:
        """A host with ``capabilities`` (None: the default) and ``env`` of its own."""
        proc = spawn_joining_worker({**self.env, **env}, self.log, capabilities)
        self.procs.append(proc)
        await wait_ready(self.settings, proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            stop(proc)

    def output(self) -> str:
        return self.log.read_text()[-3000:]


@contextmanager
def hosts(tmp_path: Path, env: dict[str, str]) -> Iterator[Hosts]:
    made = Hosts(tmp_path, env)
    try:
        yield made
    finally:
        made.stop_all()


@dataclass
class Deployment:
    """The base task queue and the environment every host of the test's deployment shares."""

    queue: str
    env: dict[str, str]


@pytest.fixture
def deployment(
    tmp_path: Path,
    temporal_address: str,
    sqlite_database_url: str,
    redis_url: str,
    docker_host: str,
    scripted_image: str,
) -> Deployment:
    queue = f"hosts-{uuid.uuid4().hex}"
    env = worker_env(
        tmp_path / "home",
        database_url=sqlite_database_url,
        redis_url=redis_url,
        temporal_address=temporal_address,
        task_queue=queue,
        DOCKER_HOST=docker_host,
        ORCHESTRATOR_WORKER_MEMORY="256m",
        ORCHESTRATOR_WORKER_PIDS="128",
    )
    return Deployment(queue, env)


async def make_tasks(db: Database, redis: Redis, n: int, run: str = "true") -> list[Task]:
    return [
        await make_scripted_task(
            db, redis, await make_project(db, name=f"hosts-{i}-{uuid.uuid4().hex[:4]}"), script(run)
        )
        for i in range(n)
    ]


async def test_engineering_runs_only_on_the_host_with_a_container_engine(
    temporal_client: Client,
    docker_client: docker.DockerClient,
    sqlite_database: Database,
    redis: Redis,
    deployment: Deployment,
    tmp_path: Path,
) -> None:
    queue = deployment.queue
    tasks = await make_tasks(sqlite_database, redis, 3)
    with hosts(tmp_path, deployment.env) as running:
        # The host without a container engine (none answers where it would look) joins first:
        # it polls the base queue alone for a moment, and the tasks start while both poll it.
        plain = await running.join("ansible", DOCKER_HOST="unix:///nonexistent/docker.sock")
        engine = await running.join("containers")
        handles = [await start(temporal_client, task, queue) for task in tasks]
        outputs = [await handle.result() for handle in handles]
        await end_pools(temporal_client, await pools_of(temporal_client, queue))
        assert plain.poll() is None and engine.poll() is None, running.output()

    assert [output.status for output in outputs] == [TaskStatus.completed] * len(tasks)
    for task in tasks:
        ran = await activities_ran(temporal_client, task.workflow_id)
        on_worker_host = [r for r in ran if r.type in ON_THE_WORKER_HOST]
        # Every Worker activity went to the containers queue and ran on the host with an engine,
        # the first time (a history names the process of an activity's last attempt only).
        assert {r.type for r in on_worker_host} == ON_THE_WORKER_HOST
        assert {r.attempt for r in on_worker_host} == {1}
        assert {(r.task_queue, r.pid) for r in on_worker_host} == {
            (containers_queue(queue), engine.pid)
        }
        # Nothing else needed that host: the rest went to the base queue, which both poll.
        assert {r.task_queue for r in ran if r.type not in ON_THE_WORKER_HOST} == {queue}
        assert not [r for r in ran if r.pid == plain.pid and r.type in ON_THE_WORKER_HOST]
    # The host without an engine did take its share of the rest (its process ran activities).
    everything = [
        r for task in tasks for r in await activities_ran(temporal_client, task.workflow_id)
    ]
    assert plain.pid in {r.pid for r in everything}, "the plain host took no work at all"
    assert all(containers_of(docker_client, task.id) == [] for task in tasks)


async def _developer_started(client: Client, workflow_id: str) -> str | None:
    """The identity of the process running the task's developer turn, once one runs it."""
    description = await client.get_workflow_handle(workflow_id).describe()
    for pending in description.raw_description.pending_activities:
        if (
            pending.activity_type.name == DEVELOPER
            and pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
            and pending.last_worker_identity
        ):
            return pending.last_worker_identity
    return None


async def test_killing_a_host_mid_task_moves_its_work_to_the_other(
    temporal_client: Client,
    docker_client: docker.DockerClient,
    sqlite_database: Database,
    redis: Redis,
    deployment: Deployment,
    tmp_path: Path,
) -> None:
    queue = deployment.queue
    # The developer's first play of each task sleeps: long enough to kill its host under it.
    tasks = await make_tasks(sqlite_database, redis, 2, run=SLEEP_ONCE)
    with hosts(tmp_path, deployment.env) as running:
        # Two hosts with a container engine: one says so, the other has the default (both).
        first = await running.join("containers")
        second = await running.join(None)
        by_pid = {first.pid: first, second.pid: second}
        async with (
            cleaned_up(temporal_client, docker_client, tasks[0]),
            cleaned_up(temporal_client, docker_client, tasks[1]),
        ):
            handles = [await start(temporal_client, task, queue) for task in tasks]
            await agent_running(sqlite_database, docker_client, tasks[0].id, "sleep 10")
            identity = await eventually(
                lambda: _developer_started(temporal_client, tasks[0].workflow_id),
                "the first task's developer turn running on a host",
                within=30,
            )
            assert identity is not None
            doomed = by_pid[int(identity.split("@", 1)[0])]
            survivor = second if doomed is first else first
            doomed.send_signal(signal.SIGKILL)
            assert doomed.wait(10) == -signal.SIGKILL
            # The turn plays again on the survivor once its heartbeat times out (10 s).
            outputs = [await handle.result() for handle in handles]
            await end_pools(temporal_client, await pools_of(temporal_client, queue))
        assert survivor.poll() is None, running.output()

    assert [output.status for output in outputs] == [TaskStatus.completed] * len(tasks)
    forge = LocalForge(tmp_path / "home" / "forge")
    for task, output in zip(tasks, outputs, strict=True):
        assert output.result is not None
        # Once: one closed run, one pull request in the database and in the forge.
        runs = [
            run
            async for run in temporal_client.list_workflows(f"WorkflowId = '{task.workflow_id}'")
        ]
        assert len(runs) == 1, runs
        stored = await pull_requests(sqlite_database, task.id)
        assert [p.branch for p in stored] == [f"task/{task.id}"]
        project = await get_project(sqlite_database, task.project_id)
        pulls = forge.pull_requests(forge.full_name_for(project.name))
        assert [p.url for p in pulls] == [output.result.pr_url]
        assert containers_of(docker_client, task.id) == []
    # The killed host's turn was played again, and finished, by the survivor.
    ran = await activities_ran(temporal_client, tasks[0].workflow_id)
    developer = [r for r in ran if r.type == DEVELOPER]
    assert [(r.pid, r.attempt) for r in developer] == [(survivor.pid, 2)]
