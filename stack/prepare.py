"""One-shot setup before the services start: migrate, make the admin key, register attributes,
make the Temporal Schedules of the scheduled jobs (core/schedules.py).

The supervisor runs this as a child (``python -m stack.prepare``) rather than in its own process:
the Temporal client leaves runtime threads behind, and a supervisor that forks children must not
have those (nor abort at exit with them, sdk-python #300).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from core.crypto import Vault
from core.schedules import JOBS, ScheduledJob
from core.settings import Settings
from db.engine import Database
from db.migrate import upgrade
from db.users import ensure_admin_key

if TYPE_CHECKING:
    from temporalio.client import Client, Schedule, ScheduleDescription, ScheduleUpdateInput

TEMPORAL_DEADLINE = 60.0


async def prepare_temporal(settings: Settings) -> None:
    """Register the search attributes and make the scheduled jobs' Schedules."""
    # Imported here: only this step needs the Temporal SDK.
    from core.temporal import connect, ensure_search_attributes

    deadline = time.monotonic() + TEMPORAL_DEADLINE
    while True:
        try:
            client = await connect(settings)
            # Temporal Cloud registers attributes in its own console, not through this API;
            # a key without the right to make Schedules leaves the jobs to the operator.
            await _unless_denied(
                ensure_search_attributes(client, settings.temporal_namespace),
                "search attributes not registered",
            )
            await _unless_denied(
                ensure_schedules(client, settings), "the scheduled jobs' Schedules not made"
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


def job_schedule(settings: Settings, job: ScheduledJob) -> Schedule:
    """The Schedule that starts ``job``'s workflow every interval on the settings' task queue,
    each run named ``<schedule id>-<time>``; a tick while a run still goes is skipped, and
    after an outage at most one missed tick runs (the catch-up window is one interval)."""
    from temporalio.client import (
        Schedule,
        ScheduleActionStartWorkflow,
        ScheduleIntervalSpec,
        ScheduleOverlapPolicy,
        SchedulePolicy,
        ScheduleSpec,
    )

    return Schedule(
        action=ScheduleActionStartWorkflow(
            job.workflow,
            {},  # the worker's settings decide the rest
            id=job.schedule_id(settings),
            task_queue=settings.temporal_task_queue,
            execution_timeout=job.run_timeout,
            static_summary=job.summary,
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=job.interval(settings))]),
        policy=SchedulePolicy(
            overlap=ScheduleOverlapPolicy.SKIP, catchup_window=job.catchup_window(settings)
        ),
    )


async def ensure_schedules(client: Client, settings: Settings) -> list[str]:
    """Every job's Schedule made or brought up to date; the ids of those that changed."""
    changed = []
    for job in JOBS:
        if await ensure_schedule(client, settings, job):
            changed.append(job.schedule_id(settings))
    return changed


async def ensure_schedule(client: Client, settings: Settings, job: ScheduledJob) -> bool:
    """Create ``job``'s Schedule, or update the one there if it differs from what the settings
    say (a paused Schedule stays paused, with its note). Returns whether anything changed."""
    from temporalio.client import ScheduleAlreadyRunningError, ScheduleUpdate

    wanted = job_schedule(settings, job)
    schedule_id = job.schedule_id(settings)
    try:
        await client.create_schedule(schedule_id, wanted, memo={"summary": job.summary})
        return True
    except ScheduleAlreadyRunningError:
        pass
    handle = client.get_schedule_handle(schedule_id)
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
        and have.execution_timeout == want.execution_timeout
        and _text(have.static_summary) == want.static_summary
        and [i.every for i in current.schedule.spec.intervals]
        == [i.every for i in wanted.spec.intervals]
        and current.schedule.policy.overlap == wanted.policy.overlap
        and current.schedule.policy.catchup_window == wanted.policy.catchup_window
    )


def _text(summary: object) -> str | None:
    """A described action's summary: the SDK (1.35) hands it back as the payload it sent."""
    data = getattr(summary, "data", None)
    if isinstance(data, bytes):
        return str(json.loads(data))
    return None if summary is None else str(summary)


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
