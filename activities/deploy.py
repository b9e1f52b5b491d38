"""The DevOps department's activities: plan a deploy task, hold the project's deploy lock, and
the nodes of the DevOps graph (workflows/devops.py).

EnvAnalyzer (how the repository runs) -> SecretResolver (which secrets it lacks; the graph waits
in the workflow) -> Deployer (a READY server with room, a port of its own) -> Ansible (a message
on ``ansible:deploy:queue``; ``AnsibleDeployWorkflow`` runs the playbook) -> health check (HTTP,
from here, at the URL a person will use) -> the deployment record.

Every node records the task events of its stage itself and is safe to play again: the release
row is one per task, the port one per project and server, the Ansible run one per request id.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from datetime import UTC
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import httpx
from pydantic import BaseModel, Field
from redis.asyncio import Redis
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from activities.env_analyzer import AnalysisError, AppSpec, analyze
from activities.forge import git
from activities.heartbeat import heartbeating, run_blocking
from activities.slots import WorkerSlots
from activities.temporal import failure_reason, is_running, workflow_status
from api.db import Database
from api.models import DeploymentStatus, Project, Server, Task
from api.services import deployments, outbox, secrets
from api.services.tasks import TaskService
from core.contracts.deploy import (
    ANSIBLE_DEPLOY_QUEUE,
    AnsibleDeployMessage,
    AnsibleDeployResult,
    DeployAction,
    DeployOptions,
    project_secrets_ref,
)
from core.contracts.events import EventType
from core.ids import ansible_deploy_workflow_id
from core.logging import get_logger
from core.settings import Settings

log = get_logger("activities.deploy")

ANALYZE, SECRETS, PLACE, ANSIBLE, HEALTH, RECORD = (
    "analyze",
    "secrets",
    "deployer",
    "ansible",
    "health",
    "record",
)
DEFAULT_REF = "main"
LOCK_KEY = "orchestrator:deploy-lock:{project_id}"
# Attempts at a port before giving up when the server's ports are taken by other processes.
MAX_PORT_ATTEMPTS = 3
HEALTH_INTERVAL_S = 0.5


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


class LockInput(BaseModel):
    project_id: str
    task_id: str
    workflow_id: str


class FailureInput(BaseModel):
    task_id: str
    error: str


class SecretsInput(BaseModel):
    project_id: str
    names: list[str]


class StoppedInput(BaseModel):
    project_id: str
    undeploy: bool


class AppOnServer(BaseModel):
    """Where a project's app runs: what stop and undeploy go to."""

    server_handle: str
    app_name: str


class DevOpsState(TypedDict):
    """The DevOps graph's state: JSON only, it crosses activity boundaries as it is."""

    task_id: str
    project_id: str
    project_name: str
    repo_full_name: str
    repository: str
    modules: list[str]
    action: str
    ref: str
    release: str
    request_id: str  # the Ansible run's request id (attempts add a suffix)
    correlation_id: str | None
    commit_sha: NotRequired[str | None]  # set by analyze (a rollback: given)
    spec: NotRequired[dict[str, Any] | None]  # the EnvAnalyzer's AppSpec
    missing: NotRequired[list[str]]  # secrets the app needs and the project lacks
    placement: NotRequired[dict[str, Any] | None]  # server, port, deployment id
    avoid_ports: NotRequired[list[int]]  # ports found taken by other processes
    attempts: NotRequired[int]  # Ansible runs so far
    deployed: NotRequired[dict[str, Any] | None]  # the AnsibleDeployResult
    url: NotRequired[str | None]
    failure: NotRequired[str | None]


def release_id(task: Task) -> str:
    """A sortable release id, the same for every attempt of the task: its creation time, then
    the task's id."""
    created = task.created_at
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return f"{created.astimezone(UTC):%Y%m%d%H%M%S}-{task.id[:8]}"


def app_name(project_name: str) -> str:
    """The app's directory on the server (project names are already safe path parts)."""
    return project_name


def _fail(message: str, kind: str = "DeployFailed") -> ApplicationError:
    return ApplicationError(message, type=kind, non_retryable=True)


