"""The activity nodes of the DevOps graph (workflows/devops.py), run by ``DeployWorkflow``.

EnvAnalyzer (how the repository runs) -> SecretResolver (which secrets it lacks; the graph waits
in the workflow) -> Deployer (a READY server with room, a port of its own) -> Ansible (a message
on ``ansible:deploy:queue``; ``AnsibleDeployWorkflow`` runs the playbook and signals its result
to the deploy, which waits for it in workflow code; then ``released`` says how it went) ->
health check (HTTP, from here, at the URL a person will use) -> the deployment record.

Every node records the task events of its stage itself and is safe to play again: the release
row is one per task, the port one per project and server, the Ansible run one per request id.
"""

from __future__ import annotations

import posixpath
from typing import Any, NotRequired, TypedDict

from redis.asyncio import Redis
from temporalio import activity
from temporalio.client import Client

from activities import run_blocking
from activities.deploy import deploy_outcome
from core.contracts.deploy import (
    ANSIBLE_DEPLOY_QUEUE,
    AnsibleDeployMessage,
    AnsibleDeployResult,
    ContainerSpec,
    project_secrets_ref,
)
from core.enums import DeploymentStatus, EventType
from core.ids import ansible_deploy_workflow_id
from core.settings import Settings
from core.temporal import workflow_status
from db import deployments, outbox
from db.engine import Database
from db.tasks import TaskService
from infra.env_analyzer import AnalysisError, AppSpec, analyze_ref
from infra.health import check_health

ANALYZE, SECRETS, PLACE, ANSIBLE, HEALTH, RECORD = (
    "analyze",
    "secrets",
    "deployer",
    "ansible",
    "health",
    "record",
)
# Attempts at a port before giving up when the server's ports are taken by other processes.
MAX_PORT_ATTEMPTS = 3


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
    ansible_request: NotRequired[str | None]  # the Ansible run the graph waits for
    deployed: NotRequired[dict[str, Any] | None]  # the AnsibleDeployResult
    url: NotRequired[str | None]
    failure: NotRequired[str | None]


