"""The bridge against a real Redis and a real Temporal dev server (no Temporal worker needed)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from redis.asyncio import Redis
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from bridges.consumer import Bridge, Route, dead_letter_stream
from bridges.routes import start_engineering
from core.contracts.engineering import ENGINEERING_QUEUE, EngineeringMessage
from core.contracts.scaffolder import SCAFFOLDER_QUEUE
from core.contracts.workflows import (
    ENGINEERING_WORKFLOW,
    SCAFFOLD_WORKFLOW,
    EngineeringInput,
    ScaffoldInput,
)
from core.ids import engineering_workflow_id, scaffold_workflow_id
from core.temporal import PROJECT_ID, TASK_ID, TASK_TYPE
from testing.bridges import (
    acked,
    engineering_message,
    pending_count,
    publish,
    runs_of,
    scaffolder_message,
    workflow_exists,
)
from testing.waiting import eventually
from tests.bridges.conftest import StartBridge

DLQ = dead_letter_stream(ENGINEERING_QUEUE)


async def started_input(client: Client, workflow_id: str, model: Any) -> Any:
    """The input the run was started with, read back from its first history event."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    payloads = history.events[0].workflow_execution_started_event_attributes.input.payloads
    [value] = await client.data_converter.decode(payloads, [model])
    return value


async def test_engineering_message_starts_its_workflow_and_is_acked(
    redis: Redis, temporal_client: Client, start_bridge: StartBridge, task_queue: str
) -> None:
    message = engineering_message(callback_stream="po:chat-1")
    await publish(redis, ENGINEERING_QUEUE, message.to_fields())
    await start_bridge()

    workflow_id = engineering_workflow_id(message.task_id)
    await eventually(lambda: workflow_exists(temporal_client, workflow_id), "the workflow")
    description = await temporal_client.get_workflow_handle(workflow_id).describe()
    assert description.workflow_type == ENGINEERING_WORKFLOW
    assert description.task_queue == task_queue
    assert description.status == WorkflowExecutionStatus.RUNNING
    attributes = description.typed_search_attributes
    assert attributes.get(TASK_ID) == message.task_id
    assert attributes.get(PROJECT_ID) == message.project_id
    assert attributes.get(TASK_TYPE) == "engineering"
    summary = await description.static_summary()
    assert summary == (
        f"Engineering task {message.task_id} (feature) on project {message.project_id}"
    )
    assert await started_input(temporal_client, workflow_id, EngineeringInput) == EngineeringInput(
        task_id=message.task_id,
        project_id=message.project_id,
        user_id=message.user_id,
        action=message.action,
        skip_deploy=message.skip_deploy,
        correlation_id=message.correlation_id,
        callback_stream="po:chat-1",
    )
    await eventually(lambda: acked(redis, ENGINEERING_QUEUE), "the ack")
    assert await pending_count(redis, ENGINEERING_QUEUE) == 0


async def test_invalid_messages_go_to_the_dead_letter_stream(
    redis: Redis, temporal_client: Client, start_bridge: StartBridge
) -> None:
    good = json.loads(engineering_message().model_dump_json())
    missing = {k: v for k, v in good.items() if k != "project_id"}
    bad_messages: list[tuple[dict[str, Any], str, bytes]] = [
        ({"data": json.dumps(missing)}, "missing field 'project_id'", json.dumps(missing).encode()),
        (
            {"data": json.dumps({**good, "version": "2"})},
            "unsupported contract version '2'",
            json.dumps({**good, "version": "2"}).encode(),
        ),
        ({"data": b"\xff not json"}, "is not valid JSON", b"\xff not json"),
        ({"payload": "x", "other": "y"}, "no 'data' field", b'{"payload": "x", "other": "y"}'),
        (
            {"data": json.dumps({**good, "colour": "red"})},
            "unknown field 'colour'",
            json.dumps({**good, "colour": "red"}).encode(),
        ),
    ]
    ids = [await publish(redis, ENGINEERING_QUEUE, fields) for fields, _, _ in bad_messages]
    await start_bridge()

    async def dead_letters() -> list[Any]:
        entries: list[Any] = await redis.xrange(DLQ)  # type: ignore[assignment]
        return entries if len(entries) == len(bad_messages) else []

    entries = {e[b"original_id"]: e for _, e in await eventually(dead_letters, "5 dead letters")}
    for message_id, (_, reason, payload) in zip(ids, bad_messages, strict=True):
        entry = entries[message_id]
        assert reason in entry[b"reason"].decode(), entry[b"reason"]
        assert entry[b"data"] == payload
        assert entry[b"queue"] == ENGINEERING_QUEUE.encode()
        assert entry[b"failed_at"]
    await eventually(lambda: acked(redis, ENGINEERING_QUEUE), "the acks")

    # The bridge is still at work after all of them.
    valid = engineering_message()
    await publish(redis, ENGINEERING_QUEUE, valid.to_fields())
    workflow_id = engineering_workflow_id(valid.task_id)
    await eventually(lambda: workflow_exists(temporal_client, workflow_id), "the valid workflow")
    await eventually(lambda: acked(redis, ENGINEERING_QUEUE), "the last ack")
    assert await redis.xlen(DLQ) == len(bad_messages)


