"""What several workflows do the same way: describe a failure, run a task from QUEUED to its end,
wait for a person, wait for a turn of a limited pool, and make and remove a Worker container.

Deterministic workflow code (activity calls, conditions, timers) only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    FailureError,
    is_cancelled_exception,
)
from temporalio.types import MethodAsyncNoParam
from temporalio.workflow import ActivityCancellationType

from workflows.policies import (
    CREATE_WORKER_HEARTBEAT,
    CREATE_WORKER_RETRY,
    CREATE_WORKER_TIMEOUT,
    DB_RETRY,
    QUICK,
    QUICK_RETRY,
)

with workflow.unsafe.imports_passed_through():
    from activities.gateway import GatewayActivities
    from activities.tasks import (
        FinishTaskInput,
        QuestionInput,
        StartTaskResult,
        TaskActivities,
        TaskEventInput,
    )
    from activities.turns import AskForTurnInput, TurnActivities
    from activities.workers import CreateContainerInput, WorkerActivities
    from core.contracts.agents import uses_model
    from core.contracts.events import TASK_QUESTION, TASK_RESPOND, HumanAnswer
    from core.contracts.workflows import TURN_GRANTED, TURNS_GIVE_BACK, TurnGiveBack
    from core.enums import EventType, TaskStatus
    from core.ids import turns_workflow_id
    from core.task_queues import CONTAINERS, Capability, capability_queue

R = TypeVar("R")
Item = TypeVar("Item")

# Runs from before it replay an older cancellation of ``create_container``; no run needs that any
# more: new runs record it as a deprecated marker (see ``create_worker``).
CREATE_WAITS_PATCH = "create-container-waits-for-its-cancellation"
# Runs from before it waited for a Worker slot or a deploy lock inside an activity, polling; new
# runs wait for a turn in workflow code (``TakesTurns``).
TURNS_PATCH = "turns-wait-in-workflow-code"
# Runs from before it opened a gateway socket only for Workers of agents that use a model; new
# runs open one for every Worker (its way to the package registries) and close it after.
GATEWAY_FOR_EVERY_WORKER_PATCH = "gateway-for-every-worker"
# Runs from before it went on after a signal to another run when their own cancel request came
# in the same workflow task as the signal's completion (see ``signal_run``).
SIGNAL_KEEPS_CANCEL_PATCH = "signal-keeps-a-cancel-that-came-with-it"


def host_with(capability: Capability) -> str:
    """The task queue of the activities only a host with ``capability`` runs (a container
    engine, Ansible), beside the queue this run is on: core/task_queues.py."""
    return capability_queue(workflow.info().task_queue, capability)


async def signal_run(workflow_id: str, signal: str, arg: Any) -> None:
    """Signal another run, hearing this run's cancel request even when it came with the signal.

    The SDK shields a signal from the caller's cancellation; when the cancel request and the
    signal's completion arrive in one workflow task, the completed signal wins and the cancel
    is dropped (the run then waits on, deaf to it). Raise it here instead.
    """
    cancelled_before = workflow.cancellation_reason() is not None
    try:
        await workflow.get_external_workflow_handle(workflow_id).signal(signal, arg)
    finally:  # also when the signal failed: the caller must not take that for the whole story
        cancelled_meanwhile = not cancelled_before and workflow.cancellation_reason() is not None
        if cancelled_meanwhile and workflow.patched(SIGNAL_KEEPS_CANCEL_PATCH):
            raise asyncio.CancelledError()


def describe_failure(error: BaseException) -> str:
    """One readable sentence for a failure: the first application error's message, else the
    innermost cause (a timeout, a termination), naming the activity or child it came from."""
    where: list[str] = []
    innermost = str(error)
    current: BaseException | None = error
    while current is not None:
        if isinstance(current, ApplicationError):
            return current.message
        if isinstance(current, ActivityError):
            where.append(f"activity {current.activity_type}")
        elif isinstance(current, ChildWorkflowError):
            where.append(f"workflow {current.workflow_id}")
        elif isinstance(current, FailureError) and current.message:
            innermost = current.message
        current = current.cause if isinstance(current, FailureError) else None
    return f"{innermost} ({', '.join(where)})" if where else innermost


def stop_if_cancelled() -> None:
    """The run was cancelled while it waited for an activity that finished all the same: stop
    here, as the cancel would have stopped it (the cleanup it leads to then sees what that
    activity made)."""
    if workflow.cancellation_reason() is not None:
        raise asyncio.CancelledError()


# --- the task row: start, events, finish ---------------------------------------------------------


class TaskRun:
    """One task's row, as the workflow running it moves it: QUEUED -> RUNNING, its events, and its
    terminal status once. ``noun`` names the task in its messages ("task", "deploy")."""

    def __init__(self, task_id: str, *, noun: str = "task", failure_type: str) -> None:
        self.task_id = task_id
        self.noun = noun
        self.failure_type = failure_type
        self.status = TaskStatus.queued
        # Set while a cancel is recorded: ``on_failure`` tells a cancel from a failure by it.
        self.cancelling = False

    async def run(
        self,
        work: Callable[[], Awaitable[tuple[R, str, dict[str, Any] | None]]],
        *,
        on_failure: Callable[[str], Awaitable[None]] | None = None,
        finally_: Callable[[], Awaitable[None]] | None = None,
    ) -> R | None:
        """Start the task, do ``work`` and finish the task with what it returns (its value, the
        closing message and the task's result), or FAILED / CANCELLED with why. None when the
        task was cancelled (or finished) before it started; ``status`` says which.

        ``on_failure(reason)`` runs before a failure or a cancel is recorded; ``finally_`` after
        the task's end is, whatever it was. A failure ends the run Failed (no retry of the whole
        run), a cancel ends it Cancelled.
        """
        try:
            started = await self.start()
            self.status = started.status
            if not started.should_run:
                workflow.logger.info("task %s is %s; nothing to do", self.task_id, started.status)
                return None
            value, message, result = await work()
            await self.finish(TaskStatus.completed, message, result=result)
            return value
        except (asyncio.CancelledError, FailureError) as error:
            if is_cancelled_exception(error):
                self.cancelling = True
                if on_failure is not None:
                    await on_failure(f"the {self.noun} was cancelled")
                await self.finish(TaskStatus.cancelled, f"The {self.noun} was cancelled")
                raise  # the run shows Cancelled
            reason = describe_failure(error)
            if on_failure is not None:
                await on_failure(reason)
            await self.finish(TaskStatus.failed, f"The {self.noun} failed: {reason}", error=reason)
            # Non-retryable: the run shows Failed with the reason instead of starting over.
            raise ApplicationError(reason, type=self.failure_type, non_retryable=True) from error
        finally:
            if finally_ is not None:
                await finally_()

    async def start(self) -> StartTaskResult:
        """QUEUED -> RUNNING; ``should_run`` is False when the task was cancelled before."""
        return await workflow.execute_activity_method(
            TaskActivities.start_task,
            self.task_id,
            start_to_close_timeout=QUICK,
            retry_policy=DB_RETRY,
            summary="Mark the task RUNNING",
        )

    async def event(
        self,
        type: EventType,
        message: str,
        *,
        stage: str | None = None,
        progress: float | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        await workflow.execute_activity_method(
            TaskActivities.record_event,
            TaskEventInput(
                task_id=self.task_id,
                type=type,
                message=message,
                stage=stage,
                progress=progress,
                data=data or {},
            ),
            start_to_close_timeout=QUICK,
            retry_policy=DB_RETRY,
            summary=f"Event {type.value}" + (f" ({stage})" if stage else ""),
        )

    async def finish(
        self,
        status: TaskStatus,
        message: str,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """The terminal status, once. A run already failing or cancelled reports that first
        problem, not a second one met while recording it."""
        self.status = status
        try:
            await workflow.execute_activity_method(
                TaskActivities.finish_task,
                FinishTaskInput(
                    task_id=self.task_id, status=status, message=message, result=result, error=error
                ),
                start_to_close_timeout=QUICK,
                retry_policy=DB_RETRY,
                summary=f"Mark the task {status.value}",
            )
        except FailureError as failure:
            if status is TaskStatus.completed:
                raise
            workflow.logger.warning("could not record %s: %s", status, describe_failure(failure))


# --- waiting for a person ------------------------------------------------------------------------


class WaitsForPerson:
    """A task workflow that may wait for a person: the ``respond`` update (a person's answer,
    refused while nothing is asked) and the ``question`` query. The wait holds nothing: no
    activity, no container, no slot; it lasts as long as it takes.

    ``_task_id`` names the task in refusals; the subclass sets it when its run starts.
    """

    _task_id: str = ""
    _question: str | None = None
    _answer: HumanAnswer | None = None

    async def wait_for_person(
        self, question: str, *, stage: str, summary: str = "Mark the task WAITING_HUMAN"
    ) -> HumanAnswer:
        """WAITING_HUMAN with ``question`` until an answer comes (``respond``, or ``nudge``),
        then RUNNING again; returns the answer."""
        change = QuestionInput(task_id=self._task_id, question=question, stage=stage)
        self._question, self._answer = question, None
        await workflow.execute_activity_method(
            TaskActivities.wait_for_human,
            change,
            start_to_close_timeout=QUICK,
            retry_policy=DB_RETRY,
            summary=summary,
        )
        await workflow.wait_condition(lambda: self._answer is not None)
        answer = self._answer
        assert answer is not None
        self._question, self._answer = None, None
        await workflow.execute_activity_method(
            TaskActivities.answered,
            change,
            start_to_close_timeout=QUICK,
            retry_policy=DB_RETRY,
            summary="Mark the task RUNNING again",
        )
        return answer

    def nudge(self, answer: HumanAnswer) -> None:
        """Answer the pending question from inside the workflow (e.g. a signal that what it
        waits for changed); nothing when nothing is asked."""
        if self._question is not None and self._answer is None:
            self._answer = answer

    @workflow.update(name=TASK_RESPOND)
    async def respond(self, answer: HumanAnswer) -> str:
        """A person's answer to the pending question; returns the question it answered."""
        question = self._question or ""
        self._answer = answer
        return question

    @respond.validator
    def _validate_respond(self, answer: HumanAnswer) -> None:
        if self._question is None or self._answer is not None:
            raise ValueError(f"task {self._task_id} is not waiting for an answer")

    @workflow.query(name=TASK_QUESTION)
    def question(self) -> str | None:
        return self._question


