"""WorkerWorkflow on a real dev server, a real container service and the scripted Worker image."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import CancelledError

from core.contracts.workflows import (
    WORKER_DELETE,
    WORKER_SEND_FILE,
    WORKER_SEND_MESSAGE,
    WorkerAnswer,
    WorkerDelete,
    WorkerFile,
    WorkerInput,
    WorkerMessage,
    WorkerOutput,
)
from core.ids import worker_workflow_id
from infra.containers import ContainerRuntime
from testing.waiting import eventually
from testing.workflows import container
from workflows.worker import WorkerWorkflow

HELLO = {
    "rounds": [
        {
            "write": {"path": "hello.txt", "content": "hello from the agent\n"},
            "report": "completed",
            "summary": "Wrote hello.txt.",
        }
    ]
}
SLOW = {"rounds": [{"run": ["sleep", "120"], "report": "completed", "summary": "slept"}]}


async def start(
    client: Client,
    queue: str,
    image: str,
    workspace: Path,
    *,
    script: dict[str, Any] = HELLO,
    **fields: Any,
) -> WorkflowHandle[Any, WorkerOutput]:
    worker_id = uuid.uuid4().hex[:12]
    workspace.mkdir(parents=True, exist_ok=True)
    request = WorkerInput(
        worker_id=worker_id,
        agent="scripted",
        task_id=f"task-{worker_id}",
        image=image,
        workspace=str(workspace),
        agent_options={"script": script},
        **fields,
    )
    return await client.start_workflow(
        WorkerWorkflow.run, request, id=worker_workflow_id(worker_id), task_queue=queue
    )


def worker_id_of(handle: WorkflowHandle[Any, Any]) -> str:
    return handle.id.removeprefix("worker-")


async def test_a_worker_answers_writes_and_is_deleted(
    temporal_client: Client,
    worker_queue: str,
    scripted_image: str,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    workspace = tmp_path / "workspace"
    handle = await start(temporal_client, worker_queue, scripted_image, workspace)
    worker_id = worker_id_of(handle)
    try:
        made = await eventually(lambda: asyncio.to_thread(container, docker_client, worker_id))
        assert made.labels["orchestrator.workflow_id"] == handle.id
        assert made.labels["orchestrator.task_id"] == f"task-{worker_id}"
        assert made.attrs["HostConfig"]["NetworkMode"] == "none"
        assert made.attrs["Config"]["User"] == "1000:1000"

        answer = await handle.execute_update(
            WORKER_SEND_MESSAGE, WorkerMessage(message="Say hello"), result_type=WorkerAnswer
        )
        assert answer.response == "Wrote hello.txt."
        assert answer.result.status == "completed"
        assert answer.result.files_changed == ["hello.txt"]
        assert (workspace / "hello.txt").read_text() == "hello from the agent\n"

        await handle.execute_update(
            WORKER_SEND_FILE, WorkerFile(path="docs/notes.md", content="# Notes\n")
        )
        assert (workspace / "docs" / "notes.md").read_text() == "# Notes\n"

        await handle.signal(WORKER_DELETE, WorkerDelete())
        output = await handle.result()
        assert output.reason == "deleted" and output.turns == 1
        assert await asyncio.to_thread(container, docker_client, worker_id) is None
        # A deleted Worker takes no more messages.
        with pytest.raises(Exception):  # noqa: B017 (the run has closed)
            await handle.execute_update(WORKER_SEND_MESSAGE, WorkerMessage(message="again"))
    finally:
        await ContainerRuntime(docker_client).remove(worker_id)


async def test_an_idle_worker_deletes_itself(
    temporal_client: Client,
    worker_queue: str,
    scripted_image: str,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    handle = await start(
        temporal_client, worker_queue, scripted_image, tmp_path / "ws", idle_timeout_s=2
    )
    worker_id = worker_id_of(handle)
    try:
        await eventually(lambda: asyncio.to_thread(container, docker_client, worker_id))
        output = await asyncio.wait_for(handle.result(), 30)
        assert output.reason == "idle" and output.turns == 0
        assert await asyncio.to_thread(container, docker_client, worker_id) is None
    finally:
        await ContainerRuntime(docker_client).remove(worker_id)


async def test_cancel_removes_the_container_while_the_agent_runs(
    temporal_client: Client,
    worker_queue: str,
    scripted_image: str,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    workspace = tmp_path / "ws"
    handle = await start(temporal_client, worker_queue, scripted_image, workspace, script=SLOW)
    worker_id = worker_id_of(handle)
    try:
        turn = asyncio.create_task(
            handle.execute_update(WORKER_SEND_MESSAGE, WorkerMessage(message="sleep"))
        )

        async def sleeping() -> bool:
            found = await asyncio.to_thread(container, docker_client, worker_id)
            if found is None or found.status != "running":
                return False
            top = await asyncio.to_thread(found.top)
            return any("sleep 120" in " ".join(p) for p in top.get("Processes") or [])

        await eventually(sleeping, within=30)
        await handle.cancel()
        loop = asyncio.get_running_loop()
        cancelled_at = loop.time()

        async def gone() -> bool:
            return await asyncio.to_thread(container, docker_client, worker_id) is None

        await eventually(gone, within=10)
        assert loop.time() - cancelled_at < 10
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        assert isinstance(failure.value.cause, CancelledError)
        with pytest.raises(Exception):  # noqa: B017 (the turn ended with its Worker)
            await asyncio.wait_for(turn, 30)
    finally:
        await ContainerRuntime(docker_client).remove(worker_id)


async def test_bad_input_fails_the_run_at_once(
    temporal_client: Client, worker_queue: str, tmp_path: Path
) -> None:
    request = WorkerInput(worker_id=uuid.uuid4().hex[:12], agent="nobody")
    with pytest.raises(WorkflowFailureError) as failure:
        await temporal_client.execute_workflow(
            WorkerWorkflow.run,
            request,
            id=worker_workflow_id(request.worker_id),
            task_queue=worker_queue,
        )
    assert "unknown agent 'nobody'" in str(failure.value.cause)
