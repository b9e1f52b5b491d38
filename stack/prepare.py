"""One-shot setup before the services start: migrate, make the admin key, register attributes,
make the reaper's Temporal Schedule.

The supervisor runs this as a child (``python -m stack.prepare``) rather than in its own process:
the Temporal client leaves runtime threads behind, and a supervisor that forks children must not
have those (nor abort at exit with them, sdk-python #300).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable
from datetime import timedelta
from typing import TYPE_CHECKING

from core.crypto import Vault
from core.settings import Settings
from db.engine import Database
from db.migrate import upgrade
from db.users import ensure_admin_key

if TYPE_CHECKING:
    from temporalio.client import Client, Schedule, ScheduleDescription, ScheduleUpdateInput

TEMPORAL_DEADLINE = 60.0
# A reaper run stuck past this ends, so the next one (skipped while it runs) can start.
REAPER_RUN_TIMEOUT = timedelta(hours=1)


async def prepare_temporal(settings: Settings) -> None:
    """Register the search attributes and make the reaper's Schedule."""
    # Imported here: only this step needs the Temporal SDK.
    from core.temporal import connect, ensure_search_attributes

    deadline = time.monotonic() + TEMPORAL_DEADLINE
    while True:
        try:
            client = await connect(settings)
            # Temporal Cloud registers attributes in its own console, not through this API;
            # a key without the right to make Schedules leaves the reaper to the operator.
            await _unless_denied(
                ensure_search_attributes(client, settings.temporal_namespace),
                "search attributes not registered",
            )
            await _unless_denied(
                ensure_reaper_schedule(client, settings), "the reaper's Schedule not made"
            )
            return
        except Exception as exc:
            # A dev server that just opened its port may not serve yet; a real outage persists.
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"cannot prepare Temporal at {settings.effective_temporal_address}: {exc}"
                ) from exc
            await asyncio.sleep(0.2)


async def _unless_denied(step: Awaitable[object], warning: str) -> None:
    try:
        await step
    except Exception as exc:
        if not _not_ours_to_change(exc):
            raise
        print(f"warning: {warning}: {exc}", file=sys.stderr)


def reaper_schedule(settings: Settings) -> Schedule:
    """The Schedule that starts ReaperWorkflow every ``reaper_interval_minutes`` on the
    settings' task queue; a run still going when the next is due makes that one skip."""
    from temporalio.client import (
        Schedule,
        ScheduleActionStartWorkflow,
        ScheduleIntervalSpec,
        ScheduleOverlapPolicy,
        SchedulePolicy,
        ScheduleSpec,
    )

    from workflows.reaper import REAPER_SCHEDULE, REAPER_WORKFLOW, ReaperInput

    return Schedule(
        action=ScheduleActionStartWorkflow(
            REAPER_WORKFLOW,
            ReaperInput(),  # the worker's settings decide the retention
            id=REAPER_SCHEDULE,
            task_queue=settings.temporal_task_queue,
            execution_timeout=REAPER_RUN_TIMEOUT,
        ),
        spec=ScheduleSpec(
            intervals=[
                ScheduleIntervalSpec(every=timedelta(minutes=settings.reaper_interval_minutes))
            ]
        ),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


async def ensure_reaper_schedule(client: Client, settings: Settings) -> bool:
    """Create the reaper's Schedule, or update the one there if its interval, workflow or
    task queue differ (a paused Schedule stays paused). Returns whether anything changed."""
    from temporalio.client import ScheduleAlreadyRunningError, ScheduleUpdate

    from workflows.reaper import REAPER_SCHEDULE

    wanted = reaper_schedule(settings)
    try:
        await client.create_schedule(REAPER_SCHEDULE, wanted)
        return True
    except ScheduleAlreadyRunningError:
        pass
    handle = client.get_schedule_handle(REAPER_SCHEDULE)
    if _same_schedule(await handle.describe(), wanted):
        return False

    def update(current: ScheduleUpdateInput) -> ScheduleUpdate:
        wanted.state = current.description.schedule.state
        return ScheduleUpdate(schedule=wanted)

    await handle.update(update)
    return True


def _same_schedule(current: ScheduleDescription, wanted: Schedule) -> bool:
    from temporalio.client import ScheduleActionStartWorkflow

    have, want = current.schedule.action, wanted.action
    return (
        isinstance(have, ScheduleActionStartWorkflow)
        and isinstance(want, ScheduleActionStartWorkflow)
        and have.workflow == want.workflow
        and have.task_queue == want.task_queue
        and [i.every for i in current.schedule.spec.intervals]
        == [i.every for i in wanted.spec.intervals]
    )


def _not_ours_to_change(exc: Exception) -> bool:
    from temporalio.service import RPCError, RPCStatusCode

    return isinstance(exc, RPCError) and exc.status in (
        RPCStatusCode.PERMISSION_DENIED,
        RPCStatusCode.UNIMPLEMENTED,
    )


async def prepare(settings: Settings) -> None:
    settings.home_dir.mkdir(parents=True, exist_ok=True)
    # The key of stored secrets: made here once (0600), and a bad ORCHESTRATOR_SECRET_KEY fails
    # `up` instead of the first `secret set`.
    Vault.from_settings(settings)
    # Alembic's env.py runs its own event loop, so keep it off this one.
    await asyncio.to_thread(upgrade, settings.effective_database_url)
    db = Database(settings.effective_database_url)
    try:
        await ensure_admin_key(db, settings.api_key_file)
    finally:
        await db.dispose()
    await prepare_temporal(settings)


def main() -> None:
    status = 0
    try:
        asyncio.run(prepare(Settings()))
    except Exception as exc:
        print(f"prepare failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
