"""More tasks than Worker slots and than the worker's activity slots: the waiting tasks wait in
workflow code, holding no activity, get their turns in the order they asked, say that they wait,
and all complete (the real worker, podman and the scripted agent)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import docker
import pytest
from redis.asyncio import Redis
from temporalio.client import Client, WorkflowHandle

from core.contracts.workflows import WORKERS_POOL
from core.enums import TaskStatus
from core.settings import Settings
from db.engine import Database
from infra.containers import TASK_ID, ContainerRuntime
from testing.turns import grants_in_order, pool_state
from testing.waiting import eventually
from testing.workflows import events, make_project, make_scripted_task, running_worker
from testing.workflows import start_engineering as start
from tests.workflows.test_engineering_e2e import TEST_FILE

TASKS = 30
SLOTS = 4
ACTIVITY_SLOTS = 8
FEATURE = {
    "rounds": [
        {
            "write": [
                {
                    "path": "app/greeting.py",
                    "content": 'def greet(name):\n    return f"Hello, {name}!"\n',
                },
                {"path": "tests/test_greeting.py", "content": TEST_FILE},
            ],
            "commit": "Add greet()",
            "report": "completed",
        }
    ]
}


@pytest.mark.timeout(900)
async def test_thirty_tasks_wait_for_four_slots_holding_none_of_eight_activity_slots(
    temporal_client: Client,
    docker_client: docker.DockerClient,
    scripted_image: str,
    sqlite_database: Database,
    redis: Redis,
    tmp_path: Path,
) -> None:
    db, client = sqlite_database, temporal_client
    # A new project: the first task scaffolds it while the others wait for that too.
    project = await make_project(db, name="busy")
    tasks = [await make_scripted_task(db, redis, project, FEATURE) for _ in range(TASKS)]
    home = tmp_path / "home"
    settings = Settings(
        home=home,
        max_workers=SLOTS,
        max_concurrent_activities=ACTIVITY_SLOTS,
        worker_memory="256m",
        worker_pids=128,
    )
    runtime = ContainerRuntime(docker_client, settings)
    ours = {task.id for task in tasks}

    def workers_now() -> int:
        # One listing, so one moment: a listing per task would count a Worker removed early in
        # the round and its successor made late in it as two at once. Plain dicts, no inspect
        # of each one (which fails for a container removed meanwhile).
        listed = docker_client.api.containers(all=True, filters={"label": TASK_ID})
        return sum(1 for c in listed if (c.get("Labels") or {}).get(TASK_ID) in ours)

    async with running_worker(client, db, redis, home, settings=settings, runtime=runtime) as queue:
        handles = [await start(client, task, queue) for task in tasks]

        async def queue_longer_than_activity_slots() -> bool:
            try:
                state = await pool_state(client, queue, WORKERS_POOL)
            except Exception:  # no task asked yet
                return False
            return len(state.waiting) > ACTIVITY_SLOTS

        await eventually(queue_longer_than_activity_slots, "a long queue", within=300)
        before = await pool_state(client, queue, WORKERS_POOL)
        # What a queued task may still have pending is its ask, answered already (the answer
        # on its way back); anything else would be an activity held while waiting.
        pending = {
            turn.holder: len(await _pending_but_the_ask(client, turn.holder))
            for turn in before.waiting
        }
        after = await pool_state(client, queue, WORKERS_POOL)
        # Those still queued after the look were queued during it (a turn, once granted, stays).
        still_waiting = {turn.holder for turn in after.waiting} & set(pending)
        assert len(still_waiting) > ACTIVITY_SLOTS
        assert {holder: pending[holder] for holder in still_waiting} == dict.fromkeys(
            still_waiting, 0
        ), "a waiting task holds an activity"

        peak = 0
        while not all(await asyncio.gather(*(_closed(h) for h in handles))):
            peak = max(peak, await asyncio.to_thread(workers_now))
            await asyncio.sleep(0.25)
        outputs = [await handle.result() for handle in handles]
        queued, told = await grants_in_order(client, queue, WORKERS_POOL)
        final = await pool_state(client, queue, WORKERS_POOL)

    assert [o.status for o in outputs] == [TaskStatus.completed] * TASKS
    assert peak <= SLOTS, f"{peak} Workers at once with {SLOTS} slots"
    assert len(queued) >= TASKS - SLOTS - 1 and told == queued, "turns not given in order asked"
    assert (final.holding, final.waiting, final.granted_total) == ([], [], TASKS)
    waited = set(queued)
    for task in tasks:
        said = [e.message for e in await events(db, task.id) if "Worker slot" in e.message]
        if task.workflow_id in waited:
            assert said and said[0].startswith(f"Waiting for a Worker slot: {SLOTS} of {SLOTS}")


async def _pending_but_the_ask(client: Client, workflow_id: str) -> list[str]:
    described = await client.get_workflow_handle(workflow_id).describe()
    return [
        a.activity_type.name
        for a in described.raw_description.pending_activities
        if a.activity_type.name != "ask_for_turn"
    ]


async def _closed(handle: WorkflowHandle[Any, Any]) -> bool:
    return (await handle.describe()).close_time is not None