async def one_run(client: Client, workflow_id: str) -> list[Any]:
    # Visibility lags a start by a little: wait for the run to be listed, then count.
    runs = await eventually(lambda: runs_of(client, workflow_id), "the run to be listed")
    return runs


async def test_the_same_message_twice_starts_one_workflow(
    redis: Redis, temporal_client: Client, start_bridge: StartBridge
) -> None:
    message = engineering_message()
    await publish(redis, ENGINEERING_QUEUE, message.to_fields())
    await publish(redis, ENGINEERING_QUEUE, message.to_fields())
    await start_bridge()

    await eventually(lambda: acked(redis, ENGINEERING_QUEUE), "both acks")
    assert len(await one_run(temporal_client, engineering_workflow_id(message.task_id))) == 1
    assert await redis.exists(DLQ) == 0


async def test_a_redelivery_after_the_run_closed_starts_no_second_run(
    redis: Redis, temporal_client: Client, start_bridge: StartBridge
) -> None:
    message = engineering_message()
    workflow_id = engineering_workflow_id(message.task_id)
    await start_bridge()
    await publish(redis, ENGINEERING_QUEUE, message.to_fields())
    await eventually(lambda: workflow_exists(temporal_client, workflow_id), "the workflow")
    await temporal_client.get_workflow_handle(workflow_id).terminate("closed for the test")

    # Under the default reuse policy this would start a second run.
    await publish(redis, ENGINEERING_QUEUE, message.to_fields())
    await eventually(lambda: acked(redis, ENGINEERING_QUEUE), "both acks")

    async def closed_runs() -> list[Any]:
        runs = await runs_of(temporal_client, workflow_id)
        terminated = any(r.status == WorkflowExecutionStatus.TERMINATED for r in runs)
        return runs if terminated else []

    runs = await eventually(closed_runs, "the terminated run to be listed")
    assert len(runs) == 1


async def test_a_temporal_error_leaves_the_message_pending_until_a_retry_succeeds(
    redis: Redis, temporal_client: Client, start_bridge: StartBridge, task_queue: str
) -> None:
    calls: list[str] = []

    async def flaky_start(client: Client, message: EngineeringMessage) -> None:
        calls.append(message.task_id)
        if len(calls) <= 2:
            raise RPCError("server unreachable", RPCStatusCode.UNAVAILABLE, b"")
        await start_engineering(client, message, task_queue=task_queue)

    await start_bridge([Route(ENGINEERING_QUEUE, EngineeringMessage, flaky_start)])
    message = engineering_message()
    await publish(redis, ENGINEERING_QUEUE, message.to_fields())

    await eventually(lambda: _at_least(calls, 1), "the first attempt")
    assert await pending_count(redis, ENGINEERING_QUEUE) == 1  # not acked after a failure
    workflow_id = engineering_workflow_id(message.task_id)
    await eventually(lambda: workflow_exists(temporal_client, workflow_id), "the retried start")
    await eventually(lambda: acked(redis, ENGINEERING_QUEUE), "the ack after the retry")
    assert calls == [message.task_id] * 3
    assert await redis.exists(DLQ) == 0


async def _at_least(items: list[Any], n: int) -> bool:
    return len(items) >= n


async def test_messages_left_by_a_dead_consumer_are_claimed(
    redis: Redis, temporal_client: Client, start_bridge: StartBridge
) -> None:
    message = engineering_message()
    await redis.xgroup_create(ENGINEERING_QUEUE, "bridges", id="0", mkstream=True)
    await publish(redis, ENGINEERING_QUEUE, message.to_fields())
    # A consumer that read the message and died before acknowledging it.
    await redis.xreadgroup("bridges", "dead-consumer", {ENGINEERING_QUEUE: ">"}, count=10)
    assert await pending_count(redis, ENGINEERING_QUEUE) == 1

    await start_bridge(claim_idle_ms=300)
    workflow_id = engineering_workflow_id(message.task_id)
    await eventually(lambda: workflow_exists(temporal_client, workflow_id), "the claimed start")
    await eventually(lambda: acked(redis, ENGINEERING_QUEUE), "the ack of the claimed message")