class DeployActivities:
    """The deploy workflow's own activities and the DevOps graph's nodes."""

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

    # --- the workflow's activities --------------------------------------------------------------

    @activity.defn
    async def plan_deploy(self, task_id: str) -> DeployPlan:
        async with self.db.session() as session:
            task = await session.get(Task, task_id)
            if task is None:
                raise _fail(f"task {task_id} does not exist", "TaskNotFound")
            project = await session.get(Project, task.project_id)
            if project is None:
                raise _fail(f"project {task.project_id} does not exist", "ProjectNotFound")
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

    @activity.defn
    async def acquire_deploy_lock(self, request: LockInput) -> float:
        """Wait until no other deploy of the project runs; returns the seconds waited.

        A lock whose workflow closed without freeing it (its worker was killed) is taken back.
        """
        lock = self._lock(request.project_id)

        async def on_wait(_: int) -> None:
            holders = [member.split(" ", 1)[-1] for member in await lock.holders()]
            running = f" (task {holders[0]})" if holders else ""
            await self.tasks.add_event(
                request.task_id,
                EventType.progress,
                f"Waiting for the project's other deploy to finish{running}: one deploy at a "
                "time per project",
                data={"waiting_for": holders},
            )

        return await lock.take(
            request.workflow_id,
            request.task_id,
            self._is_open,
            on_wait,
            lambda: activity.heartbeat("waiting for the project's deploy lock"),
        )

    @activity.defn
    async def release_deploy_lock(self, request: LockInput) -> None:
        await self._lock(request.project_id).release(request.workflow_id, request.task_id)

    def _lock(self, project_id: str) -> WorkerSlots:
        return WorkerSlots(self.redis, 1, key=LOCK_KEY.format(project_id=project_id))

    async def _is_open(self, workflow_id: str) -> bool:
        return await is_running(self.client, workflow_id)

    @activity.defn
    async def missing_secrets(self, request: SecretsInput) -> list[str]:
        """Which of the secrets the app requires the project has not stored."""
        async with self.db.session() as session:
            return await secrets.missing_secrets(session, request.project_id, request.names)

    @activity.defn
    async def record_deploy_failure(self, failure: FailureInput) -> None:
        """The task's release FAILED (the serving one, if any, serves on)."""
        async with self.db.session() as session:
            deployment = await deployments.of_task(session, failure.task_id)
            if deployment is not None and deployment.status != DeploymentStatus.running:
                await deployments.set_status(
                    session, deployment.id, DeploymentStatus.failed, error=failure.error
                )

    @activity.defn
    async def apps_of_project(self, project_id: str) -> list[AppOnServer]:
        """Every server the project holds a port on (stop and undeploy go to each)."""
        async with self.db.session() as session:
            project = await session.get(Project, project_id)
            if project is None:
                raise _fail(f"project {project_id} does not exist", "ProjectNotFound")
            apps = []
            for allocation in await deployments.project_allocations(session, project_id):
                server = await session.get(Server, allocation.server_id)
                if server is not None:
                    apps.append(AppOnServer(server_handle=server.handle, app_name=project.name))
        return apps

    @activity.defn
    async def record_stopped(self, request: StoppedInput) -> int:
        async with self.db.session() as session:
            return await deployments.stopped(
                session, request.project_id, release_ports=request.undeploy
            )

    # --- the DevOps graph's activity nodes ------------------------------------------------------

    async def analyze(self, state: DevOpsState) -> dict[str, Any]:
        """EnvAnalyzer: check out the ref and read how the app runs."""
        ref = state.get("commit_sha") or state["ref"]
        await self._event(state, EventType.stage_started, f"Reading how {ref} runs", ANALYZE)
        try:
            commit, spec = await run_blocking(self._analyze, state["repository"], ref)
        except AnalysisError as exc:
            return {"failure": f"cannot deploy {state['project_name']}: {exc}"}
        except ValueError as exc:  # an unknown ref
            return {"failure": str(exc)}
        problem = _undeployable(spec)
        if problem:
            return {"failure": f"cannot deploy {state['project_name']}: {problem}"}
        needs = ", ".join(spec.required_env) or "no secrets"
        await self._event(
            state,
            EventType.stage_completed,
            f"{spec.service} runs `{spec.command}` (from its {spec.source}); it needs {needs}",
            ANALYZE,
            data={"spec": spec.model_dump(mode="json"), "commit_sha": commit},
        )
        return {"commit_sha": commit, "spec": spec.model_dump(mode="json")}

    def _analyze(self, repository: str, ref: str) -> tuple[str, AppSpec]:
        checkout = Path(tempfile.mkdtemp(prefix="analyze-"))
        try:
            git("clone", "--quiet", "--no-checkout", repository, str(checkout))
            commit = resolve_commit(checkout, ref)
            git("checkout", "--quiet", "--detach", commit, cwd=checkout)
            return commit, analyze(checkout)
        finally:
            shutil.rmtree(checkout, ignore_errors=True)

    async def place(self, state: DevOpsState) -> dict[str, Any]:
        """Deployer: a READY server with room and a port the project holds there."""
        spec = AppSpec.model_validate(state.get("spec") or {})
        avoid = state.get("avoid_ports") or []
        async with self.db.session() as session:
            try:
                server, allocation = await deployments.choose_server(
                    session, state["project_id"], self.settings.deploy_app_memory_mb
                )
                if allocation is not None and allocation.port in avoid:
                    await deployments.free_port(session, server.id, allocation.port)
                    allocation = None
                if allocation is None:
                    allocation = await deployments.allocate_port(
                        session,
                        server,
                        state["project_id"],
                        self.settings.deploy_port_range,
                        avoid,
                    )
            except deployments.NoRoom as exc:
                return {"failure": str(exc)}
            deployment = await deployments.add_release(
                session,
                project_id=state["project_id"],
                task_id=state["task_id"],
                server=server,
                port=allocation.port,
                release=state["release"],
                commit_sha=state.get("commit_sha"),
                details={"spec": spec.model_dump(mode="json"), "action": state["action"]},
            )
            placement = {
                "deployment_id": deployment.id,
                "server": server.handle,
                "server_ip": server.host,
                "port": allocation.port,
            }
        await self._event(
            state,
            EventType.stage_completed,
            f"Release {state['release']} goes to {server.handle} ({server.host}), port "
            f"{allocation.port}",
            PLACE,
            data=placement,
        )
        return {"placement": placement}

    async def release(self, state: DevOpsState) -> dict[str, Any]:
        """Ansible: put the release on ``ansible:deploy:queue`` and wait for its run's result."""
        placement = state.get("placement") or {}
        spec = AppSpec.model_validate(state.get("spec") or {})
        attempt = (state.get("attempts") or 0) + 1
        request_id = state["request_id"] + (f"-{attempt}" if attempt > 1 else "")
        message = AnsibleDeployMessage(
            request_id=request_id,
            correlation_id=state.get("correlation_id") or request_id,
            project_id=state["project_id"],
            project_name=state["project_name"],
            repo_full_name=state["repo_full_name"],
            repository=state["repository"],
            server_ip=placement["server_ip"],
            server_handle=placement["server"],
            port=placement["port"],
            modules=state["modules"],
            github_token_ref=self.settings.github_token_ref,
            secrets_ref=project_secrets_ref(state["project_id"]),
            commit_sha=state.get("commit_sha"),
            release=state["release"],
            start_command=spec.command,
            port_env=spec.port_env,
            health_path=spec.health_path,
        )
        async with self.db.session() as session:
            await deployments.set_status(
                session, placement["deployment_id"], DeploymentStatus.deploying
            )
        await self._event(
            state,
            EventType.stage_started,
            f"Ansible deploys release {state['release']} to {placement['server']}",
            ANSIBLE,
            data={"request_id": request_id, "workflow_id": ansible_deploy_workflow_id(request_id)},
        )
        result = await self._run_ansible(message)
        update: dict[str, Any] = {"attempts": attempt, "deployed": result.model_dump(mode="json")}
        if result.success:
            await self._event(
                state,
                EventType.stage_completed,
                f"Release {state['release']} serves on {placement['server']} (playbook "
                f"{result.playbook_s or 0:.1f} s)",
                ANSIBLE,
                data={"previous_release": result.previous_release},
            )
            return update
        if result.port_busy and attempt < MAX_PORT_ATTEMPTS:
            await self._event(
                state,
                EventType.progress,
                f"Port {placement['port']} is taken on {placement['server']} by another "
                "process; trying another port",
                ANSIBLE,
            )
            avoid = [*(state.get("avoid_ports") or []), placement["port"]]
            return {**update, "avoid_ports": avoid, "placement": None}
        return {**update, "failure": f"the playbook failed: {result.error}"}

    async def _run_ansible(self, message: AnsibleDeployMessage) -> AnsibleDeployResult:
        workflow_id = ansible_deploy_workflow_id(message.request_id)
        handle = self.client.get_workflow_handle(workflow_id, result_type=AnsibleDeployResult)
        async with heartbeating(workflow_id):
            if not await self._exists(workflow_id):
                # Through the outbox: the message is durable once committed, sent once.
                async with self.db.session() as session:
                    queued = outbox.enqueue(session, ANSIBLE_DEPLOY_QUEUE, message.to_fields())
                    await session.commit()
                await outbox.publish(self.db, self.redis, [queued.id] if queued.id else None)
            await self._started(workflow_id)
            try:
                return await handle.result()
            except WorkflowFailureError as exc:
                return AnsibleDeployResult(
                    request_id=message.request_id, success=False, error=failure_reason(exc)
                )

    async def _started(self, workflow_id: str) -> None:
        """Until a bridge has started the run (it may be down for a while: we heartbeat)."""
        while not await self._exists(workflow_id):  # noqa: ASYNC110 (another process starts it)
            await asyncio.sleep(0.2)

    async def _exists(self, workflow_id: str) -> bool:
        return await workflow_status(self.client, workflow_id) is not None

    async def health(self, state: DevOpsState) -> dict[str, Any]:
        """The release answers at the URL a person will use, from here (not only on the server)."""
        deployed = state.get("deployed") or {}
        spec = AppSpec.model_validate(state.get("spec") or {})
        base = str(deployed.get("deployed_url") or "")
        url = base.rstrip("/") + spec.health_path
        await self._event(state, EventType.stage_started, f"Checking {url}", HEALTH)
        problem = await check_health(url, self.settings.deploy_health_timeout_s)
        if problem is not None:
            return {
                "failure": f"release {state['release']} serves on its server but {url} does not "
                f"answer from the orchestrator: {problem} (a firewall, or the app listening on "
                "loopback only?)"
            }
        await self._event(state, EventType.stage_completed, f"{url} answers", HEALTH)
        return {"url": base}

    async def record(self, state: DevOpsState) -> dict[str, Any]:
        """The deployment record: this release RUNNING with its URL, the one before SUPERSEDED."""
        placement = state.get("placement") or {}
        deployed = state.get("deployed") or {}
        async with self.db.session() as session:
            await deployments.set_status(
                session,
                placement["deployment_id"],
                DeploymentStatus.deploying,
                details={
                    "previous_release": deployed.get("previous_release"),
                    "playbook_s": deployed.get("playbook_s"),
                },
            )
            await deployments.promote(session, placement["deployment_id"], state.get("url") or "")
        await self._event(
            state,
            EventType.stage_completed,
            f"{state['project_name']} release {state['release']} is live at {state.get('url')}",
            RECORD,
        )
        return {}

    async def _event(
        self,
        state: DevOpsState,
        type: EventType,
        message: str,
        stage: str,
        data: dict[str, Any] | None = None,
    ) -> None:
        await self.tasks.add_event(state["task_id"], type, message, stage=stage, data=data)


