"""POSessionWorkflow on a real dev server, a real container service and the scripted Worker image.

The scripted PO answers round N of its script on its N-th turn, so a reply names the turn that
made it.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import pytest_asyncio
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowHistory,
)
from temporalio.exceptions import CancelledError
from temporalio.service import RPCError

from core.contracts.workflows import (
    PO_SEND,
    PO_STATUS,
    POMessage,
    POSessionInput,
    POSessionOutput,
    POSessionStatus,
)
from core.ids import po_session_workflow_id
from infra.containers import ContainerRuntime
from stack.temporal_worker import replayer as make_replayer
from testing.waiting import eventually
from testing.workflows import container
from workflows.po_session import POSessionWorkflow, send_po_message, worker_id_for


def script(prefix: str, turns: int = 4, **first: Any) -> dict[str, Any]:
    """Round N replies "{prefix} N"; ``first`` adds to round 1 (e.g. a slow command)."""
    rounds: list[dict[str, Any]] = [
        {"report": "completed", "summary": f"{prefix} {n}"} for n in range(1, turns + 1)
    ]
    rounds[0].update(first)
    return {"rounds": rounds}


class Chat:
    """One chat's session as the bot will drive it."""

    def __init__(
        self,
        client: Client,
        queue: str,
        image: str,
        prefix: str = "reply",
        group: bool = False,
        **fields: Any,
    ) -> None:
        self.client = client
        self.queue = queue
        self.chat_id = uuid.uuid4().int % 10**12
        if group:  # Telegram's group chats have negative ids
            self.chat_id = -self.chat_id
        fields.setdefault("agent_options", {"script": script(prefix)})
        self.session = POSessionInput(chat_id=self.chat_id, agent="scripted", image=image, **fields)
        self.next_id = 0

    @property
    def worker_id(self) -> str:
        return worker_id_for(self.chat_id)

    @property
    def handle(self) -> WorkflowHandle[Any, POSessionOutput]:
        return self.client.get_workflow_handle(
            po_session_workflow_id(self.chat_id), result_type=POSessionOutput
        )

    def message(self, text: str) -> POMessage:
        self.next_id += 1
        return POMessage(message_id=self.next_id, text=text, user_id="user-1")

    async def send(self, message: POMessage) -> str:
        return await send_po_message(self.client, self.session, message, task_queue=self.queue)

    async def status(self) -> POSessionStatus:
        return await self.handle.query(PO_STATUS, result_type=POSessionStatus)

    async def run_id(self) -> str | None:
        return (await self.handle.describe()).run_id

    async def close(self, docker_client: docker.DockerClient) -> None:
        # Cancelled, not terminated: the run ends on its own (a run evicted mid-await leaves a
        # coroutine whose clean-up warns when collected).
        with contextlib.suppress(RPCError):
            if (await self.handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                await self.handle.cancel()
                with contextlib.suppress(WorkflowFailureError, TimeoutError):
                    await asyncio.wait_for(self.handle.result(), 30)
        await ContainerRuntime(docker_client).remove(self.worker_id)


@pytest_asyncio.fixture
async def chats(
    temporal_client: Client,
    worker_queue: str,
    scripted_image: str,
    docker_client: docker.DockerClient,
) -> AsyncIterator[Any]:
    made: list[Chat] = []

    def new_chat(**fields: Any) -> Chat:
        chat = Chat(temporal_client, worker_queue, scripted_image, **fields)
        made.append(chat)
        return chat

    yield new_chat
    for chat in made:
        await chat.close(docker_client)


async def test_the_first_message_starts_the_session_and_the_next_reuses_it(
    chats: Any, docker_client: docker.DockerClient
) -> None:
    chat = chats()
    assert await chat.send(chat.message("make me a todo API")) == "reply 1"
    first_run = await chat.run_id()
    made = await asyncio.to_thread(container, docker_client, chat.worker_id)
    assert made is not None
    assert made.labels["orchestrator.workflow_id"] == f"po-{chat.chat_id}"
    assert made.attrs["HostConfig"]["NetworkMode"] == "none"

    assert await chat.send(chat.message("call it todo-app")) == "reply 2"
    assert await chat.run_id() == first_run
    again = await asyncio.to_thread(container, docker_client, chat.worker_id)
    assert again is not None and again.id == made.id
    status = await chat.status()
    assert status.turns == 2 and status.container
    assert [e.reply for e in status.exchanges] == ["reply 1", "reply 2"]


async def test_messages_sent_together_are_answered_in_order(chats: Any) -> None:
    # The first turn takes a while, so the second message waits behind it.
    chat = chats(agent_options={"script": script("reply", run="sleep 2")})
    first, second = chat.message("first"), chat.message("second")
    first_reply = asyncio.create_task(chat.send(first))

    await eventually(lambda: _current(chat, first.message_id), "the first turn", within=60)
    second_reply = asyncio.create_task(chat.send(second))

    async def queued() -> POSessionStatus | None:
        status = await chat.status()
        return status if second.message_id in status.pending else None

    waiting = await eventually(queued, "the second message queued", within=10)
    assert waiting is not None and waiting.current == first.message_id

    assert await first_reply == "reply 1"
    assert await second_reply == "reply 2"
    status = await chat.status()
    assert [(e.message_id, e.reply) for e in status.exchanges] == [
        (first.message_id, "reply 1"),
        (second.message_id, "reply 2"),
    ]


async def test_a_redelivered_message_gets_the_same_reply_without_a_turn(chats: Any) -> None:
    chat = chats(agent_options={"script": script("reply", run="sleep 2")})
    first = chat.message("hello")
    assert await chat.send(first) == "reply 1"
    # A new update (another update id) for the same message: answered from the kept replies.
    again = await chat.handle.execute_update(PO_SEND, first, result_type=str)
    assert again == "reply 1"
    assert (await chat.status()).turns == 1

    # Redelivered while its turn runs: both wait for the one turn.
    second = chat.message("and then?")
    sent = asyncio.create_task(chat.send(second))
    await eventually(
        lambda: _current(chat, second.message_id), "the second turn running", within=30
    )
    duplicate = await chat.handle.execute_update(PO_SEND, second, result_type=str)
    assert duplicate == "reply 2" and await sent == "reply 2"
    assert (await chat.status()).turns == 2


async def _current(chat: Chat, message_id: int) -> bool:
    """Whether ``message_id``'s turn runs (False before the session exists)."""
    with contextlib.suppress(RPCError):
        return (await chat.status()).current == message_id
    return False


async def test_continue_as_new_keeps_the_summary_and_the_replies(
    chats: Any, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    workspace = tmp_path / "po-workspace"
    workspace.mkdir()
    # Round 3 records the prompt it was given (its runner's command line) in the workspace.
    rounds = script("reply")
    rounds["rounds"][2]["run"] = "tr '\\000' '\\n' < /proc/$PPID/cmdline > prompt-3.txt"
    chat = chats(agent_options={"script": rounds}, max_turns_per_run=2, workspace=str(workspace))
    first = chat.message("make me a todo API")
    assert await chat.send(first) == "reply 1"
    first_run = await chat.run_id()
    made = await asyncio.to_thread(container, docker_client, chat.worker_id)
    assert await chat.send(chat.message("call it todo-app")) == "reply 2"

    async def continued() -> bool:
        return await chat.run_id() != first_run

    await eventually(continued, "continue-as-new", within=30)
    status = await chat.status()
    assert status.turns == 2 and status.run_turns == 0
    assert status.summary is not None
    assert "User: make me a todo API\nPO: reply 1" in status.summary
    assert "User: call it todo-app\nPO: reply 2" in status.summary

    # An old message redelivered to the new run: its original reply, no turn.
    assert await chat.send(first) == "reply 1"
    assert (await chat.status()).turns == 2

    assert await chat.send(chat.message("add due dates")) == "reply 3"
    prompt = (workspace / "prompt-3.txt").read_text()
    assert "make me a todo API" in prompt and "reply 2" in prompt
    assert "add due dates" in prompt
    # The container outlived the run that made it.
    kept = await asyncio.to_thread(container, docker_client, chat.worker_id)
    assert kept is not None and kept.id == made.id


async def test_two_chats_get_their_own_answers(
    chats: Any, docker_client: docker.DockerClient
) -> None:
    alice, bob = chats(prefix="alice"), chats(prefix="bob", group=True)
    replies = await asyncio.gather(
        alice.send(alice.message("hi")),
        bob.send(bob.message("hi")),
        alice.send(alice.message("more")),
        bob.send(bob.message("more")),
    )
    assert sorted(replies[0::2]) == ["alice 1", "alice 2"]
    assert sorted(replies[1::2]) == ["bob 1", "bob 2"]
    for chat, name in ((alice, "alice"), (bob, "bob")):
        status = await chat.status()
        assert [e.reply for e in status.exchanges] == [f"{name} 1", f"{name} 2"]
    a = await asyncio.to_thread(container, docker_client, alice.worker_id)
    b = await asyncio.to_thread(container, docker_client, bob.worker_id)
    assert a is not None and b is not None and a.id != b.id


async def test_an_idle_session_removes_its_worker_and_ends(
    chats: Any, docker_client: docker.DockerClient
) -> None:
    chat = chats(idle_timeout_s=2)
    assert await chat.send(chat.message("hello")) == "reply 1"
    output = await asyncio.wait_for(chat.handle.result(), 30)
    assert output.reason == "idle" and output.turns == 1
    assert output.summary == "User: hello\nPO: reply 1"
    assert await asyncio.to_thread(container, docker_client, chat.worker_id) is None


async def test_a_long_conversation_runs_over_several_runs_and_replays(chats: Any) -> None:
    """Each message is sent as soon as the last reply came, also while a run continues-as-new;
    every run's history replays against the code."""
    chat = chats(agent_options={"script": script("reply", turns=8)}, max_turns_per_run=2)
    for n in range(1, 8):
        assert await chat.send(chat.message(f"m{n}")) == f"reply {n}"
    status = await chat.status()
    assert status.turns == 7
    assert status.summary is not None and "User: m6\nPO: reply 6" in status.summary

    histories = await run_histories(chat)
    assert len(histories) == 4  # 2 + 2 + 2 + 1 turns
    replayer = make_replayer([POSessionWorkflow])
    for history in histories:
        await replayer.replay_workflow(history)


async def run_histories(chat: Chat) -> list[WorkflowHistory]:
    """The histories of every run of the session, newest first (each run names the one it
    continued)."""
    histories: list[WorkflowHistory] = []
    run_id: str | None = await chat.run_id()
    while run_id:
        handle = chat.client.get_workflow_handle(chat.handle.id, run_id=run_id)
        history = await handle.fetch_history()
        histories.append(history)
        started = history.events[0].workflow_execution_started_event_attributes
        run_id = started.continued_execution_run_id or None
    return histories


async def test_cancelling_a_session_removes_its_worker_mid_turn(
    chats: Any, docker_client: docker.DockerClient
) -> None:
    chat = chats(agent_options={"script": script("reply", run="sleep 120")})
    message = chat.message("take your time")
    sent = asyncio.create_task(chat.send(message))
    await eventually(lambda: _current(chat, message.message_id), "the turn running", within=60)
    await chat.handle.cancel()
    with pytest.raises(WorkflowFailureError) as failure:
        await asyncio.wait_for(chat.handle.result(), 30)
    assert isinstance(failure.value.cause, CancelledError)
    assert await asyncio.to_thread(container, docker_client, chat.worker_id) is None
    sent.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await sent
