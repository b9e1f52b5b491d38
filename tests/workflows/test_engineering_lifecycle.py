"""An engineering task's life around its agent: a worker killed mid-turn, a cancel, a question.

Real Temporal dev server, real container service (podman or DOCKER_HOST), the real scripted
Worker image, real SQLite and Redis, and the real API routes (in this process) for cancel and
respond. The scripted agent's rounds hold still where a test needs them to: a ``sleep`` while the
worker is killed or the task cancelled, a gate file the test creates (the workspace is mounted
from the host) while it checks what a RUNNING task refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlmodel import select
from temporalio.client import Client, WorkflowFailureError
from temporalio.service import RPCError

from api.app import create_app
from core.contracts.workflows import WORKERS_POOL
from core.enums import EventType, TaskStatus
from core.settings import Settings
from db.engine import Database
from db.tables import PullRequest, Task
from db.users import ensure_admin_key
from infra.containers import TASK_ID
from infra.forges.local import LocalForge
from testing.turns import grants_in_order, pool_state
from testing.waiting import eventually
from testing.worker_process import spawn_worker, stop, wait_ready, worker_env
from testing.workflows import (
    end_pools,
    events,
    get_task,
    git_out,
    make_project,
    make_scripted_task,
    pools_of,
    running_worker,
    small_runtime,
    start_engineering,
)

FEATURE = {"path": "app/greeting.py", "content": 'def greet(name):\n    return f"Hello, {name}!"\n'}
FEATURE_TEST = {
    "path": "tests/test_greeting.py",
    "content": """import unittest

from app.greeting import greet


class GreetingTest(unittest.TestCase):
    def test_greets_by_name(self):
        self.assertEqual(greet("Ada"), "Hello, Ada!")
""",
}
WRITE_FEATURE = [FEATURE, FEATURE_TEST]
# Only the first play of the round sleeps: the turn a new worker plays again is quick.
SLEEP_ONCE = "test -e .git/slept || { touch .git/slept && sleep 10; }"
# The scripted agent gets its prompt as its last argument; `sh -c` is its child.
SAVE_PROMPT = "tr '\\000' '\\n' < /proc/$PPID/cmdline > .git/scripted-agent-prompt"
QUESTION = "Should greet() say Hello or Hi?"
ANSWER = "Hello, with the name and an exclamation mark."


def gate(name: str) -> str:
    """A shell loop that holds the agent until the test creates ``.git/<name>``."""
    return f"while [ ! -e .git/{name} ]; do sleep 0.05; done"


def containers_of(docker_client: docker.DockerClient, task_id: str) -> list[Any]:
    # Sparse: no inspect per container, which podman answers with a 500 while it removes one.
    found = docker_client.containers.list(
        all=True, sparse=True, filters={"label": f"{TASK_ID}={task_id}"}
    )
    return list(found)


def runs_in_container(docker_client: docker.DockerClient, task_id: str, command: str) -> bool:
    """True when a process whose command line contains ``command`` runs in the task's Worker."""
    try:
        containers = containers_of(docker_client, task_id)
    except (docker.errors.APIError, ValueError):  # podman mid-create/removal: a 500 or no JSON
        return False
    for container in containers:
        try:
            top = container.top()
        except (docker.errors.APIError, ValueError):  # not running (yet, or any more)
            continue
        # Docker names the column CMD, podman COMMAND: look at the whole row.
        if any(command in " ".join(map(str, row)) for row in top.get("Processes") or []):
            return True
    return False


async def agent_running(
    db: Database, docker_client: docker.DockerClient, task_id: str, command: str
) -> None:
    """Wait until the developer stage has started and the agent's ``command`` runs."""

    async def started() -> bool:
        rows = await events(db, task_id)
        return any(e.stage == "developer" and e.type == EventType.stage_started for e in rows)

    await eventually(started, "the developer stage", within=60)

    async def running() -> bool:
        return await asyncio.to_thread(runs_in_container, docker_client, task_id, command)

    await eventually(running, f"{command!r} in the task's Worker", within=30)


