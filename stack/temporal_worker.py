"""The Temporal worker process: every department's workflows and activities, on the task queues
its host's capabilities allow.

``python -m stack.temporal_worker`` (or ``orchestrator worker run``) reads Settings(), connects
to Temporal, the database and Redis, polls until SIGTERM or SIGINT, then shuts down gracefully
(running activities get a grace period). Its service name, log and ready file are
``temporal-worker``. (A *Worker*, capitalised, is the container an agent runs in:
activities/workers.py.)

Every process polls the base queue (``ORCHESTRATOR_TEMPORAL_TASK_QUEUE``): all workflows and the
activities any host can run. A host with a capability (``ORCHESTRATOR_WORKER_CAPABILITIES``:
``containers``, ``ansible``) also polls that capability's queue (core/task_queues.py), where the
workflows send the activities that need it. One Temporal ``Worker`` per queue, in one process.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Collection
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from langgraph.graph import StateGraph
from redis.asyncio import Redis
from sqlmodel import select
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.langgraph import LangGraphPlugin
from temporalio.worker import Replayer, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.deploy import DeployActivities
from activities.development import DevelopmentNodes
from activities.devops import DevOpsNodes
from activities.engineering import EngineeringActivities
from activities.forge import ForgeActivities, PullRequestActivities
from activities.gateway import GatewayActivities
from activities.health import HealthActivities
from activities.housekeeping import HousekeepingActivities
from activities.po import POActivities
from activities.releases import ReleaseActivities
from activities.repo_sync import RepoSyncActivities
from activities.servers import ServerActivities
from activities.tasks import TaskActivities
from activities.temporal import TemporalActivities
from activities.turns import TurnActivities
from activities.usage import UsageActivities
from activities.workers import WorkerActivities
from core.crypto import Vault
from core.logging import get_logger
from core.paths import SERVICE_TEMPLATE_DIR
from core.readiness import clear_ready, mark_ready
from core.service import run_service
from core.settings import Settings
from core.task_queues import ANSIBLE, CONTAINERS, Capability, capability_queue
from core.temporal import LogContextInterceptor, connect_when_up, ensure_search_attributes
from db.engine import Database
from db.tasks import TaskService
from gateway.server import Gateway
from infra.ansible import AnsibleRunner
from infra.containers import ContainerRuntime
from infra.forges import make_forge
from workflows.ansible_deploy import AnsibleDeployWorkflow
from workflows.app_health import AppHealthWorkflow
from workflows.deploy import DeployWorkflow
from workflows.development import DEVELOPMENT_GRAPH, build_development_graph
from workflows.devops import DEVOPS_GRAPH, build_devops_graph
from workflows.engineering import EngineeringWorkflow
from workflows.po_session import POSessionWorkflow
from workflows.provision import ProvisionWorkflow
from workflows.pull_request_merge import PullRequestMergeWorkflow
from workflows.reaper import ReaperWorkflow
from workflows.repo_sync import RepoSyncWorkflow
from workflows.scaffold import ScaffoldWorkflow
from workflows.server_health import ServerHealthWorkflow
from workflows.turns import TurnsWorkflow
from workflows.usage import UsageWorkflow
from workflows.worker import WorkerWorkflow

log = get_logger(__name__)

SERVICE = "temporal-worker"
WORKFLOWS: list[type] = [
    EngineeringWorkflow,
    ScaffoldWorkflow,
    WorkerWorkflow,
    ReaperWorkflow,
    POSessionWorkflow,
    ProvisionWorkflow,
    DeployWorkflow,
    AnsibleDeployWorkflow,
    TurnsWorkflow,
]


def workflow_runner() -> SandboxedWorkflowRunner:
    """The sandbox workflows run in (the Replayer uses the same one).

    redis is passed through: workflow code never uses it, but a redis connection collected by the
    garbage collector while a workflow activation runs imports modules from its ``__del__``,
    which the sandbox would otherwise re-import and warn about.
    """
    restrictions = SandboxRestrictions.default.with_passthrough_modules("redis")
    return SandboxedWorkflowRunner(restrictions=restrictions)


@dataclass
class Department:
    """What one part of the orchestrator runs on this worker: its workflows, its activities (any
    host's, on the base queue), the activities only a host with a capability runs (on that
    capability's queue, where the workflows send them) and the LangGraph graphs whose nodes are
    activities (each node on the queue its metadata names)."""

    name: str
    workflows: list[type] = field(default_factory=list)
    activities: list[Callable[..., Any]] = field(default_factory=list)
    needs: dict[Capability, list[Callable[..., Any]]] = field(default_factory=dict)
    graphs: dict[str, StateGraph[Any, Any, Any, Any]] = field(default_factory=dict)


@dataclass
class Parts:
    """The clients every department's activities are made of, made once per worker."""

    settings: Settings
    # The base task queue: the graphs send their nodes to its capability queues.
    task_queue: str
    client: Client
    db: Database
    redis: Redis
    gateway: Gateway
    tasks: TaskService
    workers: WorkerActivities
    template_dir: Path


def activities_of(
    *instances: object, leaving_out: Collection[Callable[..., Any]] = ()
) -> list[Callable[..., Any]]:
    """Every ``@activity.defn`` method of the given activity classes' instances but those
    ``leaving_out`` names (a capability's, registered apart)."""
    return [
        method
        for instance in instances
        for _, method in inspect.getmembers(instance, inspect.ismethod)
        if hasattr(method, "__temporal_activity_definition") and method not in leaving_out
    ]


def departments(parts: Parts) -> list[Department]:
    """Every department's workflows and activities, each activity in exactly one."""
    settings, db, redis, client = parts.settings, parts.db, parts.redis, parts.client
    # One forge (local or GitHub, as the settings say) for repositories and pull requests alike.
    forge = make_forge(settings)
    pulls = PullRequestActivities(db, forge)
    engineering = EngineeringActivities(settings, parts.tasks, parts.workers)
    vault = Vault.from_settings(settings)
    runner = AnsibleRunner.from_settings(settings)
    workers, gateway = parts.workers, GatewayActivities(parts.gateway)
    po = POActivities(settings, redis)
    servers = ServerActivities(db, redis, vault, runner)
    releases = ReleaseActivities(settings, db, redis, vault, runner)
    health = HealthActivities(settings, db, redis, vault, runner)
    # What needs the host of the Workers: their container engine, the workspaces it mounts and
    # the gateway sockets it mounts (served by the process that opened them).
    worker_host: list[Callable[..., Any]] = [
        workers.create_container,
        workers.remove_container,
        workers.run_agent_turn,
        workers.write_file,
        workers.reap_workers,
        gateway.open_gateway,
        gateway.close_gateway,
    ]
    workspace_host: list[Callable[..., Any]] = [
        engineering.prepare_workspace,
        engineering.clean_workspaces,
        engineering.run_tests,
        engineering.commit_workspace,
    ]
    # Playbooks over SSH to the servers.
    playbooks: list[Callable[..., Any]] = [
        servers.provision_server,
        releases.deploy_release,
        releases.stop_app,
    ]
    return [
        # The task rows every task workflow moves, and the projects they work on.
        Department("tasks", activities=activities_of(TaskActivities(db, redis))),
        # Limited pools (Worker slots, a project's one deploy at a time), waited on in workflow
        # code.
        Department(
            "turns",
            workflows=[TurnsWorkflow],
            activities=activities_of(TurnActivities(settings, client, parts.tasks)),
        ),
        # Worker containers, the agent turns in them, and the model gateway they reach; the
        # reaper removes what closed runs left behind.
        Department(
            "workers",
            workflows=[WorkerWorkflow, ReaperWorkflow],
            activities=activities_of(workers, gateway, leaving_out=worker_host),
            needs={CONTAINERS: worker_host},
        ),
        # Scaffold, develop, test, propose; pull requests' states from the forge (the repo-sync
        # Schedule), merges, and the deploys they start.
        Department(
            "engineering",
            workflows=[
                EngineeringWorkflow,
                ScaffoldWorkflow,
                RepoSyncWorkflow,
                PullRequestMergeWorkflow,
            ],
            activities=activities_of(
                ForgeActivities(parts.template_dir, forge),
                TemporalActivities(client),
                engineering,
                pulls,
                RepoSyncActivities(forge, parts.tasks),
                leaving_out=workspace_host,
            ),
            needs={CONTAINERS: workspace_host},
            graphs={
                DEVELOPMENT_GRAPH: build_development_graph(
                    DevelopmentNodes(parts.tasks, parts.workers, engineering, pulls),
                    parts.task_queue,
                )
            },
        ),
        # Each chat's Product Owner session.
        Department(
            "product-owner",
            workflows=[POSessionWorkflow],
            activities=activities_of(po, leaving_out=[po.prepare_session]),
            # The session's workspace is on the host of its Worker.
            needs={CONTAINERS: [po.prepare_session]},
        ),
        # Servers, deploys and releases over Ansible.
        Department(
            "devops",
            workflows=[ProvisionWorkflow, DeployWorkflow, AnsibleDeployWorkflow],
            activities=activities_of(
                servers,
                DeployActivities(settings, db, redis, client, parts.tasks),
                releases,
                leaving_out=playbooks,
            ),
            needs={ANSIBLE: playbooks},
            graphs={
                DEVOPS_GRAPH: build_devops_graph(
                    DevOpsNodes(settings, db, redis, client, parts.tasks)
                )
            },
        ),
        # The scheduled checks of servers and apps (the reaper is the workers' own), incidents
        # to the chats, and the streams' housekeeping the reaper's runs do; the projects' daily
        # budgets (the usage job). Their Schedules are made by `up` (stack/prepare.py,
        # core/schedules.py).
        Department(
            "schedules",
            workflows=[ServerHealthWorkflow, AppHealthWorkflow, UsageWorkflow],
            activities=activities_of(
                health,
                HousekeepingActivities(settings, redis),
                UsageActivities(settings, db, redis),
                leaving_out=[health.check_server_health, health.check_app_health],
            ),
            needs={ANSIBLE: [health.check_server_health, health.check_app_health]},
        ),
    ]


class TemporalWorkers:
    """The Temporal ``Worker`` of each task queue one process polls, run and stopped together
    (``async with``): the base queue's first."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers

    @property
    def task_queue(self) -> str:
        """The base queue: where the workflows run."""
        return self.workers[0].task_queue

    @property
    def task_queues(self) -> list[str]:
        return [worker.task_queue for worker in self.workers]

    async def __aenter__(self) -> TemporalWorkers:
        async with AsyncExitStack() as stack:
            for worker in self.workers:
                await stack.enter_async_context(worker)
            self._running = stack.pop_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._running.aclose()


def build_worker(
    client: Client,
    settings: Settings,
    db: Database,
    redis: Redis,
    *,
    task_queue: str | None = None,
    capabilities: Collection[Capability] | None = None,
    template_dir: Path | None = None,
    gateway: Gateway | None = None,
    runtime: ContainerRuntime | None = None,
    **options: Any,
) -> TemporalWorkers:
    """The Temporal workers of one process, each department in them; ``options`` go to each
    ``Worker`` as they are.

    ``task_queue``: the base queue (the settings' by default). ``capabilities``: what this host
    can do (the settings' by default): a ``Worker`` polls each one's queue besides the base
    queue. ``gateway``: the model gateway this process serves (``serve`` makes one and closes
    it; by default one that is never closed, for tests). ``runtime``: the container service; by
    default the settings' one, connected on first use.
    """
    base = task_queue or settings.temporal_task_queue
    capabilities = settings.worker_capabilities if capabilities is None else capabilities
    tasks = TaskService(db, redis)
    # Not closed here: whoever passes the gateway owns it (``serve`` closes its own).
    gateway = gateway or Gateway(db)
    workers = WorkerActivities(
        settings, redis=redis, client=client, gateway=gateway, runtime=runtime, tasks=tasks
    )
    parts = Parts(
        settings=settings,
        task_queue=base,
        client=client,
        db=db,
        redis=redis,
        gateway=gateway,
        tasks=tasks,
        workers=workers,
        template_dir=template_dir or settings.template_dir or SERVICE_TEMPLATE_DIR,
    )
    made = departments(parts)
    options.setdefault("graceful_shutdown_timeout", timedelta(seconds=10))
    # Bounded on purpose: nothing waits in an activity (waits are in workflow code), so these
    # limit work, never progress. Each queue's Worker has its own slots: a flood of quick
    # database activities does not hold back an agent turn, nor one playbook the rest.
    options.setdefault("max_concurrent_activities", settings.max_concurrent_activities)
    options.setdefault("max_concurrent_workflow_tasks", settings.max_concurrent_workflow_tasks)
    options.setdefault("workflow_runner", workflow_runner())
    options.setdefault("interceptors", [LogContextInterceptor()])
    # Heartbeats carry cancellations to activities; by default they are held back up to 80% of
    # the heartbeat timeout, so a cancelled wait would linger ~8 s.
    options.setdefault("max_heartbeat_throttle_interval", timedelta(seconds=2))
    options.setdefault("default_heartbeat_throttle_interval", timedelta(seconds=2))
    graphs = _graphs(made)
    nodes_on = _node_queues(graphs)
    # The plugin turns the graphs' activity nodes into activities: registered on the base
    # Worker by the plugin, and by us on the queue each node is routed to.
    plugin = LangGraphPlugin(graphs=graphs)
    on_queue: dict[str, list[Callable[..., Any]]] = {}
    needing: list[Callable[..., Any]] = []
    for capability in dict.fromkeys(capabilities):
        queue = capability_queue(base, capability)
        needs = [a for department in made for a in department.needs.get(capability, [])]
        nodes = [a for a in plugin.activities if nodes_on.get(_name(a)) == queue]
        on_queue[queue] = [*needs, *nodes]
        needing += needs
    base_worker = Worker(
        client,
        task_queue=base,
        workflows=[workflow for department in made for workflow in department.workflows],
        # Also a capability's activities on a host that has it: an activity scheduled on the
        # base queue before capability queues existed (a run in flight across the upgrade)
        # still finds a host that can run it. (The plugin registers every node here.)
        activities=[
            *(activity for department in made for activity in department.activities),
            *needing,
        ],
        plugins=[plugin],
        **options,
    )
    others = [
        Worker(client, task_queue=queue, activities=activities, **options)
        for queue, activities in on_queue.items()
    ]
    return TemporalWorkers([base_worker, *others])


def _graphs(made: list[Department]) -> dict[str, StateGraph[Any, Any, Any, Any]]:
    return {name: graph for department in made for name, graph in department.graphs.items()}


def _node_queues(graphs: dict[str, StateGraph[Any, Any, Any, Any]]) -> dict[str, str]:
    """The queue each activity node (by the plugin's name for it) is routed to, if any. Read
    before the plugin takes the activity options out of the nodes' metadata."""
    return {
        f"{graph_name}.{node_name}": node.metadata["task_queue"]
        for graph_name, graph in graphs.items()
        for node_name, node in graph.nodes.items()
        if node.metadata and "task_queue" in node.metadata
    }


def _name(activity: Callable[..., Any]) -> str:
    return getattr(activity, "__temporal_activity_definition").name


def replayer(workflows: list[type] | None = None) -> Replayer:
    """A Replayer for recorded histories with this worker's workflows, sandbox and plugin.

    Replaying runs no activity: the development graph's nodes need no real dependencies.
    """
    nodes = DevelopmentNodes(None, None, None, None)  # type: ignore[arg-type]
    devops = DevOpsNodes(None, None, None, None, None)  # type: ignore[arg-type]
    graphs = {
        # Replaying compares activity types and order, not the queue they were sent to.
        DEVELOPMENT_GRAPH: build_development_graph(nodes, "replay"),
        DEVOPS_GRAPH: build_devops_graph(devops),
    }
    return Replayer(
        workflows=workflows or WORKFLOWS,
        data_converter=pydantic_data_converter,
        workflow_runner=workflow_runner(),
        plugins=[LangGraphPlugin(graphs=graphs)],
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
            log.info(
                "temporal worker polling",
                task_queue=worker.task_queue,
                task_queues=worker.task_queues,
                capabilities=settings.worker_capabilities,
            )
            await stop.wait()
            log.info("temporal worker stopping")
            clear_ready(settings, SERVICE)
    finally:
        await gateway.aclose()
        await redis.aclose()
        await db.dispose()
    log.info("temporal worker stopped")


async def _check(db: Database, redis: Redis) -> None:
    """Reach the database and Redis before polling: a worker that cannot is not ready."""
    async with db.session() as session:
        await session.exec(select(1))
    await redis.ping()


def main() -> None:
    run_service(SERVICE, serve)


if __name__ == "__main__":
    main()