# --- turns of a limited pool ----------------------------------------------------------------------


class TakesTurns:
    """A workflow that takes turns of limited pools (workflows/turns.py): Worker slots, a
    project's one deploy at a time.

    Asking is a short activity answered at once; a queued ask then waits here, in workflow code,
    for the pool's ``turn_granted`` signal: no activity slot, no poll, no history while it waits.
    Giving back is a signal, sent however the run ends (a cancel while queued leaves the queue);
    a run that closes without it (terminated) is given back by the reaper.
    """

    _turns_granted: frozenset[str] = frozenset()
    # The pool workflow each turn (by key) was asked of: where it is given back.
    _turn_pools: tuple[tuple[str, str], ...] = ()

    @workflow.signal(name=TURN_GRANTED)
    def turn_granted(self, key: str) -> None:
        self._turns_granted = self._turns_granted | {key}

    async def take_turn(self, pool: str, key: str, *, task_id: str | None = None) -> None:
        """Return once this run holds a turn of ``pool`` for ``key`` (at once if it already
        does). Runs from before ``TURNS_PATCH`` take none: their activity waited."""
        if not workflow.patched(TURNS_PATCH):
            return
        self._turns_granted = self._turns_granted - {key}
        answer = await workflow.execute_activity_method(
            TurnActivities.ask_for_turn,
            AskForTurnInput(
                pool=pool, holder=workflow.info().workflow_id, key=key, task_id=task_id
            ),
            start_to_close_timeout=QUICK,
            retry_policy=QUICK_RETRY,
            # A cancel lets the ask finish: the give-back that follows then finds it queued.
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            summary=f"Ask for a turn of {pool}",
        )
        self._turn_pools = (*self._turn_pools, (key, answer.pool_workflow_id))
        stop_if_cancelled()
        if not answer.granted:
            await workflow.wait_condition(lambda: key in self._turns_granted)
        self._turns_granted = self._turns_granted - {key}

    async def give_back_turn(self, pool: str, key: str) -> None:
        """Give the turn back, or leave the queue; nothing when this run holds neither."""
        if not workflow.patched(TURNS_PATCH):
            return
        give_back = TurnGiveBack(holder=workflow.info().workflow_id, key=key)
        # Asked in this run, the pool said where it is; else (asked before a continue-as-new)
        # it is the pool of this run's queue.
        asked = dict(self._turn_pools)
        pool_workflow_id = asked.get(key) or turns_workflow_id(workflow.info().task_queue, pool)
        self._turn_pools = tuple((k, p) for k, p in self._turn_pools if k != key)
        try:
            await signal_run(pool_workflow_id, TURNS_GIVE_BACK, give_back)
        except FailureError as failure:  # no such pool: nothing to give back
            workflow.logger.warning("turn of %s not given back: %s", pool, failure)

    async def create_worker_in_turn(
        self, pool: str, request: CreateContainerInput, summary: str
    ) -> None:
        """Wait for a turn of ``pool``, then make (or find) the Worker's container."""
        await self.take_turn(pool, request.worker_id, task_id=request.task_id)
        await create_worker(request, summary)

    async def remove_worker_and_turn(self, pool: str, worker_id: str, summary: str) -> None:
        """Remove the Worker's container (made or not), then give its turn back."""
        await remove_worker(worker_id, summary)
        await self.give_back_turn(pool, worker_id)


