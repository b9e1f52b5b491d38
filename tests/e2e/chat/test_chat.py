"""A person talks to the Product Owner on Telegram; the PO drives the `orchestrator` CLI in its
Worker; tasks it starts report back to the chat. Everything real but Telegram (a Bot API stand-in
reached through TelegramAPIServer) and the agents (the scripted one, playing a script).
"""

from __future__ import annotations

import json
from typing import Any

from sqlmodel import select

from cli.demo_script import demo_script
from core.contracts.chat import CHATS_KEY
from core.enums import TaskStatus
from db.tables import Project, Task, User
from testing.waiting import eventually
from tests.e2e.chat.conftest import ChatStack, new_person, po_script

CREATE_AND_START = (
    "orchestrator respond 'Creating the project now' >/dev/null"
    " && orchestrator project create --name todo --description 'A todo API' --json >/dev/null"
    " && orchestrator engineering start --project todo --spec 'A todo API'"
    " --agent scripted --script /workspace/dev.json --json"
    " | python3 -c 'import json, sys; print(json.load(sys.stdin)[\"task_id\"])'"
)


def dev_script(*before: dict[str, Any]) -> dict[str, Any]:
    """The engineering agent's script: ``before`` rounds, then the demo's feature, which passes."""
    return {"rounds": [*before, *demo_script()["rounds"]]}


async def tasks_of(stack: ChatStack) -> list[Task]:
    async with stack.db.session() as session:
        return list((await session.exec(select(Task))).all())


async def finished_task(stack: ChatStack) -> Task:
    found: list[Task] = []

    async def done() -> bool:
        found[:] = [t for t in await tasks_of(stack) if TaskStatus(t.status).is_terminal]
        return bool(found)

    await eventually(done, "the engineering task to finish", within=240)
    return found[0]


async def test_a_message_becomes_a_project_a_task_and_a_pull_request_in_the_chat(
    chat_stack: Any,
) -> None:
    script = po_script({"run": CREATE_AND_START, "summary": "Started task {output}."})
    async with chat_stack(script) as stack:
        chat = stack.admin["id"]
        stack.workspace(chat).mkdir(parents=True)
        (stack.workspace(chat) / "dev.json").write_text(json.dumps(dev_script()))

        asked = stack.say(stack.admin, "make me a todo API")

        note = await stack.wait_for(chat, "Creating the project now", within=120)
        reply = await stack.wait_for(chat, "Started task", within=120)
        task = await finished_task(stack)
        assert task.status == TaskStatus.completed, task.error
        assert task.id in reply.params["text"]
        assert stack.replies_to(chat, asked) == [reply]
        pr_url = task.result["pr_url"]
        link = await stack.wait_for(chat, pr_url)

        # The project belongs to the person who asked, through the PO's chat-scoped key.
        async with stack.db.session() as session:
            project = (await session.exec(select(Project))).one()
            owner = await session.get(User, project.owner_id)
        assert owner is not None and owner.telegram_id == chat
        assert task.callback_stream == f"telegram:chat:{chat}"
        # In order: the note, the PO's reply, the task's progress, and at last its pull request.
        texts = stack.texts_to(chat)
        order = [texts.index(str(call.params["text"])) for call in (note, reply, link)]
        assert order == sorted(order)
        progress = texts[order[1] + 1 : order[2]]
        assert progress, "no progress of the task reached the chat before its result"
        assert all(task.id[:8] in text for text in progress)


async def test_a_blocked_tasks_question_reaches_the_chat_and_the_answer_resumes_it(
    chat_stack: Any,
) -> None:
    script = po_script({"run": CREATE_AND_START, "summary": "Started task {output}."})
    question = "Which port should the API listen on?"
    async with chat_stack(script) as stack:
        chat = stack.admin["id"]
        stack.workspace(chat).mkdir(parents=True)
        blocked = {"report": "blocked", "question": question}
        (stack.workspace(chat) / "dev.json").write_text(json.dumps(dev_script(blocked)))

        stack.say(stack.admin, "make me a todo API")
        asking = await stack.wait_for(chat, question, within=180)
        assert "force_reply" in str(asking.params.get("reply_markup", ""))

        stack.say(stack.admin, "8080, please", reply_to=asking)

        task = await finished_task(stack)
        assert task.status == TaskStatus.completed, task.error
        await stack.wait_for(chat, task.result["pr_url"])
        # The answer went to the task, not to the PO: one PO turn in all.
        assert (stack.workspace(chat) / ".scripted-agent-round").read_text().strip() == "1"


