"""WorkerWorkflow: one Worker container's whole life, id ``worker-{worker_id}``.

On start it creates the container (an activity; idempotent by name). Then it serves, one at a
time and in arrival order:

- ``send_message`` (update): one agent turn on the message; returns a :class:`WorkerAnswer`;
- ``send_file`` (update): writes a file into the Worker;
- ``queue_message`` / ``queue_file`` (signals): the same, answered by publishing a
  ``WorkerResponse`` on the streams the request names (the ``worker:commands`` bridge uses these,
  so it never waits for an agent); a request_id seen before is ignored (redelivery);
- ``delete`` (signal): cancels a running turn, removes the container and ends the run.

With no message for ``idle_timeout_s`` the Worker deletes itself. A cancelled run removes the
container before it ends CANCELLED. The container's labels name this workflow, so the reaper
removes it if this run ever closes without doing so (e.g. terminated).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError, FailureError, is_cancelled_exception

from workflows.policies import QUICK, QUICK_RETRY, TURN_HEARTBEAT, TURN_MARGIN, TURN_RETRY
from workflows.toolkit import TakesTurns, close_gateway, gateway_was_opened, host_with

with workflow.unsafe.imports_passed_through():
    from activities.workers import (
        AgentTurnInput,
        CreateContainerInput,
        PublishInput,
        WorkerActivities,
        WriteFileInput,
    )
    from core.contracts.agents import AgentResult, Budget
    from core.contracts.worker import WorkerResponse
    from core.contracts.workflows import (
        WORKER_DELETE,
        WORKER_QUEUE_FILE,
        WORKER_QUEUE_MESSAGE,
        WORKER_SEND_FILE,
        WORKER_SEND_MESSAGE,
        WORKER_WORKFLOW,
        WORKERS_POOL,
        ReplyTo,
        WorkerAnswer,
        WorkerDelete,
        WorkerFile,
        WorkerInput,
        WorkerMessage,
        WorkerOutput,
    )
    from core.enums import AGENTS
    from core.task_queues import CONTAINERS

SEEN_REQUESTS = 1000


class WorkerDeleted(ApplicationError):
    def __init__(self, worker_id: str) -> None:
        super().__init__(f"Worker {worker_id} is deleted", type="WorkerDeleted", non_retryable=True)


@workflow.defn(name=WORKER_WORKFLOW)
class WorkerWorkflow(TakesTurns):
    @workflow.init
    def __init__(self, request: WorkerInput) -> None:
        self._input = request
        self._lock = asyncio.Lock()  # one message or file at a time, in arrival order
        self._ready = False
        self._closing = False
        self._delete: WorkerDelete | None = None
        self._activity = 0  # bumps with every request and its end: restarts the idle clock
        self._busy = 0
        self._turns = 0
        self._turn: workflow.ActivityHandle[AgentResult] | None = None
        self._seen: list[str] = []

    @property
    def _worker_id(self) -> str:
        return self._input.worker_id

    @workflow.run
    async def run(self, request: WorkerInput) -> WorkerOutput:
        try:
            self._check(request)
            await self._create(request)
        except (asyncio.CancelledError, FailureError) as error:
            self._closing = True
            await self._cleanup()
            if is_cancelled_exception(error):
                raise
            reason = _describe(error)
            await self._reply(request.reply, success=False, error=reason)
            raise ApplicationError(
                f"Worker {self._worker_id} could not start: {reason}",
                type="WorkerFailed",
                non_retryable=True,
            ) from error
        self._ready = True
        await self._reply(request.reply, success=True, response=f"Worker {self._worker_id} ready")
        try:
            reason = await self._serve(request.idle_timeout_s)
        except asyncio.CancelledError:
            self._closing = True
            await self._cleanup()
            raise
        self._closing = True
        await self._cleanup()
        if self._delete is not None:
            await self._reply(self._delete.reply, success=True, response="deleted")
        await workflow.wait_condition(workflow.all_handlers_finished)
        return WorkerOutput(worker_id=self._worker_id, reason=reason, turns=self._turns)

    def _check(self, request: WorkerInput) -> None:
        if request.agent not in AGENTS:
            raise ApplicationError(
                f"unknown agent {request.agent!r}; known: {', '.join(sorted(AGENTS))}",
                type="BadWorkerInput",
                non_retryable=True,
            )
        if request.env_refs:
            # Nothing resolves secret references yet; running without them would mislead.
            raise ApplicationError(
                "env_refs are not supported yet: no secret store resolves them",
                type="BadWorkerInput",
                non_retryable=True,
            )

    async def _create(self, request: WorkerInput) -> None:
        await self.create_worker_in_turn(
            WORKERS_POOL,
            CreateContainerInput(
                worker_id=request.worker_id,
                task_id=request.effective_task_id,
                workflow_id=workflow.info().workflow_id,
                agent=request.agent,
                image=request.image,
                workspace=request.workspace,
                budget=self._budget(),
            ),
            f"Create the {request.agent} Worker {request.worker_id}",
        )

    async def _serve(self, idle_timeout_s: float) -> Any:
        """Wait for delete or idleness; a running request holds the idle clock."""
        idle = timedelta(seconds=idle_timeout_s)
        while True:
            if self._delete is not None:
                return "deleted"
            if self._busy:
                await workflow.wait_condition(lambda: self._delete is not None or not self._busy)
                continue
            try:
                await workflow.wait_condition(self._woken(self._activity), timeout=idle)
            except TimeoutError:
                workflow.logger.info("Worker %s idle for %s; deleting it", self._worker_id, idle)
                return "idle"

    def _woken(self, seen: int) -> Any:
        return lambda: self._delete is not None or self._activity != seen

    async def _cleanup(self) -> None:
        """Stop a running turn and remove the container (and the Worker's own gateway)."""
        if self._turn is not None:
            self._turn.cancel()
        await self.remove_worker_and_turn(
            WORKERS_POOL, self._worker_id, f"Remove the Worker {self._worker_id}"
        )
        # A task's gateway outlives its Workers; a Worker that is its own task closes its own.
        if self._input.task_id is None and gateway_was_opened(self._input.agent):
            await close_gateway(self._input.effective_task_id, "Close the Worker's gateway")

    # --- requests -------------------------------------------------------------------------------

    @workflow.update(name=WORKER_SEND_MESSAGE)
    async def send_message(self, message: WorkerMessage) -> WorkerAnswer:
        return await self._message(message)

    @send_message.validator
    def _validate_message(self, message: WorkerMessage) -> None:
        self._reject_when_closing()

    @workflow.update(name=WORKER_SEND_FILE)
    async def send_file(self, file: WorkerFile) -> None:
        await self._file(file)

    @send_file.validator
    def _validate_file(self, file: WorkerFile) -> None:
        self._reject_when_closing()

    @workflow.signal(
        name=WORKER_QUEUE_MESSAGE, unfinished_policy=workflow.HandlerUnfinishedPolicy.ABANDON
    )
    async def queue_message(self, message: WorkerMessage) -> None:
        if self._first_time(message.reply):
            await self._answered(self._message(message), message.reply)

    @workflow.signal(
        name=WORKER_QUEUE_FILE, unfinished_policy=workflow.HandlerUnfinishedPolicy.ABANDON
    )
    async def queue_file(self, file: WorkerFile) -> None:
        if self._first_time(file.reply):
            await self._answered(self._file(file), file.reply)

    @workflow.signal(name=WORKER_DELETE)
    def delete(self, request: WorkerDelete) -> None:
        if self._delete is None:
            self._delete = request

    @workflow.query
    def status(self) -> dict[str, Any]:
        return {"ready": self._ready, "closing": self._closing, "turns": self._turns}

    def _reject_when_closing(self) -> None:
        if self._closing or self._delete is not None:
            raise WorkerDeleted(self._worker_id)

    def _first_time(self, reply: ReplyTo | None) -> bool:
        if reply is None:
            return True
        if reply.request_id in self._seen:
            return False
        self._seen = [*self._seen[-(SEEN_REQUESTS - 1) :], reply.request_id]
        return True

    async def _answered(self, work: Any, reply: ReplyTo | None) -> None:
        """Run a queued request and publish its outcome; a signal handler must not raise."""
        try:
            outcome = await work
        except (ApplicationError, FailureError) as error:
            await self._reply(reply, success=False, error=_describe(error))
            return
        text = outcome.response if isinstance(outcome, WorkerAnswer) else "written"
        await self._reply(reply, success=True, response=text)

    async def _message(self, message: WorkerMessage) -> WorkerAnswer:
        result = await self._serially(self._run_turn, message)
        return WorkerAnswer(
            worker_id=self._worker_id,
            response=result.summary or result.raw_error or result.status,
            result=result,
        )

    async def _file(self, file: WorkerFile) -> None:
        await self._serially(self._write, file)

    async def _serially(self, step: Any, request: Any) -> Any:
        self._busy += 1
        self._activity += 1
        try:
            async with self._lock:
                await workflow.wait_condition(lambda: self._ready or self._closing)
                if self._closing or self._delete is not None:
                    raise WorkerDeleted(self._worker_id)
                return await step(request)
        finally:
            self._busy -= 1
            self._activity += 1

    async def _run_turn(self, message: WorkerMessage) -> AgentResult:
        request = self._input
        self._turn = workflow.start_activity_method(
            WorkerActivities.run_agent_turn,
            AgentTurnInput(
                worker_id=request.worker_id,
                task_id=request.effective_task_id,
                agent=request.agent,
                prompt=message.message,
                agent_options=request.agent_options,
                instructions=request.instructions,
                model=request.model,
                timeout_s=message.timeout_s,
                budget=self._budget(),
            ),
            task_queue=host_with(CONTAINERS),
            # The command's own timeout ends it inside the Worker; this is the backstop.
            start_to_close_timeout=timedelta(seconds=message.timeout_s) + TURN_MARGIN,
            heartbeat_timeout=TURN_HEARTBEAT,
            retry_policy=TURN_RETRY,
            summary=f"Agent turn {self._turns + 1} of {request.worker_id}",
        )
        try:
            result = await self._turn
        except (asyncio.CancelledError, FailureError) as error:
            if self._closing or self._delete is not None:
                raise WorkerDeleted(self._worker_id) from error
            raise ApplicationError(
                f"the agent turn failed: {_describe(error)}", type="AgentTurnFailed"
            ) from error
        finally:
            self._turn = None
        self._turns += 1
        return result

    async def _write(self, file: WorkerFile) -> None:
        try:
            await workflow.execute_activity_method(
                WorkerActivities.write_file,
                WriteFileInput(
                    worker_id=self._worker_id, path=file.path, content=file.content, mode=file.mode
                ),
                task_queue=host_with(CONTAINERS),
                start_to_close_timeout=QUICK,
                retry_policy=TURN_RETRY,
                summary=f"Write {file.path}",
            )
        except FailureError as error:
            raise ApplicationError(
                f"could not write {file.path}: {_describe(error)}", type="WriteFailed"
            ) from error

    async def _reply(
        self,
        reply: ReplyTo | None,
        *,
        success: bool,
        response: str | None = None,
        error: str | None = None,
    ) -> None:
        if reply is None:
            return
        await workflow.execute_activity_method(
            WorkerActivities.publish_response,
            PublishInput(
                streams=reply.streams,
                response=WorkerResponse(
                    request_id=reply.request_id,
                    correlation_id=reply.correlation_id,
                    timestamp=workflow.now(),
                    success=success,
                    worker_id=self._worker_id,
                    response=response,
                    error=error,
                ),
            ),
            start_to_close_timeout=QUICK,
            retry_policy=QUICK_RETRY,
            summary="Publish a WorkerResponse",
        )

    def _budget(self) -> Budget:
        return Budget(
            max_tokens=self._input.budget_tokens, max_cost_usd=self._input.budget_cost_usd
        )


def _describe(error: BaseException) -> str:
    """The innermost message of a failure chain (an activity's own words)."""
    message = str(error)
    cause = error.__cause__
    while cause is not None:
        if str(cause):
            message = str(cause)
        cause = cause.__cause__
    return message
