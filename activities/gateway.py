"""Temporal activities around the gateway the worker process serves.

Register ``GatewayActivities(gateway)``'s methods on the worker that owns the ``Gateway``. A
workflow calls ``open_gateway`` before an agent turn (idempotent: after a worker crash the
retried call binds the socket again and the totals come back from the database),
``gateway_usage`` to check the budget and fill the task's result, and ``close_gateway`` when
the Worker goes away.
"""

from __future__ import annotations

from pydantic import BaseModel, Field
from temporalio import activity

from core.contracts.agents import Budget, TaskUsage
from gateway.server import Gateway


class OpenGatewayInput(BaseModel):
    task_id: str
    socket_path: str = Field(description="On the host; mount its directory into the Worker")
    budget: Budget = Field(default_factory=Budget)


class GatewayActivities:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    @activity.defn
    async def open_gateway(self, request: OpenGatewayInput) -> None:
        await self.gateway.open(request.task_id, request.socket_path, request.budget)

    @activity.defn
    async def close_gateway(self, task_id: str) -> None:
        await self.gateway.close(task_id)

    @activity.defn
    async def gateway_usage(self, task_id: str) -> TaskUsage:
        """The task's totals from the database, whichever process served its calls."""
        return await self.gateway.load_usage(task_id)
