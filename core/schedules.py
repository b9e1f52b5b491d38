"""The scheduled jobs: each a workflow a Temporal Schedule starts every interval.

`orchestrator up` makes (or updates) one Schedule per job (stack/prepare.py); the API lists,
pauses and unpauses them (api/services/schedules.py), the CLI as `orchestrator schedule ...`.
A Schedule's id is ``<task queue>-<job>`` ("orchestrator-reaper" on the default queue), so
two deployments sharing a Temporal namespace keep theirs apart.

Every Schedule skips a tick while the job's previous run still goes (overlap SKIP), and a tick
missed while Temporal or the workers were down is not made up for in a burst: at most one runs,
within one interval of when it was due (the catch-up window).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from core.settings import Settings

# Temporal refuses a catch-up window under 10 s.
MIN_CATCHUP_WINDOW = timedelta(seconds=10)


@dataclass(frozen=True)
class ScheduledJob:
    name: str  # what the CLI calls it: `orchestrator schedule pause server-health`
    workflow: str  # the workflow type the Schedule starts
    summary: str  # one line, shown in the Web UI and by `schedule list`
    interval: Callable[[Settings], timedelta]
    run_timeout: timedelta  # a run stuck past this ends, so the next (skipped meanwhile) can start

    def schedule_id(self, settings: Settings) -> str:
        return f"{settings.temporal_task_queue}-{self.name}"

    def catchup_window(self, settings: Settings) -> timedelta:
        return max(self.interval(settings), MIN_CATCHUP_WINDOW)


REAPER = ScheduledJob(
    name="reaper",
    workflow="ReaperWorkflow",
    summary="Remove what closed runs left: Worker containers, turns, old workspaces",
    interval=lambda settings: timedelta(minutes=settings.reaper_interval_minutes),
    run_timeout=timedelta(hours=1),
)
SERVER_HEALTH = ScheduledJob(
    name="server-health",
    workflow="ServerHealthWorkflow",
    summary="Check each server over SSH: reachable, load, memory, disk, container engine",
    interval=lambda settings: timedelta(seconds=settings.server_health_interval_s),
    run_timeout=timedelta(minutes=15),
)

APP_HEALTH = ScheduledJob(
    name="app-health",
    workflow="AppHealthWorkflow",
    summary="Check each serving app from here: its health URL or liveness, its TLS certificate",
    interval=lambda settings: timedelta(seconds=settings.app_health_interval_s),
    run_timeout=timedelta(minutes=15),
)

REPO_SYNC = ScheduledJob(
    "repo-sync",
    "RepoSyncWorkflow",
    "Read open pull requests' states from the forge; deploy a merge where asked",
    lambda settings: timedelta(seconds=settings.repo_sync_interval_s),
    timedelta(minutes=15),
)

USAGE = ScheduledJob(
    "usage",
    "UsageWorkflow",
    "Tell the chats of projects whose model calls today cost past their daily budget",
    lambda settings: timedelta(seconds=settings.usage_interval_s),
    timedelta(minutes=15),
)

JOBS: tuple[ScheduledJob, ...] = (REAPER, SERVER_HEALTH, APP_HEALTH, REPO_SYNC, USAGE)


def job_named(name: str) -> ScheduledJob | None:
    return next((job for job in JOBS if job.name == name), None)
