"""`orchestrator respond`: a Worker's message to its chat's PO session, through a real API process
to a stand-in session workflow on the real Temporal."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from temporalio import workflow
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from core.contracts.workflows import PO_RESPOND, POResponse
from core.ids import po_session_workflow_id
from tests.cli.conftest import Api, Cli
from tests.cli.test_respond_cli import run_cli

PROBE = "POSessionRespondProbe"


@workflow.defn(name=PROBE)
class SessionProbe:
    """Takes responses like a PO session, until it is terminated."""

    def __init__(self) -> None:
        self.responses: list[POResponse] = []

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.update(name=PO_RESPOND)
    async def respond(self, response: POResponse) -> None:
        self.responses.append(response)

    @workflow.query
    def received(self) -> list[POResponse]:
        return self.responses


@asynccontextmanager
async def session(
    client: Client, chat_id: int
) -> AsyncIterator[WorkflowHandle[SessionProbe, None]]:
    queue = f"respond-session-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client,
        task_queue=queue,
        workflows=[SessionProbe],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        handle = await client.start_workflow(
            PROBE, id=po_session_workflow_id(chat_id), task_queue=queue
        )
        try:
            yield handle
        finally:
            await handle.terminate("test over")


def new_chat() -> int:
    return int(uuid.uuid4().int % 10**9)


async def test_respond_reaches_the_session(cli: Cli, temporal_client: Client) -> None:
    chat = new_chat()
    async with session(temporal_client, chat) as handle:
        env = {"ORCHESTRATOR_CHAT_ID": str(chat), "ORCHESTRATOR_WORKER_ID": "po-worker-1"}
        code, stdout, stderr = await run_cli(
            Cli({**cli.env, **env}), "respond", "The *todo* API is on its way.", "--json"
        )
        assert code == 0, (stdout, stderr)
        accepted = json.loads(stdout)
        assert accepted["chat_id"] == chat
        assert accepted["workflow_id"] == po_session_workflow_id(chat)
        # --chat wins over the environment; each call is a new response.
        code, stdout, stderr = await run_cli(
            Cli({**cli.env, "ORCHESTRATOR_CHAT_ID": "1"}), "respond", "second", "--chat", str(chat)
        )
        assert code == 0, (stdout, stderr)
        assert "Sent to chat" in stdout
        received = await handle.query("received", result_type=list[POResponse])
    assert [r.text for r in received] == ["The *todo* API is on its way.", "second"]
    assert received[0].response_id == accepted["response_id"]
    assert len({r.response_id for r in received}) == 2
    assert received[0].source == "po-worker-1"
    assert received[1].source  # the host name when no Worker id is set


def test_respond_needs_a_chat(cli: Cli) -> None:
    error = cli.json("respond", "hello", expect=2)["error"]
    assert error["message"] == "no chat to respond to"
    assert "ORCHESTRATOR_CHAT_ID" in error["detail"]
    human = cli("respond", "hello")
    assert human.exit_code == 2 and "--chat" in human.stderr
    bad = cli.json("respond", "hello", expect=2, ORCHESTRATOR_CHAT_ID="abc")["error"]
    assert "ORCHESTRATOR_CHAT_ID must be a chat id" in bad["message"]
    assert cli.json("respond", "  ", "--chat", "5", expect=2)["error"]["message"] == (
        "the message is empty"
    )


def test_respond_without_a_session_is_exit_1(cli: Cli) -> None:
    error = cli.json("respond", "hello", "--chat", str(new_chat()), expect=1)["error"]
    assert error["status"] == 409
    assert "no PO session is running" in error["detail"]


def test_respond_is_for_session_keys_and_admins(cli: Cli, api: Api) -> None:
    admin = {"Authorization": f"Bearer {api.settings().read_api_key()}"}
    user = httpx.post(f"{api.url}/users", json={"name": f"u-{uuid.uuid4().hex[:6]}"}, headers=admin)
    assert user.status_code == 201, user.text
    key = httpx.post(
        f"{api.url}/api-keys", json={"name": "k", "user_id": user.json()["id"]}, headers=admin
    )
    assert key.status_code == 201, key.text
    error = cli.json(
        "respond", "hello", "--chat", "7", expect=1, ORCHESTRATOR_API_KEY=key.json()["key"]
    )["error"]
    assert error["status"] == 403
