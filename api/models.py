"""Tables (``table=True``) and the separate models the API reads and writes.

Identifiers are 32-character hex strings, so they can name workflows before anything runs.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator, model_validator
from pydantic import Field as PydanticField
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

from core.contracts.deploy import DeployOptions
from core.contracts.engineering import EngineeringAction, EngineeringOptions
from core.contracts.events import EventType, TaskStatus
from core.ids import new_id


def utcnow() -> datetime:
    return datetime.now(UTC)


class TaskType(StrEnum):
    engineering = "engineering"
    deploy = "deploy"


class PullRequestState(StrEnum):
    open = "open"
    merged = "merged"
    closed = "closed"


class ServerStatus(StrEnum):
    new = "NEW"
    provisioning = "PROVISIONING"
    ready = "READY"
    failed = "FAILED"


class SecretKind(StrEnum):
    env = "env"  # a project's environment variable
    ssh_key = "ssh_key"  # a server's private key (no project)


class DeploymentStatus(StrEnum):
    pending = "PENDING"
    deploying = "DEPLOYING"
    running = "RUNNING"  # the live release of its project
    failed = "FAILED"
    superseded = "SUPERSEDED"  # a newer release (or a rollback) took its place
    stopped = "STOPPED"


class ProjectStatus(StrEnum):
    new = "NEW"
    scaffolding = "SCAFFOLDING"
    ready = "READY"
    failed = "FAILED"


# --- tables -------------------------------------------------------------------------------------


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
    status: ProjectStatus = Field(default=ProjectStatus.new, sa_type=String(20))
    repo_full_name: str | None = Field(default=None, max_length=200)
    repository: str | None = Field(default=None, description="Clone URL of the repository")
    owner_id: str = Field(foreign_key="users.id", index=True, max_length=32)
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
    last_error: str | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    last_checked_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class Secret(SQLModel, table=True):
    """An encrypted value (core/crypto.Vault), addressed elsewhere as ``secret:<id>``.

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


# --- what the API reads and writes --------------------------------------------------------------


class ReadModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    @field_validator("*", mode="after")
    @classmethod
    def _utc(cls, value: Any) -> Any:
        # SQLite hands timestamps back without their zone; they were written in UTC.
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = PydanticField(min_length=1, max_length=200)
    telegram_id: int | None = None
    is_admin: bool = False


class UserRead(ReadModel):
    id: str
    name: str
    telegram_id: int | None
    is_admin: bool
    created_at: datetime


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = PydanticField(min_length=1, max_length=200)
    user_id: str | None = PydanticField(
        default=None, description="Admins may create keys for others"
    )