# --- Worker containers ---------------------------------------------------------------------------


async def create_worker(request: CreateContainerInput, summary: str) -> None:
    """Make (or find) the Worker's container.

    A cancel that comes while the container is being made waits for it, then stops the run:
    the cleanup that follows removes the container instead of running before it exists. (The
    SDK hands back the result of an activity that finished anyway, hence the check after it.)
    """
    workflow.deprecate_patch(CREATE_WAITS_PATCH)
    await workflow.execute_activity_method(
        WorkerActivities.create_container,
        request,
        task_queue=host_with(CONTAINERS),
        start_to_close_timeout=CREATE_WORKER_TIMEOUT,
        heartbeat_timeout=CREATE_WORKER_HEARTBEAT,
        cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        retry_policy=CREATE_WORKER_RETRY,
        summary=summary,
    )
    stop_if_cancelled()


async def remove_worker(worker_id: str, summary: str) -> None:
    """Remove the Worker's container (made or not)."""
    await workflow.execute_activity_method(
        WorkerActivities.remove_container,
        worker_id,
        task_queue=host_with(CONTAINERS),
        start_to_close_timeout=QUICK,
        retry_policy=QUICK_RETRY,
        summary=summary,
    )


def gateway_was_opened(agent: str) -> bool:
    """Whether the Worker's run opened a gateway socket to close: a model agent's always; since
    ``GATEWAY_FOR_EVERY_WORKER_PATCH``, every Worker's."""
    return uses_model(agent) or workflow.patched(GATEWAY_FOR_EVERY_WORKER_PATCH)


