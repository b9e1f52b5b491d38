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


def _every(setting: str, unit: str = "seconds") -> Callable[[Settings], timedelta]:
    """The interval a setting gives (in ``unit``)."""
    return lambda settings: timedelta(**{unit: float(getattr(settings, setting))})


QUARTER_HOUR = timedelta(minutes=15)

# Each job: its name, the workflow it starts, its summary, its interval, how long a run may take.
REAPER = ScheduledJob(
    "reaper",
    "ReaperWorkflow",
    "Remove what closed runs left: Worker containers, turns, old workspaces; trim the streams",
    _every("reaper_interval_minutes", "minutes"),
    timedelta(hours=1),
)
SERVER_HEALTH = ScheduledJob(
    "server-health",
    "ServerHealthWorkflow",
    "Check each server over SSH: reachable, load, memory, disk, container engine",
    _every("server_health_interval_s"),
    QUARTER_HOUR,
)
APP_HEALTH = ScheduledJob(
    "app-health",
    "AppHealthWorkflow",
    "Check each serving app from here: its health URL or liveness, its TLS certificate",
    _every("app_health_interval_s"),
    QUARTER_HOUR,
)
REPO_SYNC = ScheduledJob(
    "repo-sync",
    "RepoSyncWorkflow",
    "Read open pull requests' states from the forge; deploy a merge where asked",
    _every("repo_sync_interval_s"),
    QUARTER_HOUR,
)
USAGE = ScheduledJob(
    "usage",
    "UsageWorkflow",
    "Tell the chats of projects whose model calls today cost past their daily budget",
    _every("usage_interval_s"),
    QUARTER_HOUR,
)

JOBS: tuple[ScheduledJob, ...] = (REAPER, SERVER_HEALTH, APP_HEALTH, REPO_SYNC, USAGE)


def job_named(name: str) -> ScheduledJob | None:
    return next((job for job in JOBS if job.name == name), None)