async def status_is(db: Database, task_id: str, status: TaskStatus, within: float) -> None:
    async def reached() -> bool:
        return (await get_task(db, task_id)).status == status

    await eventually(reached, f"task {task_id} {status}", within=within, interval=0.1)


async def create_task(db: Database, redis: Redis, name: str, script: dict[str, Any]) -> Task:
    return await make_scripted_task(db, redis, await make_project(db, name=name), script)


@contextlib.asynccontextmanager
async def cleaned_up(
    client: Client, docker_client: docker.DockerClient, task: Task
) -> AsyncIterator[None]:
    """A failing test leaves no run waiting forever and no Worker behind."""
    try:
        yield
    finally:
        with contextlib.suppress(RPCError):
            await client.get_workflow_handle(task.workflow_id).terminate("test over")
        for container in containers_of(docker_client, task.id):
            with contextlib.suppress(docker.errors.APIError):  # gone meanwhile
                container.remove(force=True)


@contextlib.asynccontextmanager
async def api_client(
    db: Database, redis: Redis, client: Client, home: Path
) -> AsyncIterator[httpx.AsyncClient]:
    """The real API app in this process, with the admin's key."""
    app: FastAPI = create_app(Settings(home=home), database=db, redis=redis, temporal=client)
    key = await ensure_admin_key(db, home / "api_key")
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app),
            base_url="http://api",
            headers={"Authorization": f"Bearer {key}"},
        ) as http,
    ):
        yield http


async def pull_requests(db: Database, task_id: str) -> list[PullRequest]:
    async with db.session() as session:
        rows = await session.exec(select(PullRequest).where(PullRequest.task_id == task_id))
        return list(rows.all())