async def close_gateway(task_id: str, summary: str) -> None:
    """The task's model gateway socket serves no one any more (its totals stay recorded)."""
    await workflow.execute_activity_method(
        GatewayActivities.close_gateway,
        task_id,
        # The socket is served on the host of the task's Worker.
        task_queue=host_with(CONTAINERS),
        start_to_close_timeout=QUICK,
        retry_policy=QUICK_RETRY,
        summary=summary,
    )


# --- many checks at once (the scheduled jobs) ----------------------------------------------------


async def read_plan(method: MethodAsyncNoParam[Any, R], summary: str) -> R:
    """What a scheduled job's run works through, read from the database."""
    return await workflow.execute_activity_method(
        method, start_to_close_timeout=QUICK, retry_policy=DB_RETRY, summary=summary
    )


async def bounded_each(
    items: Sequence[Item], limit: int, call: Callable[[Item], Awaitable[R]]
) -> tuple[list[R], list[tuple[Item, str]]]:
    """``call`` on every item, at most ``limit`` at a time. Returns the results of those that
    ended, and (item, why) of those whose activity failed for good: one failure does not stop
    the others."""
    slots = asyncio.Semaphore(max(1, limit))
    results: list[R] = []
    failures: list[tuple[Item, str]] = []

    async def one(item: Item) -> None:
        async with slots:
            try:
                results.append(await call(item))
            except ActivityError as error:
                failures.append((item, str(error.cause or error)))

    await asyncio.gather(*(one(item) for item in items))
    return results, failures
