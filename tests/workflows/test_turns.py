"""A pool's turns (workflows/turns.py) on the real Temporal dev server: first come first served,
within the limit, waited for in workflow code; a cancelled waiter leaves the queue; the turns of
closed runs come back."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from activities.turns import TurnActivities
from core.contracts.workflows import WORKERS_POOL
from core.ids import turns_workflow_id
from core.settings import Settings
from stack.temporal_worker import workflow_runner
from testing.turns import HoldInput, TurnHolder, ask_turn, pool_state
from testing.waiting import eventually
from testing.workflows import end_pools
from workflows.turns import TurnsWorkflow

POOL = WORKERS_POOL


class Pool:
    """A worker running pools and holders on a queue of its own, with ``limit`` turns."""

    def __init__(self, client: Client, queue: str, limit: int) -> None:
        self.client = client
        self.queue = queue
        self.limit = limit
        self.holders: list[WorkflowHandle[Any, Any]] = []

    async def hold(self) -> WorkflowHandle[Any, Any]:
        """A new holder; returns once the pool has its ask (granted or queued)."""
        key = f"h{len(self.holders)}"
        handle = await self.client.start_workflow(
            TurnHolder.run,
            HoldInput(pool=POOL, key=key),
            id=f"holder-{uuid.uuid4().hex}",
            task_queue=self.queue,
        )
        self.holders.append(handle)
        await eventually(lambda: self._asked(handle.id), f"{key} asked", within=30)
        return handle

    async def _asked(self, holder: str) -> bool:
        try:
            state = await pool_state(self.client, self.queue, POOL)
        except Exception:  # the pool's first run is still starting
            return False
        return holder in [t.holder for t in [*state.holding, *state.waiting]]

    async def holding(self) -> list[str]:
        return [t.holder for t in (await pool_state(self.client, self.queue, POOL)).holding]

    async def waiting(self) -> list[str]:
        return [t.holder for t in (await pool_state(self.client, self.queue, POOL)).waiting]

    async def held_by(self, handle: WorkflowHandle[Any, Any]) -> bool:
        """The holder's own workflow says it holds the turn (it got the grant)."""
        return bool(await handle.query(TurnHolder.holding))

    async def reap(self) -> list[str]:
        env = ActivityEnvironment(client=self.client)
        env.info = dataclasses.replace(env.info, task_queue=self.queue)  # it reaps its queue's
        given = await env.run(TurnActivities(Settings(), self.client, None).reap_turns)
        mine = {h.id for h in self.holders}
        return [g.holder for g in given if g.holder in mine]


@pytest_asyncio.fixture
async def pool(temporal_client: Client) -> AsyncIterator[Pool]:
    queue = f"turns-test-{uuid.uuid4().hex}"
    made = Pool(temporal_client, queue, limit=2)
    activities = TurnActivities(Settings(max_workers=made.limit), temporal_client, None)
    async with Worker(
        temporal_client,
        task_queue=queue,
        workflows=[TurnsWorkflow, TurnHolder],
        activities=[activities.ask_for_turn],
        workflow_runner=workflow_runner(),
    ):
        try:
            yield made
        finally:
            for handle in made.holders:
                try:
                    await handle.terminate("the test ended")
                except Exception:  # closed already
                    pass
            await end_pools(temporal_client, [turns_workflow_id(queue, POOL)])


async def history_length(handle: WorkflowHandle[Any, Any]) -> int:
    return len([event async for event in handle.fetch_history_events()])


async def test_turns_are_granted_in_the_order_asked_within_the_limit(pool: Pool) -> None:
    holders = [await pool.hold() for _ in range(6)]
    ids = [h.id for h in holders]
    assert await pool.holding() == ids[:2]
    assert await pool.waiting() == ids[2:]
    # A waiting holder holds no activity and writes nothing while it waits.
    last = holders[-1]
    assert not (await last.describe()).raw_description.pending_activities
    waited_from = await history_length(last)

    granted = []
    for done in range(4):
        await holders[done].signal(TurnHolder.done)
        nxt = holders[done + 2]
        await eventually(lambda h=nxt: pool.held_by(h), f"{nxt.id} granted", within=30)  # type: ignore[misc]
        granted.append(nxt.id)
        holding = await pool.holding()
        assert len(holding) <= pool.limit, holding
        if done < 3:
            assert await history_length(last) == waited_from, "a waiting holder's history grew"

    assert granted == ids[2:]
    assert await pool.holding() == ids[4:]
    assert await pool.waiting() == []


async def test_a_waiter_cancelled_leaves_the_queue_and_the_others_go_on(pool: Pool) -> None:
    first, second = await pool.hold(), await pool.hold()
    cancelled, after = await pool.hold(), await pool.hold()
    assert await pool.waiting() == [cancelled.id, after.id]

    await cancelled.cancel()
    await eventually(lambda: _waiting_is(pool, [after.id]), "the cancelled waiter gone", within=30)
    await first.signal(TurnHolder.done)

    await eventually(lambda: pool.held_by(after), "the next waiter granted", within=30)
    assert await pool.holding() == [second.id, after.id]


async def test_a_grant_to_a_run_that_closed_passes_to_the_next(pool: Pool) -> None:
    first, _ = await pool.hold(), await pool.hold()
    gone, nxt = await pool.hold(), await pool.hold()
    await gone.terminate("killed while it waited")

    await first.signal(TurnHolder.done)

    await eventually(lambda: pool.held_by(nxt), "the turn passed on", within=30)
    assert gone.id not in await pool.holding() + await pool.waiting()


async def test_the_reaper_gives_back_the_turns_of_closed_runs(pool: Pool) -> None:
    killed, _ = await pool.hold(), await pool.hold()
    killed_waiting, nxt = await pool.hold(), await pool.hold()
    await killed.terminate("its process was killed")
    await killed_waiting.terminate("its process was killed")

    assert sorted(await pool.reap()) == sorted([killed.id, killed_waiting.id])

    await eventually(lambda: pool.held_by(nxt), "the killed holder's turn given on", within=30)
    assert await pool.waiting() == []


async def test_asking_again_is_answered_the_same(pool: Pool) -> None:
    asks = [
        await ask_turn(pool.client, pool.queue, POOL, "some-run", "w1", max_workers=2)
        for _ in range(3)
    ]
    assert [(a.granted, a.in_use) for a in asks] == [(True, 1)] * 3
    other = await ask_turn(pool.client, pool.queue, POOL, "other-run", "w2", max_workers=2)
    late = await ask_turn(pool.client, pool.queue, POOL, "late-run", "w3", max_workers=2)
    again = await ask_turn(pool.client, pool.queue, POOL, "late-run", "w3", max_workers=2)
    assert (other.granted, late.granted, again.granted) == (True, False, False)
    assert (late.ahead, again.ahead, len(await pool.waiting())) == (0, 0, 1)


async def _waiting_is(pool: Pool, expected: list[str]) -> bool:
    return await pool.waiting() == expected