async def test_an_unknown_user_is_refused_and_nothing_reaches_the_po(chat_stack: Any) -> None:
    stranger = new_person("Eve")
    async with chat_stack(po_script({"summary": "hello"})) as stack:
        stack.say(stranger, "make me a todo API")
        refusal = await stack.wait_for(stranger["id"], "not allowed")
        assert str(stranger["id"]) in refusal.params["text"]
        assert await stack.session_status(stranger["id"]) is None
        assert not await stack.redis.sismember(CHATS_KEY, str(stranger["id"]))  # type: ignore[misc]
        assert not stack.workspace(stranger["id"]).exists()


async def test_a_po_whose_allowed_commands_lack_a_command_gets_the_clis_refusal(
    chat_stack: Any,
) -> None:
    run = "orchestrator engineering start --project todo --spec x --json 2>&1; echo exit=$?"
    script = po_script({"run": run, "summary": "{output}"})
    async with chat_stack(script, po_allowed_commands="project.*") as stack:
        chat = stack.admin["id"]
        asked = stack.say(stack.admin, "start the work")
        reply = await stack.wait_for(chat, "exit=", within=120)
        assert stack.replies_to(chat, asked) == [reply]
        text = reply.params["text"]
        assert "exit=1" in text
        assert "engineering.start" in text and "project.*" in text
        assert await tasks_of(stack) == []


async def test_two_chats_at_once_each_get_only_their_own_answers(chat_stack: Any) -> None:
    run = 'echo "$SCRIPTED_AGENT_PROMPT" | head -n 1'
    script = po_script(*[{"run": run, "summary": "{output}"}] * 2)
    async with chat_stack(script) as stack:
        bob = new_person("Bob")
        async with stack.db.session() as session:
            session.add(User(name="Bob", telegram_id=bob["id"]))
            await session.commit()
        sent = [stack.say(stack.admin, "hello"), stack.say(bob, "hi there")]
        sent += [stack.say(stack.admin, "and again"), stack.say(bob, "me too")]

        for user in (stack.admin, bob):
            await eventually(
                lambda user=user: len(stack.sent_to(user["id"])) >= 2,
                f"two replies in chat {user['id']}",
                within=120,
            )
        for user, other in ((stack.admin, bob), (bob, stack.admin)):
            texts = stack.texts_to(user["id"])
            assert len(texts) == 2
            assert all(f"Telegram chat {user['id']}" in text for text in texts)
            assert not any(str(other["id"]) in text for text in texts)
        assert [len(stack.replies_to(stack.admin["id"], m)) for m in sent[0::2]] == [1, 1]


async def test_a_long_conversation_continues_as_new_and_keeps_its_context(
    chat_stack: Any,
) -> None:
    recall = 'echo "$SCRIPTED_AGENT_PROMPT" | grep -o "colour is [a-z]*" | head -n 1'
    script = po_script(
        {"summary": "Noted."},
        {"summary": "Sure."},
        {"summary": "Sure."},
        {"run": recall, "summary": "I remember: {output}"},
    )
    async with chat_stack(script, po_max_turns_per_run=2) as stack:
        chat = stack.admin["id"]
        handle = stack.client.get_workflow_handle(f"po-{chat}")
        runs = set()
        messages = ["my favourite colour is teal", "a", "b", "what is my colour?"]
        for number, text in enumerate(messages, start=1):
            stack.say(stack.admin, text)
            await eventually(
                lambda n=number: len(stack.sent_to(chat)) >= n, f"reply {number}", within=120
            )
            runs.add((await handle.describe()).run_id)
        assert len(runs) >= 2, "the session never continued as new"
        assert stack.texts_to(chat)[-1] == "I remember: colour is teal"


async def test_messages_while_the_po_works_are_answered_in_order(chat_stack: Any) -> None:
    script = po_script(
        {"run": "sleep 2", "summary": "first"},
        {"summary": "second"},
        {"summary": "third"},
    )
    async with chat_stack(script) as stack:
        chat = stack.admin["id"]
        asked = [stack.say(stack.admin, "one")]
        await eventually(lambda: stack.workspace(chat).exists(), "the first turn", within=60)
        asked += [stack.say(stack.admin, "two"), stack.say(stack.admin, "three")]
        await eventually(lambda: len(stack.sent_to(chat)) >= 3, "three replies", within=120)
        assert stack.texts_to(chat) == ["first", "second", "third"]
        assert [len(stack.replies_to(chat, m)) for m in asked] == [1, 1, 1]
