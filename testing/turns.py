"""Taking turns of a pool (workflows/turns.py) from a test: a holder workflow that takes one and
keeps it until told, and asks made in the name of any workflow id."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from temporalio.client import Client
    from temporalio.testing import ActivityEnvironment

    from activities.turns import AskForTurnInput, TurnActivities
    from core.contracts.workflows import TURN_GRANTED, TURNS_STATE, TurnAnswer, TurnsState
    from core.ids import turns_workflow_id
    from core.settings import Settings
    from workflows.toolkit import TakesTurns

TURN_HOLDER_WORKFLOW = "TurnHolder"


@dataclasses.dataclass
class HoldInput:
    pool: str
    key: str


@workflow.defn(name=TURN_HOLDER_WORKFLOW)
class TurnHolder(TakesTurns):
    """Takes a turn of ``pool``, holds it until the ``done`` signal, gives it back (also when
    cancelled); ``holding`` says whether it holds it."""

    def __init__(self) -> None:
        self._holding = False
        self._done = False

    @workflow.run
    async def run(self, request: HoldInput) -> None:
        try:
            await self.take_turn(request.pool, request.key)
            self._holding = True
            await workflow.wait_condition(lambda: self._done)
        finally:
            self._holding = False
            await self.give_back_turn(request.pool, request.key)

    @workflow.signal
    def done(self) -> None:
        self._done = True

    @workflow.query
    def holding(self) -> bool:
        return self._holding


async def ask_turn(
    client: Client, task_queue: str, pool: str, holder: str, key: str, **settings: Any
) -> TurnAnswer:
    """Ask for a turn in the name of ``holder`` as a workflow on ``task_queue`` would."""
    env = ActivityEnvironment(client=client)
    env.info = dataclasses.replace(env.info, task_queue=task_queue)
    activities = TurnActivities(Settings(**settings), client, None)
    request = AskForTurnInput(pool=pool, holder=holder, key=key)
    return await env.run(activities.ask_for_turn, request)


async def pool_state(client: Client, task_queue: str, pool: str) -> TurnsState:
    handle = client.get_workflow_handle(turns_workflow_id(task_queue, pool))
    return await handle.query(TURNS_STATE, result_type=TurnsState)


@dataclasses.dataclass
class PoolHistory:
    """What a pool's own history says, over every run of it (it may continue as new)."""

    asked: list[str]  # every holder that asked, in the order asked (granted at once or queued)
    queued: list[str]  # the holders whose asks were queued, in the order asked
    told: list[str]  # the holders told their turn came, in the order told
    waited_s: dict[str, float]  # queued holder -> seconds from its ask to its grant
    runs: int


async def pool_history(client: Client, task_queue: str, pool: str) -> PoolHistory:
    workflow_id = turns_workflow_id(task_queue, pool)
    run_id = (await client.get_workflow_handle(workflow_id).describe()).run_id
    runs: list[list[Any]] = []
    while run_id:
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        events = [event async for event in handle.fetch_history_events()]
        runs.insert(0, events)
        run_id = events[0].workflow_execution_started_event_attributes.continued_execution_run_id
    asked: dict[str, tuple[str, datetime]] = {}  # update id -> (holder, when accepted)
    queued: list[str] = []
    told: list[str] = []
    told_at: dict[str, datetime] = {}
    for event in (event for events in runs for event in events):
        at = event.event_time.ToDatetime()
        if event.HasField("workflow_execution_update_accepted_event_attributes"):
            accepted = event.workflow_execution_update_accepted_event_attributes.accepted_request
            ask = json.loads(accepted.input.args.payloads[0].data)
            asked[accepted.meta.update_id] = (ask["holder"], at)
        elif event.HasField("workflow_execution_update_completed_event_attributes"):
            completed = event.workflow_execution_update_completed_event_attributes
            answer = json.loads(completed.outcome.success.payloads[0].data)
            if not answer["granted"]:
                queued.append(completed.meta.update_id)
        elif event.HasField("signal_external_workflow_execution_initiated_event_attributes"):
            signal = event.signal_external_workflow_execution_initiated_event_attributes
            if signal.signal_name == TURN_GRANTED:
                told.append(signal.workflow_execution.workflow_id)
                told_at.setdefault(signal.workflow_execution.workflow_id, at)
    # In the order asked (asks are answered at once: each completes right after it is accepted).
    order = list(asked)
    queued.sort(key=order.index)
    waited = {
        asked[u][0]: (told_at[asked[u][0]] - asked[u][1]).total_seconds()
        for u in queued
        if asked[u][0] in told_at
    }
    return PoolHistory(
        asked=[holder for holder, _ in asked.values()],
        queued=[asked[u][0] for u in queued],
        told=told,
        waited_s=waited,
        runs=len(runs),
    )


async def holders_asked(client: Client, task_queue: str, pool: str) -> list[str]:
    """Every holder that ever asked the pool for a turn, in the order asked."""
    return (await pool_history(client, task_queue, pool)).asked


async def grants_in_order(
    client: Client, task_queue: str, pool: str
) -> tuple[list[str], list[str]]:
    """The holders whose asks were queued, in the order asked, and the holders told their turn
    came, in the order told."""
    history = await pool_history(client, task_queue, pool)
    return history.queued, history.told
