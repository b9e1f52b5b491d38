"""The tables (SQLModel, ``table=True``). What the API reads and writes is in api/schemas.py.

Identifiers are 32-character hex strings, so they can name workflows before anything runs.
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    String,
    UniqueConstraint,
    func,
    text,
)
from sqlmodel import Field, SQLModel

from core.contracts.base import utcnow
from core.enums import (
    DeploymentStatus,
    EngineeringAction,
    EventType,
    IncidentKind,
    ProjectStatus,
    ProjectTemplate,
    PullRequestState,
    ServerStatus,
    TaskStatus,
    TaskType,
)
from core.ids import new_id


class SecretKind(StrEnum):
    env = "env"  # a project's environment variable
    ssh_key = "ssh_key"  # a server's private key (no project)


class User(SQLModel, table=True):
    __tablename__ = "users"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    name: str = Field(max_length=200)
    telegram_id: int | None = Field(default=None, unique=True, index=True, sa_type=BigInteger)
    is_admin: bool = False
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    user_id: str = Field(foreign_key="users.id", index=True, max_length=32)
    name: str = Field(max_length=200)
    prefix: str = Field(unique=True, index=True, max_length=32)
    key_hash: str = Field(max_length=128)
    # Set on a PO session's key: it acts for its user in that chat only (migration 0005).
    chat_id: int | None = Field(default=None, index=True, sa_type=BigInteger)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    last_used_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    revoked_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class Project(SQLModel, table=True):
    __tablename__ = "projects"
    # Names become repository names, which forges compare without case (migration 0002).
    __table_args__ = (Index("uq_projects_lower_name", func.lower(text("name")), unique=True),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    name: str = Field(index=True, max_length=100)
    description: str = ""
    modules: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # None: the deployment's default template (ORCHESTRATOR_TEMPLATE_DIR, else ``service``).
    template: ProjectTemplate | None = Field(default=None, sa_type=String(20))
    status: ProjectStatus = Field(default=ProjectStatus.new, sa_type=String(20))
    repo_full_name: str | None = Field(default=None, max_length=200)
    repository: str | None = Field(default=None, description="Clone URL of the repository")
    owner_id: str = Field(foreign_key="users.id", index=True, max_length=32)
    # The chat whose PO session created it (its key was that chat's): told of its incidents
    # (migration 0012). None: made with a full key; the admins are told.
    chat_id: int | None = Field(default=None, sa_type=BigInteger)
    # A merge of a pull request into its default branch starts a deploy of that branch
    # (the repo-sync job, `pr merge`; migration 0013).
    auto_deploy: bool = False
    # USD of model calls a UTC day may cost before its chat is told (db/usage.py, migration
    # 0014); None: no budget.
    daily_budget_usd: float | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class Task(SQLModel, table=True):
    __tablename__ = "tasks"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    type: TaskType = Field(index=True, sa_type=String(20))
    project_id: str = Field(foreign_key="projects.id", index=True, max_length=32)
    user_id: str = Field(foreign_key="users.id", index=True, max_length=32)
    status: TaskStatus = Field(default=TaskStatus.queued, index=True, sa_type=String(20))
    action: str = Field(default=EngineeringAction.feature, max_length=20)
    spec: str = ""
    details: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column("metadata", JSON, nullable=False)
    )
    result: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    error: str | None = None
    workflow_id: str = Field(index=True, max_length=200)
    correlation_id: str = Field(default_factory=new_id, max_length=64)
    callback_stream: str | None = Field(default=None, max_length=200)
    retry_of: str | None = Field(default=None, max_length=32)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    started_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    completed_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class TaskEventRow(SQLModel, table=True):
    __tablename__ = "task_events"
    __table_args__ = (UniqueConstraint("task_id", "seq"),)
    id: int | None = Field(default=None, primary_key=True)
    task_id: str = Field(foreign_key="tasks.id", index=True, max_length=32)
    seq: int
    type: EventType = Field(sa_type=String(30))
    status: TaskStatus = Field(sa_type=String(20))
    stage: str | None = Field(default=None, max_length=50)
    message: str = ""
    progress: float | None = None
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class OutboxMessage(SQLModel, table=True):
    """A stream entry written in the same transaction as the change it announces.

    A relay XADDs it and marks it published, so a crash between the commit and the XADD delays
    the message but never loses it. Consumers deduplicate (deterministic workflow IDs, event seq).
    """

    __tablename__ = "outbox"
    id: int | None = Field(default=None, primary_key=True)
    stream: str = Field(max_length=200)
    fields: dict[str, str] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    published_at: datetime | None = Field(
        default=None,
        sa_type=DateTime(timezone=True),  # type: ignore[call-overload]
        index=True,
    )


class ModelUsage(SQLModel, table=True):
    """One model API call a task's agent made through the gateway (or that it refused).

    No foreign key to tasks: the gateway writes this ledger from the Temporal worker while the
    task runs, and a row must never be lost to the order in which rows land.
    """

    __tablename__ = "model_usage"
    id: int | None = Field(default=None, primary_key=True)
    task_id: str = Field(index=True, max_length=32)
    provider: str = Field(max_length=20)
    model: str = Field(default="", max_length=200)
    endpoint: str = Field(default="", max_length=100)
    status_code: int | None = None
    refused: bool = False
    error: str | None = Field(default=None, max_length=500)
    tokens_in: int = 0
    tokens_out: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class PullRequest(SQLModel, table=True):
    """A pull request a task opened on its project's forge (the local one or GitHub).

    One per (repository, branch): a retried activity finds the row it wrote before.
    """

    __tablename__ = "pull_requests"
    __table_args__ = (UniqueConstraint("repo_full_name", "branch"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    project_id: str = Field(foreign_key="projects.id", index=True, max_length=32)
    task_id: str | None = Field(default=None, index=True, max_length=32)
    repo_full_name: str = Field(max_length=200)
    number: int
    branch: str = Field(max_length=250)
    base: str = Field(max_length=250)
    title: str = Field(max_length=500)
    body: str = ""
    url: str = Field(max_length=1000)
    head_sha: str | None = Field(default=None, max_length=64)
    diff_stat: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    test_outcome: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    state: PullRequestState = Field(default=PullRequestState.open, sa_type=String(20))
    # Once merged (migration 0013): the merge's commit, when, and the deploy it started (a
    # project with auto_deploy). Recorded in the one transaction that moves the state to merged
    # (db/pull_requests.py: record_state), so a merge starts one deploy whoever sees it.
    merge_commit_sha: str | None = Field(default=None, max_length=64)
    merged_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    deploy_task_id: str | None = Field(default=None, max_length=32)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class Server(SQLModel, table=True):
    """A machine deploys go to, reached over SSH with a private key stored as a secret."""

    __tablename__ = "servers"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    handle: str = Field(unique=True, index=True, max_length=63)
    host: str = Field(max_length=255)
    port: int = 22
    ssh_user: str = Field(max_length=64)
    key_ref: str = Field(max_length=64, description="secret:<id> of the SSH private key")
    status: ServerStatus = Field(default=ServerStatus.new, index=True, sa_type=String(20))
    # {"memory_mb": int, "cpus": int, "disk_free_gb": float}, read from the server itself.
    capacity: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    # The host key learned on first contact (known_hosts lines); checked on every later run.
    known_hosts: str | None = None
    # Where apps live on the server; None: ~/orchestrator-apps of the SSH user.
    apps_root: str | None = Field(default=None, max_length=500)
    # Apps get https://<project>.<base_domain>; None: no names, each app on its port.
    base_domain: str | None = Field(default=None, max_length=253)
    # core.contracts.deploy.EdgeSettings as JSON; None: its defaults.
    edge: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    # The edge's internal CA (public): a client of a server without ACME verifies names with it.
    edge_ca: str | None = None
    # core.contracts.deploy.DatabaseSettings as JSON (the PostgreSQL its apps' databases are
    # in); None: its defaults.
    database: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    last_error: str | None = None
    # What the last health check read (db.servers.ServerHealth as JSON): load, memory, disk,
    # the container engine (migration 0012).
    health: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    last_checked_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class Secret(SQLModel, table=True):
    """An encrypted value (``core.crypto.Vault``), addressed elsewhere as ``secret:<id>``.

    A project's secrets are unique by (project_id, name). Servers' keys have no project, and SQL
    counts NULLs as distinct in a unique constraint, so a partial index keeps their names
    (``server:<handle>``) unique too.
    """

    __tablename__ = "secrets"
    __table_args__ = (
        UniqueConstraint("project_id", "name"),
        Index(
            "uq_secrets_name_without_project",
            "name",
            unique=True,
            sqlite_where=text("project_id IS NULL"),
            postgresql_where=text("project_id IS NULL"),
        ),
    )
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    project_id: str | None = Field(
        default=None, foreign_key="projects.id", index=True, max_length=32
    )
    name: str = Field(max_length=200)
    kind: SecretKind = Field(default=SecretKind.env, sa_type=String(20))
    ciphertext: str
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class Deployment(SQLModel, table=True):
    """One release of a project on a server and port."""

    __tablename__ = "deployments"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    project_id: str = Field(foreign_key="projects.id", index=True, max_length=32)
    task_id: str | None = Field(default=None, index=True, max_length=32)
    # NULL once its server is removed: the record outlives the machine.
    server_id: str | None = Field(
        default=None, foreign_key="servers.id", ondelete="SET NULL", index=True, max_length=32
    )
    port: int
    release: str = Field(max_length=100)
    commit_sha: str | None = Field(default=None, max_length=64)
    status: DeploymentStatus = Field(
        default=DeploymentStatus.pending, index=True, sa_type=String(20)
    )
    url: str | None = Field(default=None, max_length=1000)
    error: str | None = None
    # How the release runs (the EnvAnalyzer's spec), its server's handle, the playbook's timing.
    details: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class Domain(SQLModel, table=True):
    """A custom name a project's app is served at (besides <project>.<its server's base domain>);
    one project per name."""

    __tablename__ = "domains"
    name: str = Field(primary_key=True, max_length=253)
    project_id: str = Field(foreign_key="projects.id", index=True, max_length=32)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class PortAllocation(SQLModel, table=True):
    """A port of a server taken by a project: the primary key makes concurrent takers collide
    in the database, so exactly one of them gets it."""

    __tablename__ = "port_allocations"
    # One port per project on a server (migration 0007): its releases share it.
    __table_args__ = (
        Index("uq_port_allocations_server_project", "server_id", "project_id", unique=True),
    )
    server_id: str = Field(foreign_key="servers.id", primary_key=True, max_length=32)
    port: int = Field(primary_key=True)
    project_id: str = Field(foreign_key="projects.id", index=True, max_length=32)
    deployment_id: str | None = Field(
        default=None, foreign_key="deployments.id", index=True, max_length=32
    )
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class Incident(SQLModel, table=True):
    """Something a scheduled check found wrong: opened after N failed checks in a row, resolved
    when the check passes again (migration 0012).

    At most one open incident per (kind, subject): a partial unique index makes a second opener
    collide in the database.
    """

    __tablename__ = "incidents"
    __table_args__ = (
        Index(
            "uq_incidents_open",
            "kind",
            "subject",
            unique=True,
            sqlite_where=text("resolved_at IS NULL"),
            postgresql_where=text("resolved_at IS NULL"),
        ),
    )
    id: int | None = Field(default=None, primary_key=True)
    kind: IncidentKind = Field(index=True, sa_type=String(30))
    # What it is about, e.g. "server:prod-1" or "app:notes"; with the ids a filter needs.
    subject: str = Field(max_length=200)
    server_id: str | None = Field(default=None, index=True, max_length=32)
    project_id: str | None = Field(default=None, index=True, max_length=32)
    title: str = Field(max_length=500)
    # What the failing checks said: their error, how many failed, an app's last log lines.
    evidence: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    opened_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    resolved_at: datetime | None = Field(default=None, index=True, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    acked_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    acked_by: str | None = Field(default=None, max_length=200)


class CheckStreak(SQLModel, table=True):
    """How many checks of (kind, subject) failed in a row; a passing check resets it. The tick
    that counted last is kept, so a retried activity of the same tick counts once."""

    __tablename__ = "check_streaks"
    kind: IncidentKind = Field(primary_key=True, sa_type=String(30))
    subject: str = Field(primary_key=True, max_length=200)
    failures: int = 0
    last_tick: str | None = Field(default=None, max_length=250)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class BudgetNotice(SQLModel, table=True):
    """A project's daily budget found crossed on a UTC day, and told (migration 0014): one row
    per project and day, so a chat hears of a day once however many runs see it (a second
    writer of the same day collides on the primary key)."""

    __tablename__ = "budget_notices"
    project_id: str = Field(foreign_key="projects.id", primary_key=True, max_length=32)
    day: date = Field(primary_key=True)
    budget_usd: float
    cost_usd: float = Field(description="What the day had cost when it was found crossed")
    told_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
