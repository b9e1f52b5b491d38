"""Four chats with live PO sessions each start an engineering task: all four tasks run without
waiting for a session to idle out (issue 12).

A PO session keeps its Worker for ``ORCHESTRATOR_PO_IDLE_MINUTES`` after its last turn. PO
Workers take turns of their own pool (``po-workers``, ``ORCHESTRATOR_MAX_PO_WORKERS``) and task
Workers of theirs (``workers``, ``ORCHESTRATOR_MAX_WORKERS``): with both at four, four lively chats
hold four PO slots and the four tasks they start still get four task slots at once. Were the
pools one, the sessions would hold every slot and the tasks would wait "for a Worker slot" for
half an hour. Everything real but Telegram and the agents (the scripted ones).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import docker
import pytest
from sqlmodel import select
from temporalio.client import WorkflowExecutionStatus

from core.contracts.workflows import PO_WORKERS_POOL, WORKERS_POOL
from core.enums import TaskStatus
from db.tables import Task, User
from testing.turns import grants_in_order, holders_asked, pool_state
from testing.waiting import eventually
from testing.workflows import container, events
from tests.e2e.chat.conftest import ChatStack, new_person, po_script
from tests.e2e.chat.test_chat import dev_script
from workflows.po_session import worker_id_for

CHATS = 4
WAITING = "Waiting for a Worker slot"
# Each chat's PO makes a project of its own (names are unique) and starts a task on it.
PROJECT = "todo-$ORCHESTRATOR_CHAT_ID"
CREATE_AND_START = (
    f'orchestrator project create --name "{PROJECT}" --description "A todo API" --json >/dev/null'
    f' && orchestrator engineering start --project "{PROJECT}" --spec "A todo API"'
    " --agent scripted --script /workspace/dev.json --json"
    " | python3 -c 'import json, sys; print(json.load(sys.stdin)[\"task_id\"])'"
)


@pytest.mark.timeout(600)
async def test_four_chats_with_live_po_sessions_each_start_a_task_and_none_waits_for_a_slot(
    chat_stack: Any, docker_client: docker.DockerClient
) -> None:
    script = po_script({"run": CREATE_AND_START, "summary": "Started task {output}."})
    # The defaults, pinned: as many PO slots as chats, as many task slots as tasks, and
    # sessions that keep their Workers far longer than the test runs.
    limits = {"max_workers": CHATS, "max_po_workers": CHATS, "po_idle_minutes": 30}
    async with chat_stack(script, **limits) as stack:
        queue = stack.settings.temporal_task_queue
        people = [stack.admin] + [new_person(name) for name in ("Bob", "Cyd", "Dee")]
        async with stack.db.session() as session:
            for someone in people[1:]:
                session.add(User(name=someone["first_name"], telegram_id=someone["id"]))
            await session.commit()
        chats = [someone["id"] for someone in people]
        for chat in chats:
            stack.workspace(chat).mkdir(parents=True)
            (stack.workspace(chat) / "dev.json").write_text(json.dumps(dev_script()))

        for someone in people:
            stack.say(someone, "make me a todo API")

        replies = [await stack.wait_for(chat, "Started task", within=180) for chat in chats]
        tasks = await _all_finished(stack, CHATS)

        # All four completed, none of them waited for a slot...
        assert [t.status for t in tasks] == [TaskStatus.completed] * CHATS, [t.error for t in tasks]
        for task in tasks:
            said = [e.message for e in await events(stack.db, task.id) if WAITING in e.message]
            assert said == [], f"task {task.id} waited: {said}"
        # ...one task per chat, each started by that chat's PO...
        by_chat = {t.callback_stream: t for t in tasks}
        assert set(by_chat) == {f"telegram:chat:{chat}" for chat in chats}
        for chat, reply in zip(chats, replies, strict=True):
            assert by_chat[f"telegram:chat:{chat}"].id in reply.params["text"]

        # ...while the four sessions still hold their Workers: each asked its pool once, before
        # its PO started the task, and holds its turn and its container still.
        sessions = {worker_id_for(chat) for chat in chats}
        po_pool = await pool_state(stack.client, queue, PO_WORKERS_POOL)
        assert {turn.holder for turn in po_pool.holding} == sessions
        assert po_pool.waiting == []
        assert sorted(await holders_asked(stack.client, queue, PO_WORKERS_POOL)) == sorted(sessions)
        for chat in chats:
            assert await stack.session_status(chat) == WorkflowExecutionStatus.RUNNING
            worker = container(docker_client, worker_id_for(chat))
            assert worker is not None and worker.status == "running", chat

        # The task pool is apart: only the four tasks ever asked it, each granted at once, and
        # each gave its turn back (with its Worker, right after its task's end is recorded: by
        # the time its run closes); no PO session was ever among its holders.
        for task in tasks:
            handle = stack.client.get_workflow_handle(task.workflow_id)
            await asyncio.wait_for(handle.result(), 60)
        asked = await holders_asked(stack.client, queue, WORKERS_POOL)
        assert sorted(asked) == sorted(t.workflow_id for t in tasks)
        assert not sessions & set(asked)
        assert await grants_in_order(stack.client, queue, WORKERS_POOL) == ([], [])
        task_pool = await pool_state(stack.client, queue, WORKERS_POOL)
        assert (task_pool.holding, task_pool.waiting, task_pool.granted_total) == ([], [], CHATS)

    # Ending the stack cancelled the sessions: no Worker is left behind.
    for worker_id in [*sessions, *(f"{t.id}-developer" for t in tasks)]:
        assert container(docker_client, worker_id) is None, worker_id


async def _all_finished(stack: ChatStack, count: int) -> list[Task]:
    """The ``count`` tasks, once all are finished; fails at once when one says it waits for a
    Worker slot rather than after the wait for a session to idle out."""
    found: list[Task] = []

    async def done() -> bool:
        async with stack.db.session() as session:
            found[:] = (await session.exec(select(Task))).all()
        for task in found:
            said = [e.message for e in await events(stack.db, task.id) if WAITING in e.message]
            assert not said, f"task {task.id} waits: {said[0]}"
        return len(found) == count and all(TaskStatus(t.status).is_terminal for t in found)

    await eventually(done, f"{count} engineering tasks to finish", within=300)
    return sorted(found, key=lambda t: t.created_at)
