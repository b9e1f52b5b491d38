"""POSessionWorkflow's branches in seconds: the real session on the time-skipping test server,
over stand-in activities (tests/workflows/mocks.py), its messages delivered with update-with-start
as the API delivers them. What a chat sees: its replies, in order and once each, the notes Workers
send, a reply even when a turn fails; and no Worker left behind when the session ends."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError, WorkflowUpdateStage
from temporalio.exceptions import ApplicationError, CancelledError

from activities.workers import AgentTurnInput
from core.contracts.agents import AgentResult
from core.contracts.chat import ChatNote, ChatReply
from core.contracts.workflows import (
    PO_SEND,
    POMessage,
    POResponse,
    POSessionOutput,
    POSessionStatus,
)
from testing.waiting import eventually
from tests.workflows.mocks import WITHIN_S, Fakes, echo_turn, failure_of
from workflows.po_session import POSessionWorkflow, worker_id_for


def replied(text: str) -> str:
    return f"PO on: {text}"


async def status(fakes: Fakes) -> POSessionStatus:
    return await fakes.po_session().query(POSessionWorkflow.status)


async def status_pending(fakes: Fakes, pending: list[int]) -> bool:
    return (await status(fakes)).pending == pending


async def redeliver(handle: WorkflowHandle[Any, Any], message_id: int, text: str) -> str:
    """The same chat message again under a new update id (the bot restarted before it knew the
    API had taken it): the session itself must know it."""
    reply: str = await handle.execute_update(
        PO_SEND,
        POMessage(message_id=message_id, text=text),
        id=f"redelivered-{uuid.uuid4().hex}",
        result_type=str,
    )
    return reply


async def test_the_first_message_starts_the_session_and_replies_keep_their_order(
    fakes: Fakes,
) -> None:
    assert await fakes.send(1, "I want a shop") == replied("I want a shop")

    turning = fakes.log.hold("run_agent_turn")
    second = asyncio.create_task(fakes.send(2, "with a cart"))
    await fakes.log.reached("run_agent_turn", 2)
    third = asyncio.create_task(fakes.send(3, "and payments"))
    await eventually(lambda: status_pending(fakes, [3]), "message 3 queued", within=WITHIN_S)
    turning.set()

    assert await second == replied("with a cart")
    assert await third == replied("and payments")
    session = await status(fakes)
    assert [e.message_id for e in session.exchanges] == [1, 2, 3]
    assert [(e.kind, e.message_id) for e in fakes.chats.published] == [
        ("reply", 1),
        ("reply", 2),
        ("reply", 3),
    ]
    # One workspace and one Worker for the whole run; each prompt holds the exchanges before it.
    assert fakes.log.count("prepare_session") == fakes.log.count("create_container") == 1
    last: AgentTurnInput = fakes.log.args("run_agent_turn")[-1]
    assert "User: with a cart\nYou: PO on: with a cart" in last.prompt
    assert last.prompt.endswith("The user's new message:\nand payments")


async def test_a_redelivered_message_is_answered_once(fakes: Fakes) -> None:
    turning = fakes.log.hold("run_agent_turn")
    first = asyncio.create_task(fakes.send(1, "Hi"))
    await fakes.log.reached("run_agent_turn")
    handle = fakes.po_session()

    # Once while its turn runs (the caller waits for that turn's reply), once after it.
    during = await handle.start_update(
        PO_SEND,
        POMessage(message_id=1, text="Hi"),
        id="redelivered-while-running",
        wait_for_stage=WorkflowUpdateStage.ACCEPTED,
        result_type=str,
    )
    turning.set()
    answers = [await first, await during.result(), await redeliver(handle, 1, "Hi")]

    assert answers == [replied("Hi")] * 3
    assert fakes.log.count("run_agent_turn") == 1
    assert len(fakes.chats.published) == 1
    assert (await status(fakes)).turns == 1


async def test_a_workers_note_goes_to_the_chat_and_into_the_next_prompt(fakes: Fakes) -> None:
    await fakes.send(1, "Start a task")

    await fakes.po_session().execute_update(
        POSessionWorkflow.respond,
        POResponse(response_id="note-1", text="The task started", source="task 42"),
    )
    await fakes.send(2, "How is it going?")

    assert [(type(e), e.text) for e in fakes.chats.published] == [
        (ChatReply, replied("Start a task")),
        (ChatNote, "The task started"),
        (ChatReply, replied("How is it going?")),
    ]
    prompt = fakes.log.args("run_agent_turn")[-1].prompt
    told = "Since then, Workers told the user (orchestrator respond):\ntask 42: The task started"
    assert told in prompt


def agent_crashes(fakes: Fakes) -> None:
    fakes.log.fail(
        "run_agent_turn", ApplicationError("claude exited with status 1", non_retryable=True)
    )


def agent_fails(fakes: Fakes) -> None:
    def failed_once(turn: AgentTurnInput) -> AgentResult:
        fakes.workers.turn = echo_turn
        return AgentResult(status="failed", raw_error="claude exited with status 1")

    fakes.workers.turn = failed_once


@pytest.mark.parametrize(
    ("setup", "workers_made"),
    [(agent_crashes, 2), (agent_fails, 1)],
    ids=["the-activity-fails", "the-agent-reports-failure"],
)
async def test_a_failed_turn_still_replies_saying_why(
    fakes: Fakes, setup: Any, workers_made: int
) -> None:
    setup(fakes)

    reply = await fakes.send(1, "Hi")
    later = await fakes.send(2, "Hello again")

    assert reply == "Sorry, I could not handle that message: claude exited with status 1"
    assert later == replied("Hello again")
    assert fakes.chats.texts() == [reply, later]
    # A turn whose activity failed leaves the Worker in doubt: the next one makes (finds) it.
    assert fakes.log.count("create_container") == workers_made


async def test_an_idle_session_gives_its_worker_back_and_ends(fakes: Fakes) -> None:
    await fakes.send(1, "Hi")

    await fakes.env.sleep(timedelta(seconds=fakes.session.idle_timeout_s + 1))
    output = await fakes.po_session().result()

    assert output == POSessionOutput(
        chat_id=fakes.chat_id, reason="idle", turns=1, summary=f"User: Hi\nPO: {replied('Hi')}"
    )
    assert fakes.log.args("remove_container") == [worker_id_for(fakes.chat_id)]
    assert fakes.workers.containers == set()
    assert fakes.log.names()[-2:] == ["remove_container", "close_gateway"]

    # A later message starts a new session, which knows nothing of the old one.
    await fakes.send(2, "Back again")
    session = await status(fakes)
    assert (session.turns, session.summary) == (1, None)


async def test_a_long_session_continues_as_new_with_its_summary_and_replies(
    fakes: Fakes,
) -> None:
    fakes.session = fakes.session.model_copy(update={"max_turns_per_run": 2})
    handle = fakes.po_session()
    await fakes.send(1, "one")
    first_run = (await handle.describe()).run_id
    await fakes.send(2, "two")

    await eventually(lambda: run_id_changed(handle, first_run), "continue-as-new", within=WITHIN_S)
    assert await fakes.send(3, "three") == replied("three")
    session = await status(fakes)

    assert (session.turns, session.run_turns) == (3, 1)
    assert session.summary == "User: one\nPO: PO on: one\nUser: two\nPO: PO on: two"
    prompt = fakes.log.args("run_agent_turn")[-1].prompt
    assert f"The conversation so far (summary):\n{session.summary}" in prompt
    # The replies came along: an old message redelivered gets its reply without a turn.
    assert await redeliver(handle, 1, "one") == replied("one")
    assert fakes.log.count("run_agent_turn") == 3
    # The Worker stays across the runs (the new run finds it), and each run prepares once.
    assert "remove_container" not in fakes.log.names()
    assert fakes.log.count("prepare_session") == 2


async def run_id_changed(handle: WorkflowHandle[Any, Any], first: str | None) -> bool:
    return (await handle.describe()).run_id != first


async def test_a_cancelled_session_removes_its_worker(fakes: Fakes) -> None:
    fakes.log.hold("run_agent_turn")
    pending = asyncio.create_task(fakes.send(1, "Hi"))
    await fakes.log.reached("run_agent_turn")
    handle = fakes.po_session()

    await fakes.cancel_while_held(handle, "run_agent_turn")

    assert isinstance(await failure_of(handle), CancelledError)
    # The message's caller learns it got no reply (the API answers it with an error).
    with pytest.raises(WorkflowUpdateFailedError) as unanswered:
        await pending
    assert "the Workflow completed before the Update completed" in str(unanswered.value.cause)
    assert fakes.workers.containers == set()
    assert fakes.log.names()[-2:] == ["remove_container", "close_gateway"]
    assert fakes.chats.published == []
