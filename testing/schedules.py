"""Run one tick of a scheduled job's Temporal Schedule now, and wait for what it did.

Tests (and the benchmarks) trigger the real Schedule instead of waiting for its interval: the
run it starts is the one an interval would have started, named ``<schedule id>-<time>``.
"""

from __future__ import annotations

import time
from typing import Any

from temporalio.client import Client, ScheduleActionExecutionStartWorkflow

from testing.waiting import eventually


class Ticks:
    """Trigger ``schedule_id`` and wait for each run to end; ``workflow_ids`` of every run."""

    def __init__(self, client: Client, schedule_id: str) -> None:
        self.client = client
        self.handle = client.get_schedule_handle(schedule_id)
        self.workflow_ids: list[str] = []
        self._triggered_at = 0.0

    async def tick(self, within: float = 120.0) -> Any:
        """One run of the Schedule's workflow, to its end; its result."""
        # A run's id carries its start time to the second: a second trigger in the same second
        # would name the run before it.
        await eventually(lambda: int(time.time()) > int(self._triggered_at), "the next second")
        known = set(self.workflow_ids)
        self._triggered_at = time.time()
        await self.handle.trigger()

        async def started() -> str | None:
            described = await self.handle.describe()
            ids = [
                action.action.workflow_id
                for action in described.info.recent_actions
                if isinstance(action.action, ScheduleActionExecutionStartWorkflow)
            ]
            return next((i for i in reversed(ids) if i not in known), None)

        workflow_id = str(await eventually(started, "the triggered run to start", within=within))
        self.workflow_ids.append(workflow_id)
        return await self.client.get_workflow_handle(workflow_id).result()
