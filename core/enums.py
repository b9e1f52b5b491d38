"""The enumerations shared by queues, workflows, the database and the clients, without pydantic:
the choices a client names on its command line, the states of tasks, projects, pull requests,
servers and releases, and the event types.

They live here, not in ``core.contracts``, because importing any module of that package imports
every queue's pydantic models (its ``__init__``), which the CLI must not pay for just to parse its
arguments. The contract modules import them from here and name them as before
(``core.contracts.engineering.EngineeringAction``, ``core.contracts.events.TaskStatus``, ...):
one definition each.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, get_args


class EngineeringAction(StrEnum):
    create = "create"
    feature = "feature"
    fix = "fix"


AgentName = Literal["claude", "codex", "droid", "scripted"]
AGENTS: frozenset[str] = frozenset(get_args(AgentName))


class DeployAction(StrEnum):
    create = "create"  # the first release of a project
    redeploy = "redeploy"  # a new release (the same port, the same URL)
    rollback = "rollback"  # the release before the serving one serves again
    stop = "stop"  # stop serving; the port and the releases stay
    undeploy = "undeploy"  # stop, remove the releases from the server, free the port


class TaskStatus(StrEnum):
    queued = "QUEUED"
    running = "RUNNING"
    waiting_human = "WAITING_HUMAN"
    completed = "COMPLETED"
    failed = "FAILED"
    cancelled = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({TaskStatus.completed, TaskStatus.failed, TaskStatus.cancelled})


class EventType(StrEnum):
    started = "started"
    progress = "progress"
    stage_started = "stage_started"
    stage_completed = "stage_completed"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL_EVENTS = frozenset({EventType.completed, EventType.failed, EventType.cancelled})


class TaskType(StrEnum):
    engineering = "engineering"
    deploy = "deploy"


class ProjectTemplate(StrEnum):
    """What a project's repository is rendered from (core/paths.py: ``TEMPLATE_DIRS``)."""

    service = "service"  # a standard-library HTTP service: no dependency, deploys as a process
    app = "app"  # FastAPI on PostgreSQL and/or an aiogram bot, with a uv lockfile and compose


class ProjectStatus(StrEnum):
    new = "NEW"
    scaffolding = "SCAFFOLDING"
    ready = "READY"
    failed = "FAILED"


class PullRequestState(StrEnum):
    open = "open"
    merged = "merged"
    closed = "closed"


class ServerStatus(StrEnum):
    new = "NEW"
    provisioning = "PROVISIONING"
    ready = "READY"
    failed = "FAILED"  # provisioning failed
    # Set by the server-health Schedule (workflows/server_health.py) on a provisioned server.
    degraded = "DEGRADED"  # reachable, but short of disk or memory, or without its container engine
    unreachable = "UNREACHABLE"  # SSH did not answer


# The servers the server-health Schedule checks: provisioned ones, whatever their last check said.
CHECKED_SERVER_STATUSES = (ServerStatus.ready, ServerStatus.degraded, ServerStatus.unreachable)


class IncidentKind(StrEnum):
    server_unreachable = "server_unreachable"
    disk_low = "disk_low"
    app_down = "app_down"
    certificate_expiring = "certificate_expiring"
    deploy_failed = "deploy_failed"


class DeploymentStatus(StrEnum):
    pending = "PENDING"
    deploying = "DEPLOYING"
    running = "RUNNING"  # the live release of its project
    failed = "FAILED"
    superseded = "SUPERSEDED"  # a newer release (or a rollback) took its place
    stopped = "STOPPED"
