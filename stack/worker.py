"""The Temporal worker: every workflow and activity of the orchestrator on one task queue.

``python -m stack.worker`` reads Settings(), connects to Temporal, the database and Redis, polls
until SIGTERM or SIGINT, then shuts down gracefully (running activities get a grace period).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from sqlmodel import select
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.langgraph import LangGraphPlugin
from temporalio.worker import Replayer, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.ansible import AnsibleRunner
from activities.containers import ContainerRuntime
from activities.deploy import DeployActivities
from activities.development import DevelopmentNodes
from activities.engineering import EngineeringActivities
from activities.forge import ForgeActivities, PullRequestActivities
from activities.forges import make_forge
from activities.po import POActivities
from activities.releases import ReleaseActivities
from activities.servers import ServerActivities
from activities.tasks import TaskActivities
from activities.temporal import TemporalActivities
from activities.workers import WorkerActivities
from api.db import Database
from api.services.tasks import TaskService
from core.crypto import Vault
from core.logging import get_logger
from core.readiness import clear_ready, mark_ready
from core.service import run_service
from core.settings import Settings
from core.temporal import LogContextInterceptor, connect_when_up, ensure_search_attributes
from gateway.activities import GatewayActivities
from gateway.server import Gateway
from workflows.ansible_deploy import AnsibleDeployWorkflow
from workflows.deploy import DeployWorkflow
from workflows.development import DEVELOPMENT_GRAPH, build_development_graph
from workflows.devops import DEVOPS_GRAPH, build_devops_graph
from workflows.engineering import EngineeringWorkflow
from workflows.po_session import POSessionWorkflow
from workflows.provision import ProvisionWorkflow
from workflows.reaper import ReaperWorkflow
from workflows.scaffold import ScaffoldWorkflow
from workflows.worker import WorkerWorkflow

log = get_logger("stack.worker")

SERVICE = "worker"
# The project templates ship with the code: <repo>/deploy/templates/<name>.
TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "deploy" / "templates"
SERVICE_TEMPLATE_DIR = TEMPLATES_DIR / "service"
WORKFLOWS = [
    EngineeringWorkflow,
    ScaffoldWorkflow,
    WorkerWorkflow,
    ReaperWorkflow,
    POSessionWorkflow,
    ProvisionWorkflow,
    DeployWorkflow,
    AnsibleDeployWorkflow,
]


def workflow_runner() -> SandboxedWorkflowRunner:
    """The sandbox workflows run in (the Replayer uses the same one).

    redis is passed through: workflow code never uses it, but a redis connection collected by the
    garbage collector while a workflow activation runs imports modules from its ``__del__``,
    which the sandbox would otherwise re-import and warn about.
    """
    restrictions = SandboxRestrictions.default.with_passthrough_modules("redis")
    return SandboxedWorkflowRunner(restrictions=restrictions)


def build_worker(
    client: Client,
    settings: Settings,
    db: Database,
    redis: Redis,
    *,
    task_queue: str | None = None,
    template_dir: Path | None = None,
    gateway: Gateway | None = None,
    runtime: ContainerRuntime | None = None,
    **options: Any,
) -> Worker:
    """A worker with all workflows and activities; ``options`` go to ``Worker`` as they are.

    ``gateway``: the model gateway this process serves (``serve`` makes one and closes it; by
    default one that is never closed, for tests). ``runtime``: the container service;
    by default the settings' one, connected on first use.
    """
    tasks = TaskActivities(db, redis)
    # One forge (local or GitHub, as the settings say) for repositories and pull requests alike.
    repositories = make_forge(settings)
    forge = ForgeActivities(
        settings.forge_dir,
        template_dir or settings.template_dir or SERVICE_TEMPLATE_DIR,
        repositories,
    )
    temporal = TemporalActivities(client)
    # Not closed here: whoever passes the gateway owns it (``serve`` closes its own).
    gateway = gateway or Gateway(db)
    task_service = TaskService(db, redis)
    workers = WorkerActivities(
        settings, redis=redis, client=client, gateway=gateway, runtime=runtime, tasks=task_service
    )
    gateways = GatewayActivities(gateway)
    engineering = EngineeringActivities(settings, db, workers)
    pulls = PullRequestActivities(db, repositories)
    nodes = DevelopmentNodes(task_service, workers, engineering, pulls)
    po = POActivities(settings, redis)
    vault = Vault.from_settings(settings)
    runner = AnsibleRunner.from_settings(settings)
    server_activities = ServerActivities(db, redis, vault, runner)
    deploys = DeployActivities(settings, db, redis, client, task_service)
    releases = ReleaseActivities(settings, db, redis, vault, runner)
    options.setdefault("graceful_shutdown_timeout", timedelta(seconds=10))
    options.setdefault("workflow_runner", workflow_runner())
    options.setdefault("interceptors", [LogContextInterceptor()])
    # Heartbeats carry cancellations to activities; by default they are held back up to 80% of
    # the heartbeat timeout, so a cancelled wait would linger ~8 s.
    options.setdefault("max_heartbeat_throttle_interval", timedelta(seconds=2))
    options.setdefault("default_heartbeat_throttle_interval", timedelta(seconds=2))
    return Worker(
        client,
        task_queue=task_queue or settings.temporal_task_queue,
        workflows=WORKFLOWS,
        plugins=[graphs_plugin(nodes, deploys)],
        activities=[
            tasks.start_task,
            tasks.record_event,
            tasks.finish_task,
            tasks.wait_for_human,
            tasks.answered,
            tasks.get_project,
            tasks.set_project_status,
            tasks.record_repository,
            forge.scaffold_repository,
            forge.find_repository,
            temporal.wait_for_scaffold,
            workers.create_container,
            workers.remove_container,
            workers.run_agent_turn,
            workers.write_file,
            workers.publish_response,
            workers.reap_workers,
            gateways.open_gateway,
            gateways.close_gateway,
            gateways.gateway_usage,
            engineering.plan_task,
            engineering.prepare_workspace,
            engineering.run_tests,
            engineering.commit_workspace,
            engineering.clean_workspaces,
            pulls.open_pull_request,
            po.prepare_session,
            po.publish_to_chat,
            server_activities.find_provision_result,
            server_activities.mark_provisioning,
            server_activities.provision_server,
            server_activities.record_provisioned,
            server_activities.publish_provision_result,
            deploys.plan_deploy,
            deploys.acquire_deploy_lock,
            deploys.release_deploy_lock,
            deploys.missing_secrets,
            deploys.record_deploy_failure,
            deploys.apps_of_project,
            deploys.record_stopped,
            releases.deploy_release,
            releases.publish_deploy_result,
            releases.stop_app,
        ],
        **options,
    )


def graphs_plugin(nodes: DevelopmentNodes, deploys: DeployActivities) -> LangGraphPlugin:
    """The development and DevOps graphs' nodes as this worker's activities (new graphs per
    worker: the plugin rewires the nodes it is given)."""
    return LangGraphPlugin(
        graphs={
            DEVELOPMENT_GRAPH: build_development_graph(nodes),
            DEVOPS_GRAPH: build_devops_graph(deploys),
        }
    )


def replayer(workflows: list[type] | None = None) -> Replayer:
    """A Replayer for recorded histories with this worker's workflows, sandbox and plugin.

    Replaying runs no activity: the development graph's nodes need no real dependencies.
    """
    nodes = DevelopmentNodes(None, None, None, None)  # type: ignore[arg-type]
    deploys = DeployActivities(None, None, None, None)  # type: ignore[arg-type]
    return Replayer(
        workflows=workflows or WORKFLOWS,
        data_converter=pydantic_data_converter,
        workflow_runner=workflow_runner(),
        plugins=[graphs_plugin(nodes, deploys)],
    )


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    client = await connect_when_up(settings, stop)
    if client is None:
        return
    try:
        await ensure_search_attributes(client, settings.temporal_namespace)
    except Exception as exc:  # Temporal Cloud does not let workers register them; `up` does
        log.warning("search attributes not registered", error=str(exc))
    db = Database(settings.effective_database_url)
    redis = Redis.from_url(settings.effective_redis_url)
    gateway = Gateway(db)
    worker = build_worker(client, settings, db, redis, gateway=gateway)
    try:
        await _check(db, redis)
        async with worker:
            mark_ready(settings, SERVICE)
            log.info("worker polling", task_queue=worker.task_queue)
            await stop.wait()
            log.info("worker stopping")
            clear_ready(settings, SERVICE)
    finally:
        await gateway.aclose()
        await redis.aclose()
        await db.dispose()
    log.info("worker stopped")


async def _check(db: Database, redis: Redis) -> None:
    """Reach the database and Redis before polling: a worker that cannot is not ready."""
    async with db.session() as session:
        await session.exec(select(1))
    await redis.ping()


def main() -> None:
    run_service(SERVICE, serve)


if __name__ == "__main__":
    main()
