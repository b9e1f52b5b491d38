"""The scheduled jobs' Temporal Schedules as the API shows them: describe, pause, unpause, run
now.

The jobs are the catalogue of ``core.schedules.JOBS``; their Schedules are made by
`orchestrator up` (stack/prepare.py). A job whose Schedule Temporal does not have is listed with
``exists: false`` and cannot be paused (409).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio.client import (
    Client,
    ScheduleActionExecutionStartWorkflow,
    ScheduleDescription,
    WorkflowFailureError,
)
from temporalio.service import RPCError, RPCStatusCode

from api.problems import Conflict, NotFound
from api.schemas import ScheduleRead, ScheduleRunRead
from api.services.temporal_calls import temporal_unavailable
from core.schedules import JOBS, ScheduledJob, job_named
from core.settings import Settings

# How long one call to Temporal may take before the API answers 503.
RPC_TIMEOUT = timedelta(seconds=10)
# How long a trigger may take to show its run in the Schedule, and how often that is asked.
START_WAIT = timedelta(seconds=10)
START_POLL_S = 0.1


def job(name: str) -> ScheduledJob:
    """The job called ``name``; 404 when the catalogue has none."""
    found = job_named(name)
    if found is None:
        known = ", ".join(each.name for each in JOBS)
        raise NotFound(f"no scheduled job {name!r}; the jobs are: {known}")
    return found


async def list_schedules(client: Client, settings: Settings) -> list[ScheduleRead]:
    """Every job of the catalogue, in its order, with its Schedule's state."""
    return list(await asyncio.gather(*(describe(client, settings, each) for each in JOBS)))


async def describe(client: Client, settings: Settings, job: ScheduledJob) -> ScheduleRead:
    handle = client.get_schedule_handle(job.schedule_id(settings))
    try:
        description = await handle.describe(rpc_timeout=RPC_TIMEOUT)
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise temporal_unavailable(exc) from exc
        return _missing(settings, job)
    return _read(settings, job, description)


async def set_paused(
    client: Client, settings: Settings, job: ScheduledJob, *, paused: bool, note: str
) -> ScheduleRead:
    """Pause or unpause the job's Schedule (again: only its note changes); a paused Schedule
    starts no runs. 409 when Temporal has no such Schedule."""
    handle = client.get_schedule_handle(job.schedule_id(settings))
    change = handle.pause if paused else handle.unpause
    try:
        await change(note=note, rpc_timeout=RPC_TIMEOUT)
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise temporal_unavailable(exc) from exc
        raise Conflict(
            f"Temporal has no Schedule {handle.id} for the job {job.name}; "
            "`orchestrator up` makes it"
        ) from None
    return await describe(client, settings, job)


async def run_now(
    client: Client, settings: Settings, job: ScheduledJob, wait_s: float
) -> ScheduleRunRead:
    """Start a run of the job now, as its interval would (the same workflow, named
    ``<schedule id>-<time>``), and wait up to ``wait_s`` for its end. 409 when a run is going
    (the Schedule skips an overlapping one) or Temporal has no such Schedule."""
    handle = client.get_schedule_handle(job.schedule_id(settings))
    before = await describe(client, settings, job)
    if not before.exists:
        raise Conflict(f"Temporal has no Schedule {handle.id}; `orchestrator up` makes it")
    if before.running:
        raise Conflict(f"a run of {job.name} is going now: {before.last_run_workflow_id}")
    try:
        await handle.trigger(rpc_timeout=RPC_TIMEOUT)
        workflow_id = await _next_run(client, settings, job, before.last_run_workflow_id)
    except RPCError as exc:
        raise temporal_unavailable(exc) from exc
    run = client.get_workflow_handle(workflow_id)
    try:
        result = await asyncio.wait_for(run.result(), wait_s) if wait_s else None
    except TimeoutError:
        return ScheduleRunRead(name=job.name, workflow_id=workflow_id, status="running")
    except WorkflowFailureError as failure:
        error = str(failure.cause or failure)
        return ScheduleRunRead(name=job.name, workflow_id=workflow_id, status="failed", error=error)
    if result is None:
        return ScheduleRunRead(name=job.name, workflow_id=workflow_id, status="running")
    return ScheduleRunRead(
        name=job.name, workflow_id=workflow_id, status="completed", result=dict(result)
    )


async def _next_run(
    client: Client, settings: Settings, job: ScheduledJob, before: str | None
) -> str:
    """The workflow id of the run the trigger started, once the Schedule shows it."""
    deadline = asyncio.get_running_loop().time() + START_WAIT.total_seconds()
    while True:
        now = await describe(client, settings, job)
        if now.last_run_workflow_id and now.last_run_workflow_id != before:
            return now.last_run_workflow_id
        if asyncio.get_running_loop().time() > deadline:
            # A trigger within the second of the run before it names the same run: nothing new.
            raise Conflict(f"the Schedule of {job.name} started no run; try again in a second")
        await asyncio.sleep(START_POLL_S)


def _missing(settings: Settings, job: ScheduledJob) -> ScheduleRead:
    return ScheduleRead(
        name=job.name,
        schedule_id=job.schedule_id(settings),
        workflow=job.workflow,
        summary=job.summary,
        exists=False,
        interval_s=job.interval(settings).total_seconds(),
        paused=False,
        note=None,
        last_run_at=None,
        last_run_workflow_id=None,
        next_run_at=None,
        running=False,
    )


def _read(settings: Settings, job: ScheduledJob, description: ScheduleDescription) -> ScheduleRead:
    schedule, info = description.schedule, description.info
    intervals = schedule.spec.intervals
    interval = intervals[0].every if intervals else job.interval(settings)
    last = max(info.recent_actions, key=lambda action: action.started_at, default=None)
    last_workflow = None
    if last is not None and isinstance(last.action, ScheduleActionExecutionStartWorkflow):
        last_workflow = last.action.workflow_id
    paused = schedule.state.paused
    return ScheduleRead(
        name=job.name,
        schedule_id=description.id,
        workflow=job.workflow,
        summary=job.summary,
        exists=True,
        interval_s=interval.total_seconds(),
        paused=paused,
        note=schedule.state.note or None,
        last_run_at=None if last is None else last.started_at,
        last_run_workflow_id=last_workflow,
        next_run_at=None if paused or not info.next_action_times else info.next_action_times[0],
        running=bool(info.running_actions),
    )