async def test_scaffolder_message_starts_the_scaffold_workflow(
    redis: Redis, temporal_client: Client, start_bridge: StartBridge, task_queue: str
) -> None:
    message = scaffolder_message()
    await start_bridge()
    await publish(redis, SCAFFOLDER_QUEUE, message.to_fields())

    workflow_id = scaffold_workflow_id(message.project_id)
    await eventually(lambda: workflow_exists(temporal_client, workflow_id), "the workflow")
    description = await temporal_client.get_workflow_handle(workflow_id).describe()
    assert description.workflow_type == SCAFFOLD_WORKFLOW
    assert description.task_queue == task_queue
    assert description.typed_search_attributes.get(PROJECT_ID) == message.project_id
    assert await description.static_summary() == (
        f"Scaffold acme/shop for project {message.project_id}"
    )
    assert await started_input(temporal_client, workflow_id, ScaffoldInput) == ScaffoldInput(
        project_id=message.project_id,
        repo_full_name="acme/shop",
        project_name="shop",
        modules=["backend"],
        correlation_id=message.correlation_id,
    )
    await eventually(lambda: acked(redis, SCAFFOLDER_QUEUE), "the ack")


async def test_the_bridge_recreates_its_group_when_the_stream_vanishes(
    redis: Redis, temporal_client: Client, start_bridge: StartBridge
) -> None:
    await start_bridge()
    # What a Redis restart without persistence looks like to a running bridge.
    await redis.delete(ENGINEERING_QUEUE)
    message = engineering_message()
    await publish(redis, ENGINEERING_QUEUE, message.to_fields())

    workflow_id = engineering_workflow_id(message.task_id)
    await eventually(lambda: workflow_exists(temporal_client, workflow_id), "the workflow")
    await eventually(lambda: acked(redis, ENGINEERING_QUEUE), "the ack")


async def test_consumers_of_gone_processes_are_forgotten_unless_they_hold_messages(
    redis: Redis, temporal_client: Client, bridge_routes: list[Route], monkeypatch: Any
) -> None:
    queue = "engineering:queue"
    await redis.xgroup_create(queue, "bridges", id="0", mkstream=True)
    await publish(redis, queue, engineering_message().to_fields())
    # Two earlier processes: one read the message and died holding it, one left nothing.
    await redis.xreadgroup("bridges", "gone-holding", {queue: ">"}, count=1)
    await redis.xgroup_createconsumer(queue, "bridges", "gone-empty")
    bridge = Bridge(redis, temporal_client, bridge_routes, consumer="alive")
    monkeypatch.setattr("bridges.consumer.CONSUMER_FORGET_MS", 0)  # everyone idle long enough
    forgotten = await bridge.prune_consumers(queue)
    assert forgotten == ["gone-empty"]
    names = {c["name"].decode() for c in await redis.xinfo_consumers(queue, "bridges")}
    assert names == {"gone-holding"}


async def test_messages_sharing_an_order_key_are_acted_on_in_order(
    redis: Redis, start_bridge: StartBridge
) -> None:
    """Commands for one Worker reach it in the order they were sent; others are not held up."""
    release = asyncio.Event()
    acted: list[str] = []

    async def action(_: Client, message: EngineeringMessage) -> None:
        if message.user_id == "first":
            await release.wait()  # the first command of worker A is slow
        acted.append(message.user_id)

    route = Route(ENGINEERING_QUEUE, EngineeringMessage, action, order_key=lambda m: m.project_id)
    await start_bridge([route])
    for user_id, worker in (("first", "A"), ("second", "A"), ("other", "B")):
        message = engineering_message(user_id=user_id, project_id=worker)
        await publish(redis, ENGINEERING_QUEUE, message.to_fields())

    await eventually(lambda: _async(acted == ["other"]), "worker B's command, not held up")
    assert "second" not in acted  # it waits for the first command of its own worker
    release.set()
    await eventually(lambda: _async(len(acted) == 3), "all three commands")
    assert acted == ["other", "first", "second"]
    await eventually(lambda: acked(redis, ENGINEERING_QUEUE), "the acks")


async def _async(value: bool) -> bool:
    return value