class ApiKeyRead(ReadModel):
    id: str
    user_id: str
    name: str
    prefix: str
    chat_id: int | None = None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyRead):
    key: str = PydanticField(description="The key itself; shown once, stored only as a hash")


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = PydanticField(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = PydanticField(default="", max_length=10_000)
    modules: list[str] = PydanticField(default_factory=lambda: ["backend"])


class ProjectRead(ReadModel):
    id: str
    name: str
    description: str
    modules: list[str]
    status: ProjectStatus
    repo_full_name: str | None
    repository: str | None
    owner_id: str
    created_at: datetime
    updated_at: datetime


class TaskCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: TaskType = TaskType.engineering
    project_id: str = PydanticField(min_length=1, max_length=32)
    spec: str = PydanticField(
        default="", max_length=100_000, description="What to build (engineering tasks: required)"
    )
    action: EngineeringAction = EngineeringAction.feature
    callback_stream: str | None = PydanticField(default=None, max_length=200)
    engineering: EngineeringOptions | None = PydanticField(
        default=None, description="The agent and the limits of an engineering task"
    )
    deploy: DeployOptions | None = PydanticField(
        default=None, description="A deploy task's action and ref (default: create from main)"
    )

    @model_validator(mode="before")
    @classmethod
    def _deploy_action_in_its_place(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("type") == "deploy" and "action" in data:
            raise ValueError(
                "a deploy task's action goes in deploy.action (create, redeploy, rollback, stop, "
                "undeploy), not in action"
            )
        return data

    @model_validator(mode="after")
    def _fits_its_type(self) -> TaskCreate:
        if self.type is TaskType.engineering:
            if not self.spec.strip():
                raise ValueError("an engineering task needs a spec: what to build")
            if self.deploy is not None:
                raise ValueError("deploy options are for deploy tasks (type: deploy)")
        elif self.engineering is not None:
            raise ValueError("engineering options are for engineering tasks")
        return self


class TaskRead(ReadModel):
    id: str
    type: TaskType
    project_id: str
    user_id: str
    status: TaskStatus
    action: str
    spec: str
    details: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    workflow_id: str
    correlation_id: str
    callback_stream: str | None
    retry_of: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    completed_at: datetime | None


class TaskEventRead(ReadModel):
    task_id: str
    seq: int
    type: EventType
    status: TaskStatus
    stage: str | None
    message: str
    progress: float | None
    data: dict[str, Any]
    created_at: datetime


class PullRequestCreate(BaseModel):
    """What an activity records once the forge has opened the pull request."""

    model_config = ConfigDict(extra="forbid")
    project_id: str = PydanticField(min_length=1, max_length=32)
    task_id: str | None = PydanticField(default=None, max_length=32)
    repo_full_name: str = PydanticField(min_length=3, max_length=200)
    number: int = PydanticField(ge=1)
    branch: str = PydanticField(min_length=1, max_length=250)
    base: str = PydanticField(min_length=1, max_length=250)
    title: str = PydanticField(min_length=1, max_length=500)
    body: str = ""
    url: str = PydanticField(min_length=1, max_length=1000)
    head_sha: str | None = PydanticField(default=None, max_length=64)
    diff_stat: dict[str, Any] = PydanticField(default_factory=dict)
    test_outcome: dict[str, Any] | None = None
    state: PullRequestState = PullRequestState.open


class PullRequestRead(ReadModel):
    id: str
    project_id: str
    task_id: str | None
    repo_full_name: str
    number: int
    branch: str
    base: str
    title: str
    body: str
    url: str
    head_sha: str | None
    diff_stat: dict[str, Any]
    test_outcome: dict[str, Any] | None
    state: PullRequestState
    created_at: datetime


# Handles name servers in commands and workflow ids (provision-<handle>).
SERVER_HANDLE_PATTERN = r"^[a-z0-9][a-z0-9-]*$"


class ServerCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    handle: str = PydanticField(min_length=1, max_length=63, pattern=SERVER_HANDLE_PATTERN)
    host: str = PydanticField(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9.:_-]+$")
    port: int = PydanticField(default=22, ge=1, le=65535)
    ssh_user: str = PydanticField(
        min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$"
    )
    private_key: SecretStr = PydanticField(
        min_length=1,
        max_length=64_000,
        description="The SSH private key's text (OpenSSH or PEM, without a passphrase); stored "
        "encrypted and never shown again",
    )
    apps_root: str | None = PydanticField(
        default=None,
        max_length=500,
        description="Where apps live on the server (absolute or ~/...); default "
        "~/orchestrator-apps",
    )

    @field_validator("apps_root")
    @classmethod
    def _apps_root_is_a_path(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"(/|~/)[A-Za-z0-9._/-]*", value):
            raise ValueError(
                "apps_root must be an absolute path or one under ~/ (letters, digits, '.', '_', "
                "'-' and '/'), e.g. /srv/apps or ~/apps"
            )
        return value


class ServerRead(ReadModel):
    id: str
    handle: str
    host: str
    port: int
    ssh_user: str
    key_ref: str
    status: ServerStatus
    capacity: dict[str, Any] | None
    apps_root: str | None = None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    last_checked_at: datetime | None


class ServerCreated(ServerRead):
    request_id: str = PydanticField(
        description="request_id of the provisioner:queue message; its result lands on "
        "provisioner:result:<request_id>"
    )


class SecretWrite(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: SecretStr = PydanticField(min_length=1, max_length=64_000)


class SecretRead(ReadModel):
    """A secret's name and times: never its value, encrypted or not."""

    id: str
    project_id: str | None
    name: str
    kind: SecretKind
    created_at: datetime
    updated_at: datetime


class DeploymentRead(ReadModel):
    id: str
    project_id: str
    task_id: str | None
    server_id: str | None
    port: int
    release: str
    commit_sha: str | None = None
    status: DeploymentStatus
    url: str | None
    error: str | None
    details: dict[str, Any] | None = None
    created_at: datetime
    updated_at: datetime


class PortAllocationRead(ReadModel):
    server_id: str
    port: int
    project_id: str
    deployment_id: str | None
    created_at: datetime
