"""Taking turns of a pool (workflows/turns.py) from a test: a holder workflow that takes one and
keeps it until told, and asks made in the name of any workflow id."""

from __future__ import annotations

import dataclasses
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from temporalio.client import Client
    from temporalio.testing import ActivityEnvironment

    from activities.turns import AskForTurnInput, TurnActivities
    from core.contracts.workflows import TURNS_STATE, TurnAnswer, TurnsState
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
