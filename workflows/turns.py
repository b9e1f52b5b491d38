"""TurnsWorkflow: a limited pool (Worker slots, a project's one deploy at a time) that its holders
wait on in workflow code, first come first served.

One run per pool, id ``turns-{pool}`` (core/ids.py), started by the first ask (update-with-start,
activities/turns.py). A holder's workflow asks with the ``ask`` update and is answered at once:
granted, or queued with how many wait ahead. A queued holder then waits in its own workflow code
for the ``turn_granted`` signal (workflows/toolkit.py ``TakesTurns``): no activity, no poll, no
event in its history until its turn comes. A holder gives its turn back (or leaves the queue)
with the ``give_back`` signal, however its run ends; a holder whose run closed without doing so
(terminated, timed out) is given back by the reaper, and a grant its workflow can no longer
receive goes to the next in line.

Deterministic workflow code only. The pool's state is small (who holds, who waits); the run
continues as new when its history grows long, carrying the state over.
"""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.exceptions import FailureError

with workflow.unsafe.imports_passed_through():
    from core.contracts.workflows import (
        TURN_GRANTED,
        TURNS_ASK,
        TURNS_GIVE_BACK,
        TURNS_STATE,
        TURNS_WORKFLOW,
        Turn,
        TurnAnswer,
        TurnAsk,
        TurnGiveBack,
        TurnsInput,
        TurnsState,
    )

# Continue as new well before Temporal's own warning; a pool's every ask and give-back is a few
# events.
CONTINUE_AFTER_EVENTS = 10_000


@workflow.defn(name=TURNS_WORKFLOW)
class TurnsWorkflow:
    @workflow.init
    def __init__(self, request: TurnsInput) -> None:
        self._state = TurnsState.model_validate(request.model_dump())

    @workflow.run
    async def run(self, request: TurnsInput) -> None:
        while True:
            await workflow.wait_condition(lambda: bool(self._state.to_notify) or _long())
            if self._state.to_notify:
                await self._notify()
                continue
            await workflow.wait_condition(workflow.all_handlers_finished)
            if not self._state.to_notify:
                workflow.continue_as_new(TurnsInput.model_validate(self._state.model_dump()))

    # --- the holders' side ----------------------------------------------------------------------

    @workflow.update(name=TURNS_ASK)
    def ask(self, request: TurnAsk) -> TurnAnswer:
        """Grant a turn now when the pool has room and nobody waits; else queue the holder.
        Asking again (a retried ask) answers the same without queueing twice."""
        state = self._state
        state.limit = request.limit
        if _find(state.holding, request.holder, request.key) is not None:
            return self._answer(True)
        if (queued := _find(state.waiting, request.holder, request.key)) is not None:
            return self._answer(False, ahead=state.waiting.index(queued))
        turn = Turn(
            holder=request.holder, key=request.key, task_id=request.task_id, asked_at=workflow.now()
        )
        if len(state.holding) < state.limit and not state.waiting:
            self._hold(turn)
            return self._answer(True)
        state.waiting.append(turn)
        return self._answer(False, ahead=len(state.waiting) - 1)

    @ask.validator
    def _validate_ask(self, request: TurnAsk) -> None:
        if not request.holder or not request.key:
            raise ValueError("a turn needs a holder and a key")
        if request.pool != self._state.pool:
            raise ValueError(f"this is the pool {self._state.pool!r}, not {request.pool!r}")

    @workflow.signal(name=TURNS_GIVE_BACK)
    def give_back(self, request: TurnGiveBack) -> None:
        """The holder's turn ends, or it leaves the queue; the next in line gets the room."""
        state = self._state
        for turns in (state.holding, state.waiting, state.to_notify):
            if (turn := _find(turns, request.holder, request.key)) is not None:
                turns.remove(turn)
        self._grant_next()

    @workflow.query(name=TURNS_STATE)
    def state(self) -> TurnsState:
        return self._state

    # --- granting -------------------------------------------------------------------------------

    def _answer(self, granted: bool, *, ahead: int = 0) -> TurnAnswer:
        return TurnAnswer(
            granted=granted, in_use=len(self._state.holding), limit=self._state.limit, ahead=ahead
        )

    def _hold(self, turn: Turn) -> None:
        turn.granted_at = workflow.now()
        self._state.holding.append(turn)
        self._state.granted_total += 1

    def _grant_next(self) -> None:
        state = self._state
        while state.waiting and len(state.holding) < state.limit:
            turn = state.waiting.pop(0)
            self._hold(turn)
            state.to_notify.append(turn)

    async def _notify(self) -> None:
        """Tell the holders whose turn came; a holder that can no longer hear it (its run
        closed) gives the turn back, so it passes on."""
        batch, self._state.to_notify = self._state.to_notify, []
        results = await asyncio.gather(
            *(
                workflow.get_external_workflow_handle(turn.holder).signal(TURN_GRANTED, turn.key)
                for turn in batch
            ),
            return_exceptions=True,
        )
        for turn, result in zip(batch, results, strict=True):
            if isinstance(result, FailureError):
                workflow.logger.info("turn of %s passed on: %s", turn.holder, result)
                self.give_back(TurnGiveBack(holder=turn.holder, key=turn.key))
            elif isinstance(result, BaseException):
                raise result


def _find(turns: list[Turn], holder: str, key: str) -> Turn | None:
    return next((t for t in turns if t.holder == holder and t.key == key), None)


def _long() -> bool:
    info = workflow.info()
    return (
        info.is_continue_as_new_suggested()
        or info.get_current_history_length() > CONTINUE_AFTER_EVENTS
    )
