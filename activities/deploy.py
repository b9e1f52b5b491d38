"""The deploy workflow's own activities: plan a deploy task, the secrets it lacks, how its Ansible
run is, and what stop, undeploy and a failure record. The project's one deploy at a time is a turn
(activities/turns.py); the DevOps graph's nodes are in activities/devops.py."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from pydantic import BaseModel, Field
from redis.asyncio import Redis
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from activities.health import IncidentDesk
from core.contracts.base import as_utc
from core.contracts.deploy import AnsibleDeployResult, DeployOptions
from core.enums import DeployAction, DeploymentStatus, IncidentKind
from core.ids import ansible_deploy_workflow_id
from core.logging import get_logger
from core.settings import Settings
from core.temporal import failure_reason, workflow_status
from db import deployments, projects, secrets
from db import tasks as tasks_db
from db.engine import Database
from db.errors import NotFound
from db.incidents import Check
from db.tables import Task
from db.tasks import TaskService

log = get_logger("activities.deploy")

DEFAULT_REF = "main"


class DeployPlan(BaseModel):
    """What a deploy task does, read from the task, its project and its deployments."""

    task_id: str
    project_id: str
    project_name: str
    action: DeployAction
    repo_full_name: str | None = None
    repository: str | None = None
    modules: list[str] = Field(default_factory=list)
    ref: str = DEFAULT_REF
    release: str = Field(description="The release to serve (a rollback: the earlier one)")
    commit_sha: str | None = Field(default=None, description="A rollback: the release's commit")
    replaces: str | None = Field(default=None, description="A rollback: the release it replaces")
    drop_data: bool = Field(default=False, description="An undeploy: its database goes too")


class LockInput(BaseModel):
    project_id: str
    task_id: str
    workflow_id: str


class FailureInput(BaseModel):
    task_id: str
    error: str
    cancelled: bool = Field(default=False, description="A person cancelled it: no incident")


class SecretsInput(BaseModel):
    project_id: str
    names: list[str]


class StoppedInput(BaseModel):
    project_id: str
    undeploy: bool


class AnsibleOutcome(BaseModel):
    """How a deploy's Ansible run is, asked of Temporal when its signal is long in coming."""

    started: bool = Field(description="A bridge started the run")
    result: AnsibleDeployResult | None = Field(default=None, description="Once it ended")


class AppOnServer(BaseModel):
    """Where a project's app runs: what stop and undeploy go to."""

    server_handle: str
    app_name: str


def release_id(task: Task) -> str:
    """A sortable release id, the same for every attempt of the task: its creation time, then
    the task's id."""
    return f"{as_utc(task.created_at).astimezone(UTC):%Y%m%d%H%M%S}-{task.id[:8]}"


async def ansible_outcome_of(client: Client, request_id: str) -> AnsibleOutcome:
    """How the Ansible run of ``request_id`` is: not started, running, or ended with its result,
    also when it ended without a word (terminated, timed out), which failed."""
    workflow_id = ansible_deploy_workflow_id(request_id)
    status = await workflow_status(client, workflow_id)
    if status is None:
        return AnsibleOutcome(started=False)
    if status == WorkflowExecutionStatus.RUNNING:
        return AnsibleOutcome(started=True)
    handle = client.get_workflow_handle(workflow_id, result_type=AnsibleDeployResult)
    try:
        return AnsibleOutcome(started=True, result=await handle.result())
    except WorkflowFailureError as exc:
        failed = AnsibleDeployResult(
            request_id=request_id, success=False, error=failure_reason(exc)
        )
        return AnsibleOutcome(started=True, result=failed)


def app_name(project_name: str) -> str:
    """The app's directory on the server (project names are already safe path parts)."""
    return project_name


async def deploy_outcome(
    settings: Settings, db: Database, redis: Redis, task_id: str, error: str | None
) -> None:
    """A deploy's outcome as its project's ``deploy_failed`` check: a failure (``error``) opens
    the incident at once, a deploy that went live resolves it. Once per task."""
    desk = IncidentDesk(settings, db, redis)
    async with db.session() as session:
        task = await tasks_db.get_task(session, task_id)
        project = await projects.get_project_by_id(session, task.project_id)
        check = Check(
            kind=IncidentKind.deploy_failed,
            subject=f"app:{project.name}",
            ok=error is None,
            title=f"the deploy of {project.name} failed",
            evidence={"error": error, "task_id": task_id},
            project_id=project.id,
        )
        recorded = await desk.record(
            session, [check], task_id, await desk.chats_of(project), threshold=1
        )
    await desk.publish(recorded)


