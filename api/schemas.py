"""What the API reads and writes: request bodies (``...Create``, ``...Write``) and responses
(``...Read``), apart from the tables they are stored in (db/tables.py)."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    SecretStr,
    computed_field,
    field_validator,
    model_validator,
)
from pydantic import Field as PydanticField

from core.contracts.base import JsonInput, ReadModel
from core.contracts.chat import TelegramId
from core.contracts.deploy import DatabaseSettings, DeployOptions, EdgeSettings
from core.contracts.engineering import EngineeringOptions, PullRequestCreate, PullRequestRead
from core.enums import (
    DeploymentStatus,
    EngineeringAction,
    EventType,
    IncidentKind,
    ProjectStatus,
    ProjectTemplate,
    ServerStatus,
    TaskStatus,
    TaskType,
)
from db.domains import DOMAIN_INPUT
from db.tables import SecretKind
from db.tasks import NewTask

__all__ = ["PullRequestCreate", "PullRequestRead"]  # records that activities write, shown here


class RequestBody(JsonInput):
    """A JSON body a route takes, read as its schema says (``JsonInput``); unknown fields are
    refused."""

    model_config = ConfigDict(extra="forbid")


class UserCreate(RequestBody):
    name: str = PydanticField(min_length=1, max_length=200)
    telegram_id: TelegramId | None = None
    is_admin: bool = False


class UserRead(ReadModel):
    id: str
    name: str
    telegram_id: int | None
    is_admin: bool
    created_at: datetime


class ApiKeyCreate(RequestBody):
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


class ProjectCreate(RequestBody):
    name: str = PydanticField(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = PydanticField(default="", max_length=10_000)
    modules: list[str] = PydanticField(default_factory=lambda: ["backend"])
    template: ProjectTemplate | None = PydanticField(
        default=None,
        strict=False,  # JSON gives the enum's value
        description="What the repository is rendered from: `app` (FastAPI on PostgreSQL and/or "
        "an aiogram bot, uv lockfile, Dockerfile and compose) or `service` (a dependency-free "
        "HTTP service); none: the deployment's default",
    )


class ProjectUpdate(RequestBody):
    """What ``PATCH /projects/{id}`` changes; a field left out stays as it is."""

    auto_deploy: bool | None = PydanticField(
        default=None,
        description="Deploy the default branch each time a pull request merges into it (once "
        "per merge commit)",
    )
    daily_budget_usd: float | None = PydanticField(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="USD a UTC day of the project's model calls may cost before its chat is "
        "told (once that day; nothing is stopped); null: no budget",
    )


class ProjectRead(ReadModel):
    id: str
    name: str
    description: str
    modules: list[str]
    template: ProjectTemplate | None
    status: ProjectStatus
    repo_full_name: str | None
    repository: str | None
    owner_id: str
    auto_deploy: bool = PydanticField(description="A merge into main deploys it")
    daily_budget_usd: float | None = PydanticField(
        default=None, description="USD its model calls may cost a UTC day before its chat is told"
    )
    created_at: datetime
    updated_at: datetime


# What TaskCreate's validators require of each type of task, in the schema's words: a deploy
# task takes no ``action`` (its own is ``deploy.action``) and no engineering options; an
# engineering task (the default) needs a spec that is not blank and takes no deploy options.
_FITS_ITS_TYPE: dict[str, Any] = {
    "anyOf": [
        {
            "required": ["type"],
            "properties": {
                "type": {"const": TaskType.deploy.value},
                "engineering": {"type": "null"},
            },
            "not": {"required": ["action"]},
        },
        {
            "required": ["spec"],
            "properties": {
                "type": {"const": TaskType.engineering.value},
                "spec": {"pattern": r"\S"},
                "deploy": {"type": "null"},
            },
        },
    ]
}


class TaskCreate(RequestBody):
    model_config = ConfigDict(json_schema_extra=_FITS_ITS_TYPE)
    type: TaskType = PydanticField(default=TaskType.engineering, strict=False)
    project_id: str = PydanticField(min_length=1, max_length=32)
    spec: str = PydanticField(
        default="",
        max_length=100_000,
        description="What to build: required, not blank, for engineering tasks",
    )
    action: EngineeringAction = PydanticField(default=EngineeringAction.feature, strict=False)
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

    def new_task(
        self, *, project_name: str, user_id: str, correlation_id: str | None = None
    ) -> NewTask:
        """The task this request asks for: a deploy's action and options, or an engineering
        task's, in the task's ``details`` (the workflow's plan activity reads them there)."""
        details: dict[str, Any] = {}
        if self.type is TaskType.deploy:
            options = self.deploy or DeployOptions()
            # drop_data only when asked: the options read as the request gave them.
            unasked = set() if options.drop_data else {"drop_data"}
            details["deploy"] = options.model_dump(mode="json", exclude_none=True, exclude=unasked)
            action = options.action.value
            ref = f" ({options.ref})" if options.ref else ""
            spec = self.spec or f"{action.capitalize()} {project_name}{ref}"
        else:
            if self.engineering is not None:
                details["engineering"] = self.engineering.model_dump(mode="json", exclude_none=True)
            action, spec = self.action.value, self.spec
        return NewTask(
            type=self.type,
            project_id=self.project_id,
            user_id=user_id,
            spec=spec,
            action=action,
            details=details,
            callback_stream=self.callback_stream,
            correlation_id=correlation_id,
        )


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


# Handles name servers in commands and workflow ids (provision-<handle>).
SERVER_HANDLE_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
APPS_ROOT_PATTERN = r"^(/|~/)[A-Za-z0-9._/-]*$"
# DNS labels (letters, digits, inner hyphens) joined by dots: example.com, apps.internal.
DNS_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
BASE_DOMAIN_PATTERN = rf"^{DNS_LABEL}(\.{DNS_LABEL})*$"


class ServerCreate(RequestBody):
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
        # Checked by the validator below, which says what is wrong in words.
        json_schema_extra={"pattern": APPS_ROOT_PATTERN},
    )
    base_domain: str | None = PydanticField(
        default=None,
        max_length=200,
        pattern=BASE_DOMAIN_PATTERN,
        description="Apps get https://<project>.<base_domain> (a wildcard DNS record pointing "
        "at the server); none: each app is reached on its port",
    )
    edge: EdgeSettings | None = PydanticField(
        default=None, description="The edge in front of its apps; default ports 80/443, ACME"
    )
    database: DatabaseSettings | None = PydanticField(
        default=None,
        description="The PostgreSQL its apps' databases are in (run by the deploys); default "
        "port 5432",
    )

    @field_validator("apps_root")
    @classmethod
    def _apps_root_is_a_path(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(APPS_ROOT_PATTERN, value):
            raise ValueError(
                "apps_root must be an absolute path or one under ~/ (letters, digits, '.', '_', "
                "'-' and '/'), e.g. /srv/apps or ~/apps"
            )
        return value


class ServerUpdate(RequestBody):
    """What changes: a field left out stays; ``base_domain: null`` takes the names away."""

    base_domain: str | None = PydanticField(
        default=None, max_length=200, pattern=BASE_DOMAIN_PATTERN
    )
    edge: EdgeSettings | None = PydanticField(
        default=None, description="The whole edge; null: its defaults (ports 80/443, ACME)"
    )
    database: DatabaseSettings | None = PydanticField(
        default=None, description="Its PostgreSQL for apps; null: its defaults (port 5432)"
    )


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
    base_domain: str | None = None
    edge: dict[str, Any] | None = None
    database: dict[str, Any] | None = None
    edge_ca: str | None = PydanticField(
        default=None,
        description="The root certificate (PEM, public) of its edge's own CA: what clients "
        "verify its apps' names with when they have no public certificate",
    )
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    last_checked_at: datetime | None


class ServerCreated(ServerRead):
    request_id: str = PydanticField(
        description="request_id of the provisioner:queue message; its result lands on "
        "provisioner:result:<request_id>"
    )


class DomainCreate(RequestBody):
    name: str = PydanticField(
        min_length=3,
        max_length=253,
        description="A DNS name pointing at the project's server, e.g. shop.example.com",
        # domains.normalized() enforces it, with a 422 that says the rule in words.
        json_schema_extra={"pattern": DOMAIN_INPUT},
    )


class DomainRead(ReadModel):
    name: str
    project_id: str
    created_at: datetime


class SecretWrite(RequestBody):
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


class IncidentRead(ReadModel):
    """What a scheduled check found wrong: open until the check passes again."""

    id: int
    kind: IncidentKind
    subject: str = PydanticField(description='What it is about, e.g. "server:prod-1"')
    server_id: str | None
    project_id: str | None
    title: str
    evidence: dict[str, Any] = PydanticField(
        description="What the failing checks said: their error, how many failed, a log tail"
    )
    opened_at: datetime
    resolved_at: datetime | None
    acked_at: datetime | None = PydanticField(description="When someone took it on, the first")
    acked_by: str | None = PydanticField(description="The name of the user who acknowledged it")

    @computed_field(description="Not resolved yet")  # type: ignore[prop-decorator]
    @property
    def open(self) -> bool:
        return self.resolved_at is None


class SchedulePause(RequestBody):
    note: str | None = PydanticField(
        default=None,
        min_length=1,
        max_length=500,
        description="Why, shown with the Schedule; default: who paused it",
    )


class ScheduleRunRequest(RequestBody):
    wait_s: float = PydanticField(
        default=60.0,
        ge=0,
        le=300,
        description="Seconds to wait for the run to end (0: answer once it started)",
    )


class ScheduleRunRead(BaseModel):
    """A run a job's Schedule started now."""

    name: str
    workflow_id: str = PydanticField(description="The run: <schedule id>-<time>")
    status: Literal["running", "completed", "failed"] = PydanticField(
        description="running: still going when the wait ended"
    )
    result: dict[str, Any] | None = PydanticField(
        default=None, description="What the run returned (a check's report), once completed"
    )
    error: str | None = PydanticField(default=None, description="Why it failed")


class ScheduleRead(BaseModel):
    """A scheduled job (core/schedules.py) and its Temporal Schedule as Temporal describes it."""

    name: str = PydanticField(description="The job's name, e.g. reaper")
    schedule_id: str = PydanticField(description="The Temporal Schedule's id: <task queue>-<name>")
    workflow: str = PydanticField(description="The workflow type each run starts")
    summary: str
    exists: bool = PydanticField(
        description="Temporal has the Schedule; false until `orchestrator up` makes it"
    )
    interval_s: float = PydanticField(
        description="Seconds between runs: the Schedule's, else the configured interval"
    )
    paused: bool
    note: str | None = PydanticField(description="Why it was paused or unpaused, and by whom")
    last_run_at: datetime | None = PydanticField(description="When the latest run started")
    last_run_workflow_id: str | None
    next_run_at: datetime | None = PydanticField(description="None while paused")
    running: bool = PydanticField(description="A run it started is going now")


class UsageTotals(ReadModel):
    """What was used, summed from the gateway's ledger, the tasks' events and the deploy tasks
    (db/usage.py says how each is counted)."""

    calls: int = PydanticField(description="Model calls the gateway answered (or the model failed)")
    refused_calls: int = PydanticField(description="Calls the gateway refused: past their budget")
    tokens_in: int
    tokens_out: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: float = PydanticField(description="USD of the calls of priced models")
    unpriced_calls: int = PydanticField(description="Calls of models without a known price")
    worker_minutes: float = PydanticField(
        description="Minutes engineering tasks had their Worker: from their first stage in it "
        "until they waited for a person or ended"
    )
    deploys: int = PydanticField(description="Deploy tasks asked for")
    deploys_succeeded: int
    deploys_failed: int


class UsageDayRead(UsageTotals):
    day: date = PydanticField(description="A UTC day")
    over_budget: bool = PydanticField(description="Its cost is past the project's daily budget")


class ProjectUsageRead(UsageTotals):
    project_id: str
    project: str = PydanticField(description="The project's name")
    daily_budget_usd: float | None
    days: list[UsageDayRead] = PydanticField(description="The days it used something, in order")


class UsageRead(BaseModel):
    since: date = PydanticField(description="The first UTC day counted")
    until: date = PydanticField(description="The last UTC day counted: today")
    total: UsageTotals = PydanticField(description="All the projects below together")
    projects: list[ProjectUsageRead] = PydanticField(
        description="The projects that used something, by name"
    )
