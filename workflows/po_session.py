"""POSessionWorkflow: one chat's Product Owner session, id ``po-{chat_id}``.

Every user message arrives as the ``send_message`` update (:data:`PO_SEND`), delivered with
update-with-start (the API's ``POST /chats/{chat_id}/messages``, or :func:`send_po_message`): the
first message starts the session. The reply goes onto the chat's stream
``telegram:chat:{chat_id}`` (the bot sends it; once per message however often the publishing
activity runs) and is the update's result too.

- The Worker: the first turn of a run prepares the session (its workspace ``<home>/po/<chat_id>``
  with our instructions file, and the agent the settings choose) and makes the container, which
  mounts the API's socket so the agent's ``orchestrator`` CLI acts as the chat's user, with
  ``ALLOWED_COMMANDS`` = the session's ``allowed_commands`` (PRODUCT_OWNER).
- ``respond`` (:data:`PO_RESPOND`, from ``orchestrator respond``): a Worker's message goes to the
  chat at once, and the next turn's prompt tells the PO about it.

- Order: the handlers only queue their message; the run takes them one at a time, in arrival
  order, and each handler waits until its own reply exists.
- Redelivery: replies are kept by message_id (the last :data:`KEPT_REPLIES`, also across
  continue-as-new); a message seen before gets the same reply without a second turn, and one
  still queued or running waits for that turn's reply.
- A turn runs the session's agent once in the session's Worker container (worker id
  ``po-{chat_id}``, labelled with this workflow id, made on the first turn of each run:
  creating is idempotent, so a run after continue-as-new finds the same container). The prompt
  holds the conversation summary, the recent exchanges and the new message.
- Continue-as-new after ``max_turns_per_run`` turns or when Temporal suggests it: the run first
  answers everything queued and lets every handler finish, then carries the summary, the kept
  replies and the turn count. The summary is a deterministic digest built here: the previous
  summary followed by the run's exchanges and notes, each cut short, keeping the last
  :data:`SUMMARY_CHARS` characters. (A model-written summary can replace it later.)
- A turn that fails (the agent fails, the activity gives up) still answers: the reply says why.
- With no message for ``idle_timeout_s`` the session removes its container and ends (its output
  holds the summary); a later message starts a new session, without the old summary or replies.
- A cancelled session removes its container; its waiting handlers are abandoned.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import FailureError, is_cancelled_exception

from workflows.policies import (
    PREPARE_SESSION_RETRY,
    PUBLISH_RETRY,
    PUBLISH_TIMEOUT,
    QUICK,
    TURN_HEARTBEAT,
    TURN_MARGIN,
    TURN_RETRY,
)
from workflows.toolkit import (
    TakesTurns,
    close_gateway,
    describe_failure,
    gateway_was_opened,
    host_with,
)

with workflow.unsafe.imports_passed_through():
    from temporalio.client import Client, WithStartWorkflowOperation
    from temporalio.common import WorkflowIDConflictPolicy

    from activities.po import POActivities, PrepareSessionInput, PublishToChatInput, SessionPlan
    from activities.workers import AgentTurnInput, ApiAccess, CreateContainerInput, WorkerActivities
    from core.contracts.agents import AgentResult
    from core.contracts.chat import ChatNote, ChatReply
    from core.contracts.workflows import (
        PO_RESPOND,
        PO_SEND,
        PO_SESSION_WORKFLOW,
        PO_STATUS,
        PO_WORKERS_POOL,
        POExchange,
        POMessage,
        POResponse,
        POSessionInput,
        POSessionOutput,
        POSessionStatus,
    )
    from core.ids import po_session_workflow_id
    from core.task_queues import CONTAINERS

KEPT_REPLIES = 200
# Exchanges quoted in full in a prompt; older ones live in the summary.
RECENT_EXCHANGES = 10
SUMMARY_CHARS = 6000
# One side of an exchange in the summary.
SUMMARY_SIDE_CHARS = 400


def worker_id_for(chat_id: int) -> str:
    return f"po-{chat_id}"


@workflow.defn(name=PO_SESSION_WORKFLOW)
class POSessionWorkflow(TakesTurns):
    @workflow.init
    def __init__(self, request: POSessionInput) -> None:
        self._input = request
        self._summary = request.summary
        self._replies = dict(request.replies)
        self._queue: list[POMessage] = list(request.pending)
        self._current: POMessage | None = None
        self._exchanges: list[POExchange] = []
        self._run_turns = 0
        self._container = False
        self._plan: SessionPlan | None = None
        # What Workers told the chat (``orchestrator respond``) since the last turn's prompt.
        self._notes: list[str] = []
        # This run's conversation for the summary, in order: exchanges and notes.
        self._lines: list[str] = []

    @property
    def _worker_id(self) -> str:
        return worker_id_for(self._input.chat_id)

    @workflow.run
    async def run(self, request: POSessionInput) -> POSessionOutput:
        try:
            await self._serve(request)
        except (asyncio.CancelledError, FailureError) as error:
            if is_cancelled_exception(error):
                await self._remove()
            raise
        return POSessionOutput(
            chat_id=request.chat_id,
            reason="idle",
            turns=self._turns,
            summary=self._digest(),
        )

    async def _serve(self, request: POSessionInput) -> None:
        idle = timedelta(seconds=request.idle_timeout_s)
        while True:
            if self._queue:
                await self._turn(self._queue.pop(0))
                continue
            if self._should_continue():
                await self._settle()
                if not self._queue:
                    workflow.continue_as_new(self._next_input(request))
                continue
            try:
                await workflow.wait_condition(lambda: bool(self._queue), timeout=idle)
            except TimeoutError:
                workflow.logger.info("PO session %s idle for %s", request.chat_id, idle)
                await self._remove()
                await self._settle()
                if not self._queue:  # a message that came meanwhile is answered first
                    return

    async def _settle(self) -> None:
        """Let the handlers whose replies exist return; a new message (its handler waits for
        its turn) ends the wait too, or the two would wait for each other."""
        await workflow.wait_condition(lambda: workflow.all_handlers_finished() or bool(self._queue))

    def _should_continue(self) -> bool:
        if self._run_turns == 0:
            return False
        return (
            self._run_turns >= self._input.max_turns_per_run
            or workflow.info().is_continue_as_new_suggested()
        )

    def _next_input(self, request: POSessionInput) -> POSessionInput:
        return request.model_copy(
            update={
                "summary": self._digest(),
                "replies": self._replies,
                "pending": self._queue,
                "turns": self._turns,
            }
        )

    @property
    def _turns(self) -> int:
        return self._input.turns + self._run_turns

    # --- messages -------------------------------------------------------------------------------

    # Only a cancelled session ends with handlers waiting (continue-as-new and idling wait for
    # them); their callers get an error, as they should.
    @workflow.update(name=PO_SEND, unfinished_policy=workflow.HandlerUnfinishedPolicy.ABANDON)
    async def send_message(self, message: POMessage) -> str:
        known = message.message_id in self._replies or self._waiting(message.message_id)
        if not known:
            self._queue.append(message)
        await workflow.wait_condition(lambda: message.message_id in self._replies)
        return self._replies[message.message_id]

    @workflow.query(name=PO_STATUS)
    def status(self) -> POSessionStatus:
        return POSessionStatus(
            chat_id=self._input.chat_id,
            turns=self._turns,
            run_turns=self._run_turns,
            current=self._current.message_id if self._current else None,
            pending=[m.message_id for m in self._queue],
            container=self._container,
            summary=self._summary,
            exchanges=self._exchanges,
        )

    @workflow.update(name=PO_RESPOND)
    async def respond(self, response: POResponse) -> None:
        """A Worker's message to the chat: sent at once, and the next turn's prompt tells the PO."""
        note = ChatNote(
            chat_id=self._input.chat_id,
            note_id=response.response_id,
            text=response.text,
            source=response.source,
        )
        await self._publish(PublishToChatInput(chat_id=note.chat_id, note=note))
        told = f"{response.source or 'a Worker'}: {response.text}"
        self._notes.append(told)
        self._lines.append(f"Told the user, {_cut(told)}")

    def _waiting(self, message_id: int) -> bool:
        if self._current is not None and self._current.message_id == message_id:
            return True
        return any(m.message_id == message_id for m in self._queue)

    # --- a turn ---------------------------------------------------------------------------------

    async def _turn(self, message: POMessage) -> None:
        self._current = message
        try:
            reply = await self._answer(message)
        finally:
            self._current = None
        chat_id = self._input.chat_id
        reply_entry = ChatReply(chat_id=chat_id, message_id=message.message_id, text=reply)
        await self._publish(PublishToChatInput(chat_id=chat_id, reply=reply_entry))
        self._run_turns += 1
        self._exchanges.append(
            POExchange(message_id=message.message_id, text=message.text, reply=reply)
        )
        self._lines += [f"User: {_cut(message.text)}", f"PO: {_cut(reply)}"]
        self._replies[message.message_id] = reply
        for old in list(self._replies)[:-KEPT_REPLIES]:
            del self._replies[old]

    async def _publish(self, publish: PublishToChatInput) -> None:
        await workflow.execute_activity_method(
            POActivities.publish_to_chat,
            publish,
            start_to_close_timeout=PUBLISH_TIMEOUT,
            retry_policy=PUBLISH_RETRY,
            summary=f"Send to chat {publish.chat_id}",
        )

    async def _answer(self, message: POMessage) -> str:
        """The PO's reply; a failed turn's reply says why (the chat must hear something)."""
        request = self._input
        try:
            plan = await self._prepare()
            await self._create(plan)
            result: AgentResult = await workflow.execute_activity_method(
                WorkerActivities.run_agent_turn,
                AgentTurnInput(
                    worker_id=self._worker_id,
                    task_id=workflow.info().workflow_id,
                    agent=plan.agent,
                    prompt=self._prompt(message),
                    agent_options=request.agent_options or plan.agent_options,
                    instructions=request.instructions,
                    model=request.model or plan.model,
                    timeout_s=request.turn_timeout_s,
                ),
                task_queue=host_with(CONTAINERS),
                start_to_close_timeout=timedelta(seconds=request.turn_timeout_s) + TURN_MARGIN,
                heartbeat_timeout=TURN_HEARTBEAT,
                retry_policy=TURN_RETRY,
                summary=f"PO turn {self._turns + 1} of chat {request.chat_id}",
            )
        except FailureError as error:
            if is_cancelled_exception(error):  # the session is cancelled: no reply
                raise
            self._container = False  # made again (or found) by the next turn
            return f"Sorry, I could not handle that message: {describe_failure(error)}"
        return _reply_text(result)

    async def _prepare(self) -> SessionPlan:
        """The workspace with our instructions, and the agent: once a run (settings may change
        between runs; a run keeps what it started with)."""
        if self._plan is None:
            self._plan = await workflow.execute_activity_method(
                POActivities.prepare_session,
                PrepareSessionInput(chat_id=self._input.chat_id, agent=self._input.agent),
                # The session's workspace is on the host of its Worker, which mounts it.
                task_queue=host_with(CONTAINERS),
                start_to_close_timeout=QUICK,
                retry_policy=PREPARE_SESSION_RETRY,
                summary="Prepare the PO's workspace and agent",
            )
        return self._plan

    async def _create(self, plan: SessionPlan) -> None:
        if self._container:
            return
        request = self._input
        api = None
        if request.user_id is not None:
            api = ApiAccess(
                user_id=request.user_id,
                chat_id=request.chat_id,
                allowed_commands=request.allowed_commands,
            )
        await self.create_worker_in_turn(
            PO_WORKERS_POOL,
            CreateContainerInput(
                worker_id=self._worker_id,
                task_id=workflow.info().workflow_id,
                workflow_id=workflow.info().workflow_id,
                agent=plan.agent,
                image=request.image,
                workspace=request.workspace or plan.workspace,
                api=api,
            ),
            f"Create the PO Worker {self._worker_id}",
        )
        self._container = True

    async def _remove(self) -> None:
        """Remove the container (whether or not this run made it) and the session's gateway."""
        await self.remove_worker_and_turn(
            PO_WORKERS_POOL, self._worker_id, f"Remove the PO Worker {self._worker_id}"
        )
        self._container = False
        if self._plan is not None and gateway_was_opened(self._plan.agent):
            await close_gateway(workflow.info().workflow_id, "Close the PO session's gateway")

    def _prompt(self, message: POMessage) -> str:
        parts = [f"You are the Product Owner in Telegram chat {self._input.chat_id}."]
        if self._summary:
            parts.append(f"The conversation so far (summary):\n{self._summary}")
        recent = self._exchanges[-RECENT_EXCHANGES:]
        if recent:
            lines = [f"User: {e.text}\nYou: {e.reply}" for e in recent]
            parts.append("The latest messages:\n" + "\n".join(lines))
        if self._notes:
            told = "\n".join(self._notes)
            parts.append(f"Since then, Workers told the user (orchestrator respond):\n{told}")
            self._notes = []  # the summary has them already (self._lines)
        parts.append(f"The user's new message:\n{message.text}")
        return "\n\n".join(parts)

    def _digest(self) -> str | None:
        """The summary carried to the next run: deterministic (replays build the same text)."""
        lines = [self._summary] if self._summary else []
        lines += self._lines
        if not lines:
            return None
        text = "\n".join(lines)
        if len(text) > SUMMARY_CHARS:
            text = text[-SUMMARY_CHARS:]
            text = text.split("\n", 1)[-1]  # start at a whole line
        return text


def _cut(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SUMMARY_SIDE_CHARS else text[: SUMMARY_SIDE_CHARS - 1] + "…"


def _reply_text(result: AgentResult) -> str:
    if result.status == "blocked":
        return result.question or result.summary or "I need more information."
    if result.status == "failed":
        reason = result.raw_error or result.summary or "the agent failed"
        return f"Sorry, I could not handle that message: {reason}"
    return result.summary or "Done."


async def send_po_message(
    client: Client, session: POSessionInput, message: POMessage, *, task_queue: str
) -> str:
    """Deliver ``message`` to the chat's session, starting it when none runs; returns the reply.

    ``session`` only matters when this starts the session. The update id is the message's, so a
    retried call within one run is one update for Temporal too.
    """
    start = WithStartWorkflowOperation(
        POSessionWorkflow.run,
        session,
        id=po_session_workflow_id(session.chat_id),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    reply: str = await client.execute_update_with_start_workflow(
        PO_SEND,
        message,
        start_workflow_operation=start,
        id=f"po-message-{message.message_id}",
        result_type=str,
    )
    return reply