def _fail(message: str, kind: str = "DeployFailed") -> ApplicationError:
    return ApplicationError(message, type=kind, non_retryable=True)


class DeployActivities:
    """The deploy workflow's own activities."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        redis: Redis,
        client: Client,
        tasks: TaskService | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.redis = redis
        self.client = client
        self.tasks = tasks or TaskService(db, redis)

    @activity.defn
    async def plan_deploy(self, task_id: str) -> DeployPlan:
        async with self.db.session() as session:
            try:
                task = await tasks_db.get_task(session, task_id)
            except NotFound as exc:
                raise _fail(f"task {task_id} does not exist", "TaskNotFound") from exc
            try:
                project = await projects.get_project_by_id(session, task.project_id)
            except NotFound as exc:
                raise _fail(f"project {task.project_id} does not exist", "ProjectNotFound") from exc
            options = DeployOptions.model_validate((task.details or {}).get("deploy") or {})
            plan = DeployPlan(
                task_id=task.id,
                project_id=project.id,
                project_name=project.name,
                action=options.action,
                repo_full_name=project.repo_full_name,
                repository=project.repository,
                modules=list(project.modules),
                ref=options.ref or DEFAULT_REF,
                release=release_id(task),
                drop_data=options.drop_data,
            )
            if options.action is DeployAction.rollback:
                plan = await self._rollback_plan(session, plan)
        needs_code = plan.action in (DeployAction.create, DeployAction.redeploy)
        if needs_code and not plan.repository:
            raise _fail(
                f"project {project.name} has no repository yet: an engineering task makes it "
                "(`orchestrator engineering start`)"
            )
        return plan

    async def _rollback_plan(self, session: Any, plan: DeployPlan) -> DeployPlan:
        current = await deployments.serving(session, plan.project_id)
        if current is None:
            raise _fail(
                f"project {plan.project_name} has no serving release to roll back from "
                "(`orchestrator deploy start` deploys one)"
            )
        previous = await deployments.previous_release(session, current)
        if previous is None or not previous.commit_sha:
            raise _fail(
                f"release {current.release} of {plan.project_name} is its first on its server: "
                "there is no earlier release to roll back to"
            )
        return plan.model_copy(
            update={
                "release": previous.release,
                "commit_sha": previous.commit_sha,
                "ref": previous.commit_sha,
                "replaces": current.release,
            }
        )

    # Runs from before workflows/toolkit.py TURNS_PATCH waited for the project's lock in these
    # activities, polling Redis. New runs wait for their turn in workflow code; an old run still
    # in flight goes on at once.
    @activity.defn
    async def acquire_deploy_lock(self, request: LockInput) -> float:
        log.info("old deploy run let through", task_id=request.task_id)
        return 0.0

    @activity.defn
    async def release_deploy_lock(self, request: LockInput) -> None:
        return None

    @activity.defn
    async def ansible_outcome(self, request_id: str) -> AnsibleOutcome:
        return await ansible_outcome_of(self.client, request_id)

    @activity.defn
    async def missing_secrets(self, request: SecretsInput) -> list[str]:
        """Which of the secrets the app requires the project has not stored."""
        async with self.db.session() as session:
            return await secrets.missing_secrets(session, request.project_id, request.names)

    @activity.defn
    async def record_deploy_failure(self, failure: FailureInput) -> None:
        """The task's release FAILED (the serving one, if any, serves on); a deploy that failed
        (not one a person cancelled) opens the project's ``deploy_failed`` incident, told to
        its chat, which its next deploy that goes live resolves."""
        async with self.db.session() as session:
            deployment = await deployments.of_task(session, failure.task_id)
            if deployment is not None and deployment.status != DeploymentStatus.running:
                await deployments.set_status(
                    session, deployment.id, DeploymentStatus.failed, error=failure.error
                )
        if not failure.cancelled:
            await deploy_outcome(self.settings, self.db, self.redis, failure.task_id, failure.error)

    @activity.defn
    async def apps_of_project(self, project_id: str) -> list[AppOnServer]:
        """Every server the project holds a port on (stop and undeploy go to each)."""
        async with self.db.session() as session:
            try:
                project = await projects.get_project_by_id(session, project_id)
            except NotFound as exc:
                raise _fail(f"project {project_id} does not exist", "ProjectNotFound") from exc
            servers = await deployments.servers_of_project(session, project_id)
        return [AppOnServer(server_handle=s.handle, app_name=project.name) for s in servers]

    @activity.defn
    async def record_stopped(self, request: StoppedInput) -> int:
        async with self.db.session() as session:
            return await deployments.stopped(
                session, request.project_id, release_ports=request.undeploy
            )
