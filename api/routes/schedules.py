"""Schedules: the scheduled jobs (core/schedules.py) and their Temporal Schedules. Everyone may
read them; admins pause, unpause and run them now."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import AdminUser, AppRuntime
from api.problems import problem_responses
from api.schemas import SchedulePause, ScheduleRead, ScheduleRunRead, ScheduleRunRequest
from api.services import schedules

router = APIRouter(prefix="/schedules", tags=["schedules"])


@router.get(
    "",
    summary="Every scheduled job: its interval, paused or not, its last and next run",
    responses=problem_responses(503),
)
async def list_schedules(runtime: AppRuntime) -> list[ScheduleRead]:
    client = await runtime.temporal_client()
    return await schedules.list_schedules(client, runtime.settings)


@router.post(
    "/{name}/pause",
    summary="Pause a job's Schedule (admins): it starts no runs until unpaused; a run going on "
    "goes on",
    responses=problem_responses(403, 404, 409, 503),
)
async def pause_schedule(
    name: str, admin: AdminUser, runtime: AppRuntime, body: SchedulePause | None = None
) -> ScheduleRead:
    job = schedules.job(name)  # a 404 needs no Temporal
    note = body.note if body is not None and body.note else f"paused by {admin.name}"
    client = await runtime.temporal_client()
    return await schedules.set_paused(client, runtime.settings, job, paused=True, note=note)


@router.post(
    "/{name}/unpause",
    summary="Unpause a job's Schedule (admins): its runs start again at their interval",
    responses=problem_responses(403, 404, 409, 503),
)
async def unpause_schedule(name: str, admin: AdminUser, runtime: AppRuntime) -> ScheduleRead:
    job = schedules.job(name)
    client = await runtime.temporal_client()
    note = f"unpaused by {admin.name}"
    return await schedules.set_paused(client, runtime.settings, job, paused=False, note=note)


@router.post(
    "/{name}/run",
    summary="Run a job now (admins), as its interval would, and wait for its end (up to wait_s)",
    responses=problem_responses(403, 404, 409, 503),
)
async def run_schedule(
    name: str, admin: AdminUser, runtime: AppRuntime, body: ScheduleRunRequest | None = None
) -> ScheduleRunRead:
    job = schedules.job(name)
    client = await runtime.temporal_client()
    wait_s = body.wait_s if body is not None else ScheduleRunRequest().wait_s
    return await schedules.run_now(client, runtime.settings, job, wait_s)
