"""worker:commands through the bridge: a real Worker answers on worker:responses."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import docker
from redis.asyncio import Redis
from temporalio.client import Client

from bridges.routes import routes
from core.contracts.base import decode_fields
from core.contracts.worker import (
    WORKER_COMMANDS_QUEUE,
    WORKER_RESPONSES_QUEUE,
    CreateWorker,
    DeleteWorker,
    SendFile,
    SendMessage,
    WorkerConfig,
    WorkerResponse,
)
from core.settings import Settings
from db.engine import Database
from infra.containers import ContainerRuntime
from infra.workers import SCRIPTED_SCRIPT
from testing.bridges import publish
from testing.images import image_builder
from testing.waiting import eventually
from testing.workflows import running_worker
from tests.bridges.conftest import StartBridge

SCRIPT = {"rounds": [{"write": {"path": "a.txt", "content": "A\n"}, "summary": "Wrote a.txt."}]}


async def responses(redis: Redis) -> dict[str, WorkerResponse]:
    entries = await redis.xrange(WORKER_RESPONSES_QUEUE)
    found = [decode_fields(WorkerResponse, fields) for _, fields in entries]
    return {r.request_id: r for r in found}


async def answer(redis: Redis, request_id: str, within: float = 60) -> WorkerResponse:
    async def check() -> WorkerResponse | None:
        return (await responses(redis)).get(request_id)

    return await eventually(check, f"the response to {request_id}", within=within)


async def test_create_send_message_and_delete_through_the_bridge(
    temporal_client: Client,
    redis: Redis,
    redis_url: str,
    sqlite_database: Database,
    docker_client: docker.DockerClient,
    start_bridge: StartBridge,
    tmp_path: Path,
) -> None:
    image_builder(docker_client).ensure("scripted")  # built once per content, cached
    queue = f"worker-routes-{uuid.uuid4().hex[:8]}"
    settings = Settings(temporal_task_queue=queue, redis_url=redis_url)
    runtime = ContainerRuntime(docker_client, Settings(worker_memory="256m"))
    create = CreateWorker(config=WorkerConfig(name="po", agent="scripted"))
    worker_id = create.request_id
    try:
        async with running_worker(
            temporal_client, sqlite_database, redis, tmp_path, task_queue=queue, runtime=runtime
        ):
            await start_bridge(routes(settings, redis))
            await publish(redis, WORKER_COMMANDS_QUEUE, create.to_fields())
            ready = await answer(redis, create.request_id, within=120)
            assert ready.success and ready.worker_id == worker_id
            assert ready.correlation_id == create.correlation_id

            script = SendFile(worker_id=worker_id, path=SCRIPTED_SCRIPT, content=json.dumps(SCRIPT))
            message = SendMessage(worker_id=worker_id, message="Write a.txt", timeout=60)
            for command in (script, message):
                await publish(redis, WORKER_COMMANDS_QUEUE, command.to_fields())
            written = await answer(redis, script.request_id)
            assert written.success, written.error
            said = await answer(redis, message.request_id)
            assert said.success, said.error
            assert said.response == "Wrote a.txt." and said.worker_id == worker_id

            delete = DeleteWorker(worker_id=worker_id)
            await publish(redis, WORKER_COMMANDS_QUEUE, delete.to_fields())
            deleted = await answer(redis, delete.request_id)
            assert deleted.success
            await temporal_client.get_workflow_handle(f"worker-{worker_id}").result()
            assert not [w for w in await runtime.list_workers() if w.worker_id == worker_id]

            # A command for a Worker that is gone is answered, not left pending.
            late = SendMessage(worker_id=worker_id, message="still there?")
            await publish(redis, WORKER_COMMANDS_QUEUE, late.to_fields())
            refused = await answer(redis, late.request_id)
            assert not refused.success and "no Worker" in (refused.error or "")
    finally:
        await runtime.remove(worker_id)