async def test_kill_9_of_the_worker_while_the_agent_runs(
    temporal_client: Client,
    temporal_address: str,
    docker_client: docker.DockerClient,
    docker_host: str,
    scripted_image: str,
    sqlite_database_url: str,
    sqlite_database: Database,
    redis_url: str,
    redis: Redis,
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    settings = Settings(home=home)
    queue = f"lifecycle-{uuid.uuid4().hex}"
    env = worker_env(
        home,
        database_url=sqlite_database_url,
        redis_url=redis_url,
        temporal_address=temporal_address,
        task_queue=queue,
        DOCKER_HOST=docker_host,
        # One slot: the task the worker dies under holds it, a second task waits for it.
        ORCHESTRATOR_MAX_WORKERS="1",
        ORCHESTRATOR_WORKER_MEMORY="256m",
        ORCHESTRATOR_WORKER_PIDS="128",
    )
    log = tmp_path / "workers.log"
    script = {
        "rounds": [
            {
                "write": WRITE_FEATURE,
                "run": SLEEP_ONCE,
                "commit": "Add greet()",
                "report": "completed",
                "summary": "Added greet() and its test.",
            }
        ]
    }
    task = await create_task(sqlite_database, redis, "survivor", script)
    waiter = await create_task(sqlite_database, redis, "waiter", {"rounds": script["rounds"]})

    doomed = spawn_worker(env, log)
    survivor: subprocess.Popen[bytes] | None = None
    async with (
        cleaned_up(temporal_client, docker_client, task),
        cleaned_up(temporal_client, docker_client, waiter),
    ):
        try:
            await wait_ready(settings, doomed)
            handle = await start_engineering(temporal_client, task, queue)
            await agent_running(sqlite_database, docker_client, task.id, "sleep 10")
            waiting = await start_engineering(temporal_client, waiter, queue)
            await eventually(
                lambda: _waits_for_a_slot(temporal_client, queue, waiter.workflow_id),
                "the second task waiting for the slot",
                within=60,
            )
            # The pool queues the ask a moment before the asking activity writes the task's
            # event: kill only once it has been said, or the retried ask may find the slot free.
            await eventually(
                lambda: _says_it_waits(sqlite_database, waiter.id),
                "the second task's events saying it waits",
                within=30,
            )
            doomed.send_signal(signal.SIGKILL)
            assert doomed.wait(10) == -signal.SIGKILL

            survivor = spawn_worker(env, log)
            await wait_ready(settings, survivor)
            # The developer turn plays again once its heartbeat times out (30 s).
            await status_is(sqlite_database, task.id, TaskStatus.completed, within=120)
            output = await handle.result()
            # The slot came back: the waiting task had it next and finished too.
            assert (await waiting.result()).status == TaskStatus.completed
            pool = await pool_state(temporal_client, queue, WORKERS_POOL)
            await end_pools(temporal_client, await pools_of(temporal_client, queue))
        finally:
            stop(doomed)
            if survivor is not None:
                stop(survivor)

    assert output.status == TaskStatus.completed, output
    assert output.result is not None
    branch = f"task/{task.id}"
    # Exactly one pull request: in the database and in the forge.
    stored = await pull_requests(sqlite_database, task.id)
    assert [p.branch for p in stored] == [branch]
    forge = LocalForge(home / "forge")
    pulls = forge.pull_requests("local/survivor")
    assert [p.url for p in pulls] == [output.result.pr_url]
    # The branch holds the agent's commit with its files.
    bare = forge.path("local/survivor")
    head = git_out(bare, "rev-parse", f"refs/heads/{branch}")
    assert head == stored[0].head_sha == output.result.commit_sha
    authors = git_out(bare, "log", "--format=%an %s", f"main..{branch}").splitlines()
    assert authors and set(authors) == {"scripted-agent Add greet()"}, authors
    assert 'f"Hello, {name}!"' in git_out(bare, "show", f"{head}:app/greeting.py")
    # The turn was played again by the new worker: two developer starts, one tester pass.
    rows = await events(sqlite_database, task.id)
    developer = [e for e in rows if e.stage == "developer" and e.type == EventType.stage_started]
    assert [e.data["round"] for e in developer] == [1, 1]
    tester = [e for e in rows if e.stage == "tester" and e.type == EventType.stage_completed]
    assert [e.data["passed"] for e in tester] == [True]
    assert containers_of(docker_client, task.id) == []
    assert survivor is not None and survivor.returncode == 0, log.read_text()[-3000:]
    assert (pool.holding, pool.waiting, pool.granted_total) == ([], [], 2)
    assert await grants_in_order(temporal_client, queue, WORKERS_POOL) == (
        [waiter.workflow_id],
        [waiter.workflow_id],
    )
    said = await _slot_messages(sqlite_database, waiter.id)
    assert said and said[0].startswith("Waiting for a Worker slot: 1 of 1 in use")


async def _slot_messages(db: Database, task_id: str) -> list[str]:
    return [e.message for e in await events(db, task_id) if "slot" in e.message]


async def _says_it_waits(db: Database, task_id: str) -> bool:
    return bool(await _slot_messages(db, task_id))


async def _waits_for_a_slot(client: Client, queue: str, holder: str) -> bool:
    return holder in [t.holder for t in (await pool_state(client, queue, WORKERS_POOL)).waiting]


async def test_cancel_while_the_agent_runs_removes_its_worker_at_once(
    temporal_client: Client,
    docker_client: docker.DockerClient,
    scripted_image: str,
    sqlite_database: Database,
    redis: Redis,
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    script = {"rounds": [{"write": WRITE_FEATURE, "run": "sleep 120", "report": "completed"}]}
    task = await create_task(sqlite_database, redis, "cancelled", script)
    async with (
        cleaned_up(temporal_client, docker_client, task),
        api_client(sqlite_database, redis, temporal_client, tmp_path / "api") as api,
        running_worker(
            temporal_client, sqlite_database, redis, home, runtime=small_runtime(docker_client)
        ) as queue,
    ):
        handle = await start_engineering(temporal_client, task, queue)
        await agent_running(sqlite_database, docker_client, task.id, "sleep 120")

        asked = time.monotonic()
        response = await api.post(f"/tasks/{task.id}/cancel")
        assert response.status_code == 202, response.text

        async def gone() -> bool:
            return await asyncio.to_thread(containers_of, docker_client, task.id) == []

        await eventually(gone, "the task's Worker to be removed", within=10, interval=0.1)
        await status_is(sqlite_database, task.id, TaskStatus.cancelled, within=10)
        took = time.monotonic() - asked
        assert took < 10, took
        with pytest.raises(WorkflowFailureError):
            await handle.result()

    done = await get_task(sqlite_database, task.id)
    assert done.status == TaskStatus.cancelled
    assert LocalForge(home / "forge").pull_requests("local/cancelled") == []


async def test_a_blocked_agent_waits_for_the_answer_then_completes(
    temporal_client: Client,
    docker_client: docker.DockerClient,
    scripted_image: str,
    sqlite_database: Database,
    redis: Redis,
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    script = {
        "rounds": [
            {"run": gate("ask"), "report": "blocked", "question": QUESTION},
            {
                "write": WRITE_FEATURE,
                "run": f"{SAVE_PROMPT} && {gate('finish')}",
                "commit": "Add greet()",
                "report": "completed",
                "summary": "Added greet() as answered.",
            },
        ]
    }
    task = await create_task(sqlite_database, redis, "asking", script)
    git_dir = home / "workspaces" / task.id / ".git"
    async with (
        cleaned_up(temporal_client, docker_client, task),
        api_client(sqlite_database, redis, temporal_client, tmp_path / "api") as api,
        running_worker(
            temporal_client, sqlite_database, redis, home, runtime=small_runtime(docker_client)
        ) as queue,
    ):
        handle = await start_engineering(temporal_client, task, queue)
        await agent_running(sqlite_database, docker_client, task.id, "while [ ! -e .git/ask ]")
        # While the agent works the task is RUNNING: there is nothing to answer.
        early = await api.post(f"/tasks/{task.id}/respond", json={"answer": ANSWER})
        assert early.status_code == 409, early.text
        assert "not waiting for an answer (status RUNNING)" in early.json()["detail"]
        (git_dir / "ask").touch()

        await status_is(sqlite_database, task.id, TaskStatus.waiting_human, within=30)
        rows = await events(sqlite_database, task.id)
        assert rows[-1].data.get("question") == QUESTION, rows[-1]
        assert await handle.query("question", result_type=str) == QUESTION
        # While it waits (maybe for days) the task holds no container and no Worker slot.
        await eventually(lambda: _no_containers(docker_client, task.id), within=10)

        response = await api.post(f"/tasks/{task.id}/respond", json={"answer": ANSWER})
        assert response.status_code == 200, response.text
        # Round 2 holds at its gate: the task is RUNNING again and takes no second answer.
        await agent_running(sqlite_database, docker_client, task.id, "while [ ! -e .git/finish ]")
        assert (await get_task(sqlite_database, task.id)).status == TaskStatus.running
        again = await api.post(f"/tasks/{task.id}/respond", json={"answer": "Hi"})
        assert again.status_code == 409, again.text
        (git_dir / "finish").touch()

        output = await handle.result()

    assert output.status == TaskStatus.completed, output
    assert output.result is not None and output.result.pr_url
    # The agent's second turn got the question and the answer in its prompt.
    prompt = (git_dir / "scripted-agent-prompt").read_text()
    assert QUESTION in prompt and ANSWER in prompt, prompt
    rows = await events(sqlite_database, task.id)
    asked = [e for e in rows if e.data.get("question") == QUESTION]
    assert [e.message for e in asked] == [
        f"Round 1: the agent is blocked and asks: {QUESTION}",
        f"Waiting for an answer: {QUESTION}",
        "Answered; the work goes on",
    ]
    developer = [e for e in rows if e.stage == "developer" and e.type == EventType.stage_started]
    assert [e.data["turn"] for e in developer] == [1, 2]
    done = await get_task(sqlite_database, task.id)
    assert done.status == TaskStatus.completed
    assert [p.branch for p in await pull_requests(sqlite_database, task.id)] == [f"task/{task.id}"]
    assert containers_of(docker_client, task.id) == []


async def _no_containers(docker_client: docker.DockerClient, task_id: str) -> bool:
    try:
        return not await asyncio.to_thread(containers_of, docker_client, task_id)
    except (docker.errors.APIError, ValueError):  # podman mid-removal: an empty or 500 answer
        return False
