"""The Schedules `up` makes: one per job, skipping a tick that would overlap, not replaying missed
ticks in a burst, named and summarised for the Web UI, left alone when nothing changed."""

from __future__ import annotations

import uuid
from datetime import timedelta

from temporalio.client import Client, ScheduleActionStartWorkflow, ScheduleOverlapPolicy

from core.schedules import JOBS, SERVER_HEALTH
from core.settings import Settings
from stack.prepare import ensure_schedules


async def test_up_makes_one_schedule_per_job_and_keeps_an_operators_pause(
    temporal_client: Client,
) -> None:
    settings = Settings(temporal_task_queue=f"schedules-{uuid.uuid4().hex[:8]}")
    ids = [job.schedule_id(settings) for job in JOBS]
    try:
        assert await ensure_schedules(temporal_client, settings) == ids
        assert await ensure_schedules(temporal_client, settings) == []  # up again: nothing
        for job in JOBS:
            described = await temporal_client.get_schedule_handle(
                job.schedule_id(settings)
            ).describe()
            action = described.schedule.action
            assert isinstance(action, ScheduleActionStartWorkflow)
            assert (action.workflow, action.id) == (job.workflow, job.schedule_id(settings))
            assert await described.memo_value("summary") == job.summary
            policy = described.schedule.policy
            assert policy.overlap == ScheduleOverlapPolicy.SKIP
            # A missed tick runs at most once, within one interval of when it was due.
            assert policy.catchup_window == max(job.interval(settings), timedelta(seconds=10))

        handle = temporal_client.get_schedule_handle(SERVER_HEALTH.schedule_id(settings))
        await handle.pause(note="maintenance")
        quicker = settings.model_copy(update={"server_health_interval_s": 15.0})
        assert await ensure_schedules(temporal_client, quicker) == [handle.id]
        described = await handle.describe()
        assert [i.every for i in described.schedule.spec.intervals] == [timedelta(seconds=15)]
        assert described.schedule.state.paused and described.schedule.state.note == "maintenance"
    finally:
        for schedule_id in ids:
            await temporal_client.get_schedule_handle(schedule_id).delete()
