"""Polling with deadlines, and messages to put on the queues."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from core.contracts.engineering import EngineeringMessage
from core.contracts.scaffolder import ScaffolderMessage


def engineering_message(**overrides: Any) -> EngineeringMessage:
    fields: dict[str, Any] = {
        "task_id": uuid.uuid4().hex,
        "project_id": uuid.uuid4().hex,
        "user_id": "user-1",
    }
    return EngineeringMessage(**{**fields, **overrides})


def scaffolder_message(**overrides: Any) -> ScaffolderMessage:
    fields: dict[str, Any] = {
        "project_id": uuid.uuid4().hex,
        "repo_full_name": "acme/shop",
        "project_name": "shop",
        "modules": ["backend"],
    }
    return ScaffolderMessage(**{**fields, **overrides})


async def publish(redis: Redis, queue: str, fields: Mapping[Any, Any]) -> bytes | str:
    """XADD raw fields (a model's ``to_fields()`` or deliberately broken ones)."""
    return await redis.xadd(queue, dict(fields))


async def pending_count(redis: Redis, queue: str, group: str = "bridges") -> int:
    try:
        info = await redis.xpending(queue, group)
    except Exception:  # no stream or group yet
        return -1
    return int(info["pending"])


async def acked(redis: Redis, queue: str, group: str = "bridges") -> bool:
    """Every entry of the stream was delivered to the group and acknowledged."""
    groups = await redis.xinfo_groups(queue)
    mine = [g for g in groups if g["name"] in (group, group.encode())]
    return bool(mine) and mine[0]["pending"] == 0 and mine[0]["lag"] == 0


async def workflow_exists(client: Client, workflow_id: str) -> bool:
    try:
        await client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


async def runs_of(client: Client, workflow_id: str) -> list[Any]:
    return [wf async for wf in client.list_workflows(f'WorkflowId = "{workflow_id}"')]
