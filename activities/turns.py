"""Asking a pool for a turn (workflows/turns.py), and giving back the turns of closed runs.

A workflow cannot start another workflow that is not its child, nor send it an update: asking is
this short activity, an update-with-start that is answered at once (granted or queued). The
waiting itself happens in the asking workflow's code, holding nothing (workflows/toolkit.py
``TakesTurns``). The pool sizes come from the settings here, so changing them needs no new
workflow code.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.client import Client, WithStartWorkflowOperation, WorkflowQueryFailedError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError

from core.contracts.workflows import (
    DEPLOY_POOL_PREFIX,
    PO_WORKERS_POOL,
    TURNS_ASK,
    TURNS_GIVE_BACK,
    TURNS_STATE,
    TURNS_WORKFLOW,
    WORKERS_POOL,
    TurnAnswer,
    TurnAsk,
    TurnGiveBack,
    TurnsInput,
    TurnsState,
)
from core.enums import EventType
from core.ids import turns_workflow_id
from core.logging import get_logger
from core.settings import Settings
from core.temporal import is_running
from db.tasks import TaskNotFound, TaskService

log = get_logger("activities.turns")

QUERY_TIMEOUT = timedelta(seconds=10)


class AskForTurnInput(BaseModel):
    pool: str
    holder: str = Field(description="The asking workflow's id: the turn is granted to it")
    key: str = Field(description="What the turn is for (a Worker id, a task id)")
    task_id: str | None = Field(default=None, description="The task whose events say it waits")


class GivenBack(BaseModel):
    pool: str
    holder: str
    key: str


def pool_limit(settings: Settings, pool: str) -> int:
    if pool == WORKERS_POOL:
        return settings.max_workers
    if pool == PO_WORKERS_POOL:
        return settings.max_po_workers
    if pool.startswith(DEPLOY_POOL_PREFIX):
        return 1
    raise ValueError(f"unknown pool {pool!r}")


def waiting_message(pool: str, answer: TurnAnswer) -> str:
    """What a task's events say while it waits for a turn of ``pool``."""
    ahead = f"; {answer.ahead} ahead in the queue" if answer.ahead else ""
    if pool == WORKERS_POOL:
        return (
            f"Waiting for a Worker slot: {answer.in_use} of {answer.limit} in use "
            f"(ORCHESTRATOR_MAX_WORKERS){ahead}"
        )
    if pool == PO_WORKERS_POOL:
        return (
            f"Waiting for a PO Worker slot: {answer.in_use} of {answer.limit} in use "
            f"(ORCHESTRATOR_MAX_PO_WORKERS){ahead}"
        )
    return f"Waiting for the project's other deploy to finish: one deploy at a time{ahead}"


class TurnActivities:
    def __init__(self, settings: Settings, client: Client, tasks: TaskService | None) -> None:
        self.settings = settings
        self.client = client
        self.tasks = tasks

    @activity.defn
    async def ask_for_turn(self, request: AskForTurnInput) -> TurnAnswer:
        """Ask the pool (starting its workflow if need be); a queued ask says so in the task's
        events. Asking again for a turn held or queued answers the same."""
        limit = pool_limit(self.settings, request.pool)
        task_queue = activity.info().task_queue
        pool_workflow_id = turns_workflow_id(task_queue, request.pool)
        start: WithStartWorkflowOperation[Any, None] = WithStartWorkflowOperation(
            TURNS_WORKFLOW,
            TurnsInput(pool=request.pool, limit=limit),
            id=pool_workflow_id,
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            static_summary=f"Turns of the pool {request.pool}",
        )
        ask = TurnAsk(
            pool=request.pool,
            limit=limit,
            holder=request.holder,
            key=request.key,
            task_id=request.task_id,
        )
        answer: TurnAnswer = await self.client.execute_update_with_start_workflow(
            TURNS_ASK, ask, start_workflow_operation=start, result_type=TurnAnswer
        )
        if not answer.granted:
            await self._say_it_waits(request, answer)
        return answer.model_copy(update={"pool_workflow_id": pool_workflow_id})

    async def _say_it_waits(self, request: AskForTurnInput, answer: TurnAnswer) -> None:
        message = waiting_message(request.pool, answer)
        log.info("waiting for a turn", pool=request.pool, holder=request.holder, ahead=answer.ahead)
        if self.tasks is None or request.task_id is None:
            return
        try:
            await self.tasks.add_event(
                request.task_id,
                EventType.progress,
                message,
                data={"pool": request.pool, **answer.model_dump()},
            )
        except TaskNotFound:  # a Worker of no task (worker:commands): the log says it
            pass

    @activity.defn
    async def reap_turns(self) -> list[GivenBack]:
        """Give back the turns (held or queued) of runs that closed without doing so: terminated,
        timed out, or gone with a deleted namespace's history. Only the pools of this worker's
        task queue: another queue's pools are another deployment's (or nobody's) to reap."""
        given: list[GivenBack] = []
        query = (
            f"WorkflowType = '{TURNS_WORKFLOW}' AND ExecutionStatus = 'Running' "
            f"AND TaskQueue = '{activity.info().task_queue}'"
        )
        async for pool in self.client.list_workflows(query):
            handle = self.client.get_workflow_handle(pool.id)
            try:
                state = await handle.query(
                    TURNS_STATE, result_type=TurnsState, rpc_timeout=QUERY_TIMEOUT
                )
            except (
                RPCError,
                WorkflowQueryFailedError,
            ) as error:  # not answering now: the next reaper run looks again
                log.warning("pool not queried", pool=pool.id, error=str(error))
                continue
            for turn in [*state.holding, *state.waiting]:
                activity.heartbeat(pool.id)
                if await is_running(self.client, turn.holder):
                    continue
                await handle.signal(TURNS_GIVE_BACK, TurnGiveBack(holder=turn.holder, key=turn.key))
                given.append(GivenBack(pool=state.pool, holder=turn.holder, key=turn.key))
        if given:
            log.info("turns of closed runs given back", count=len(given))
        return given