class DevOpsNodes:
    """The graph's activity nodes; each gets the graph's state and returns its update."""

    def __init__(
        self, settings: Settings, db: Database, redis: Redis, client: Client, tasks: TaskService
    ) -> None:
        self.settings = settings
        self.db = db
        self.redis = redis
        self.client = client
        self.tasks = tasks

    async def analyze(self, state: DevOpsState) -> dict[str, Any]:
        """EnvAnalyzer: check out the ref and read how the app runs."""
        ref = state.get("commit_sha") or state["ref"]
        await self._event(state, EventType.stage_started, f"Reading how {ref} runs", ANALYZE)
        try:
            commit, spec = await run_blocking(analyze_ref, state["repository"], ref)
        except AnalysisError as exc:
            return {"failure": f"cannot deploy {state['project_name']}: {exc}"}
        except ValueError as exc:  # an unknown ref
            return {"failure": str(exc)}
        problem = _undeployable(spec)
        if problem:
            return {"failure": f"cannot deploy {state['project_name']}: {problem}"}
        needs = ", ".join(spec.required_env) or "no secrets"
        database = "; it gets a PostgreSQL database of its own" if spec.database_env else ""
        await self._event(
            state,
            EventType.stage_completed,
            f"{spec.service} {_how_it_runs(spec)} (from its {spec.source}); it needs {needs}"
            f"{database}",
            ANALYZE,
            data={"spec": spec.model_dump(mode="json"), "commit_sha": commit},
        )
        return {"commit_sha": commit, "spec": spec.model_dump(mode="json")}

    async def place(self, state: DevOpsState) -> dict[str, Any]:
        """Deployer: a READY server with room and a port the project holds there. An app that
        serves no port holds one too: it is the project's place on that server (its next
        release goes to the same server, where the one it replaces runs), never listened on."""
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
        """Ansible: put the release on ``ansible:deploy:queue`` (once), asking its run to signal
        the result to this deploy, which waits for it in workflow code: no activity waits."""
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
            serves_port=spec.serves_port,
            bot_token_env=spec.bot_token_env,
            release_command=spec.release_command,
            database_env=spec.database_env,
            generated_secrets=spec.generated_secrets,
            container=_container(spec),
            health_any_status=spec.health_any_status,
            notify_workflow_id=activity.info().workflow_id,
        )
        async with self.db.session() as session:
            await deployments.set_status(
                session, placement["deployment_id"], DeploymentStatus.deploying
            )
        workflow_id = ansible_deploy_workflow_id(request_id)
        await self._event(
            state,
            EventType.stage_started,
            f"Ansible deploys release {state['release']} to {placement['server']}",
            ANSIBLE,
            data={"request_id": request_id, "workflow_id": workflow_id},
        )
        if not await self._exists(workflow_id):
            # Through the outbox: the message is durable once committed, sent once.
            async with self.db.session() as session:
                queued = outbox.enqueue(session, ANSIBLE_DEPLOY_QUEUE, message.to_fields())
                await session.commit()
            await outbox.publish(self.db, self.redis, [queued.id] if queued.id else None)
        return {"attempts": attempt, "ansible_request": request_id, "deployed": None}

    async def released(self, state: DevOpsState) -> dict[str, Any]:
        """How the Ansible run went (its result is in ``deployed``): serving, a port taken by
        another process (the Deployer picks another), or a failure."""
        placement = state.get("placement") or {}
        result = AnsibleDeployResult.model_validate(state.get("deployed") or {})
        if result.success:
            await self._event(
                state,
                EventType.stage_completed,
                f"Release {state['release']} serves on {placement['server']} (playbook "
                f"{result.playbook_s or 0:.1f} s)",
                ANSIBLE,
                data={
                    "previous_release": result.previous_release,
                    "release_steps": result.release_steps,
                },
            )
            return {}
        if result.port_busy and (state.get("attempts") or 0) < MAX_PORT_ATTEMPTS:
            await self._event(
                state,
                EventType.progress,
                f"Port {placement['port']} is taken on {placement['server']} by another "
                "process; trying another port",
                ANSIBLE,
            )
            return {
                "avoid_ports": [*(state.get("avoid_ports") or []), placement["port"]],
                "placement": None,
            }
        return {"failure": f"the playbook failed: {result.error}"}

    async def _exists(self, workflow_id: str) -> bool:
        return await workflow_status(self.client, workflow_id) is not None

    async def health(self, state: DevOpsState) -> dict[str, Any]:
        """The release answers at the URL a person will use, from here (not only on the server)."""
        deployed = state.get("deployed") or {}
        spec = AppSpec.model_validate(state.get("spec") or {})
        if not spec.serves_port:
            # Judged on its server: it stayed up (and its bot answered getMe); no URL to ask.
            bot = deployed.get("bot")
            said = f"; its bot is @{bot}" if bot else ""
            await self._event(
                state,
                EventType.stage_completed,
                f"{spec.service} serves no port: it stays up on its server{said}",
                HEALTH,
                data={"bot": bot},
            )
            return {"url": None}
        base = str(deployed.get("deployed_url") or "")
        url = base.rstrip("/") + spec.health_path
        await self._event(state, EventType.stage_started, f"Checking {url}", HEALTH)
        # At the server the release went to, whatever DNS says of its name; TLS checked against
        # the edge's own CA when its names have no public certificate.
        problem = await check_health(
            url,
            self.settings.deploy_health_timeout_s,
            activity.heartbeat,
            connect_to=deployed.get("server_ip") if url.startswith("https://") else None,
            ca_pem=deployed.get("edge_ca"),
            any_status=spec.health_any_status,
        )
        if problem is not None:
            return {
                "failure": f"release {state['release']} serves on its server but {url} does not "
                f"answer from the orchestrator: {problem} (a firewall in front of the server's "
                "edge, or a name whose certificate the edge could not get?)"
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
        where = f"at {state['url']}" if state.get("url") else "(it serves no port)"
        await self._event(
            state,
            EventType.stage_completed,
            f"{state['project_name']} release {state['release']} is live {where}",
            RECORD,
        )
        # Live: an earlier failed deploy's incident is resolved.
        await deploy_outcome(self.settings, self.db, self.redis, state["task_id"], None)
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


def _undeployable(spec: AppSpec) -> str | None:
    if spec.runtime == "process" and not spec.command:
        return f"its {spec.source} names no command to start it"
    return None


def _how_it_runs(spec: AppSpec) -> str:
    if spec.runtime == "process":
        return f"runs `{spec.command}`"
    if spec.build is None:
        return f"runs the image {spec.image}"
    dockerfile = posixpath.join(spec.build.context, spec.build.dockerfile)
    return f"runs as a container built from {posixpath.normpath(dockerfile)}"


def _container(spec: AppSpec) -> ContainerSpec | None:
    """How the server runs an app that is a container (None: a process)."""
    if spec.runtime != "container":
        return None
    if spec.build is None:
        return ContainerSpec(image=spec.image, port=spec.port)
    return ContainerSpec(
        context=spec.build.context, dockerfile=spec.build.dockerfile, port=spec.port
    )
