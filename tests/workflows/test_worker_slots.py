"""The limit on concurrent Workers: extra tasks wait for a slot, and say so, then run."""

from __future__ import annotations

import asyncio
from pathlib import Path

import docker
from infra.slots import SLOTS_KEY, WorkerSlots
from redis.asyncio import Redis
from temporalio.client import Client

from core.enums import TaskStatus
from core.settings import Settings
from db.engine import Database
from infra.containers import TASK_ID, ContainerRuntime
from testing.waiting import eventually
from testing.workflows import events, get_task, make_project, make_scripted_task, running_worker
from testing.workflows import start_engineering as start
from tests.workflows.test_engineering_e2e import TEST_FILE

# One round that takes a few seconds (so the second task must wait), then a passing feature.
SLOW_FEATURE = {
    "rounds": [
        {
            "run": ["sleep", "3"],
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


async def test_slots_are_taken_atomically_and_given_back(redis: Redis) -> None:
    slots = WorkerSlots(redis, limit=3)
    taken = await asyncio.gather(*(slots.try_take(f"wf-{i}", f"w-{i}") for i in range(20)))
    assert sum(taken) == 3 and await slots.in_use() == 3
    holders = [i for i, ok in enumerate(taken) if ok]
    # Holding one already counts as having it: a retried create does not wait for itself.
    assert await slots.try_take(f"wf-{holders[0]}", f"w-{holders[0]}")
    assert not await slots.try_take("wf-late", "w-late")
    await slots.release_worker(f"w-{holders[0]}")
    assert await slots.in_use() == 2
    assert await slots.try_take("wf-late", "w-late")

    # Slots of workflows no longer running go back to the pool (a killed process left them).
    async def only_late_is_open(workflow_id: str) -> bool:
        return workflow_id == "wf-late"

    freed = await slots.free_closed(only_late_is_open)
    assert sorted(freed) == sorted(f"w-{i}" for i in holders[1:])
    assert await slots.holders() == ["wf-late w-late"]
    await redis.delete(SLOTS_KEY)


async def test_with_one_slot_the_second_task_waits_visibly_then_runs(
    temporal_client: Client,
    docker_client: docker.DockerClient,
    scripted_image: str,
    sqlite_database: Database,
    redis: Redis,
    tmp_path: Path,
) -> None:
    db = sqlite_database
    project = await make_project(db, name="one-at-a-time")
    first = await make_scripted_task(db, redis, project, SLOW_FEATURE)
    second = await make_scripted_task(db, redis, project, SLOW_FEATURE)
    home = tmp_path / "home"
    settings = Settings(home=home, max_workers=1, worker_memory="256m", worker_pids=128)
    runtime = ContainerRuntime(docker_client, settings)
    seen: set[int] = set()

    def count_workers() -> int:
        label = [f"{TASK_ID}={task.id}" for task in (first, second)]
        found = {
            c.id
            for value in label
            for c in docker_client.containers.list(all=True, filters={"label": value})
        }
        return len(found)

    async with running_worker(
        temporal_client, db, redis, home, settings=settings, runtime=runtime
    ) as queue:
        handles = [await start(temporal_client, first, queue)]
        await eventually(lambda: _has_event(db, first.id, "the scripted agent works"), within=60)
        handles.append(await start(temporal_client, second, queue))
        await eventually(lambda: _has_event(db, second.id, "Waiting for a Worker slot"), within=30)
        while not all([await _done(db, t.id) for t in (first, second)]):
            seen.add(await asyncio.to_thread(count_workers))
            await asyncio.sleep(0.2)
        outputs = [await h.result() for h in handles]

    assert [o.status for o in outputs] == [TaskStatus.completed] * 2
    assert max(seen) <= 1, f"more Workers than slots at once: {seen}"
    waiting = [e for e in await events(db, second.id) if "Worker slot" in e.message]
    assert waiting[0].message.startswith("Waiting for a Worker slot: 1 of 1 in use")
    assert await WorkerSlots(redis, 1).in_use() == 0  # every slot given back


async def _has_event(db: Database, task_id: str, text: str) -> bool:
    return any(text in e.message for e in await events(db, task_id))


async def _done(db: Database, task_id: str) -> bool:
    return TaskStatus((await get_task(db, task_id)).status).is_terminal