def resolve_commit(checkout: Path, ref: str) -> str:
    """The commit ``ref`` names in a fresh clone: a branch of the origin, a tag or a commit."""
    for candidate in (f"refs/remotes/origin/{ref}", f"refs/tags/{ref}", ref):
        found = git(
            "rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}", cwd=checkout, check=False
        )
        if found.returncode == 0:
            return found.stdout.strip()
    raise ValueError(f"the repository has no branch, tag or commit {ref!r}")


def _undeployable(spec: AppSpec) -> str | None:
    if spec.runtime != "process":
        return (
            f"it runs as a container (from its {spec.source}), and container deploys are not "
            "supported yet: describe the process in .orchestrator.yml or a Procfile"
        )
    if not spec.command:
        return f"its {spec.source} names no command to start it"
    if not (spec.port_env or spec.port):
        return (
            f"{spec.service} serves no HTTP port (no port variable or default port in its "
            f"{spec.source}): only web apps get a URL"
        )
    return None


async def check_health(url: str, within_s: float) -> str | None:
    """None once ``url`` answers 2xx; else, after ``within_s``, what went wrong last."""
    deadline = time.monotonic() + within_s
    problem = "no answer"
    async with httpx.AsyncClient(timeout=5.0) as client:
        while True:
            try:
                response = await client.get(url)
                if response.is_success:
                    return None
                problem = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if time.monotonic() >= deadline:
                return problem
            activity.heartbeat(problem)
            await asyncio.sleep(HEALTH_INTERVAL_S)
