"""Which queue starts which workflow: one declaration each.

Workflows are started by name (core/contracts/workflows.py), so the bridges never import workflow
code.
"""

from __future__ import annotations

from functools import partial
from typing import TypeVar

from pydantic import BaseModel
from redis.asyncio import Redis
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from bridges.consumer import Route
from core.contracts.deploy import (
    ANSIBLE_DEPLOY_QUEUE,
    DEPLOY_QUEUE,
    AnsibleDeployMessage,
    DeployMessage,
)
from core.contracts.engineering import ENGINEERING_QUEUE, EngineeringMessage
from core.contracts.provisioner import PROVISIONER_QUEUE, ProvisionerMessage
from core.contracts.scaffolder import SCAFFOLDER_QUEUE, ScaffolderMessage
from core.contracts.worker import (
    WORKER_COMMANDS_QUEUE,
    WORKER_RESPONSES_QUEUE,
    CreateWorker,
    DeleteWorker,
    SendFile,
    SendMessage,
    WorkerCommand,
    WorkerResponse,
)
from core.contracts.workflows import (
    ANSIBLE_DEPLOY_WORKFLOW,
    DEPLOY_WORKFLOW,
    ENGINEERING_WORKFLOW,
    PROVISION_WORKFLOW,
    SCAFFOLD_WORKFLOW,
    WORKER_DELETE,
    WORKER_QUEUE_FILE,
    WORKER_QUEUE_MESSAGE,
    WORKER_WORKFLOW,
    DeployInput,
    EngineeringInput,
    ProvisionInput,
    ReplyTo,
    ScaffoldInput,
    WorkerDelete,
    WorkerFile,
    WorkerInput,
    WorkerMessage,
)
from core.ids import (
    ansible_deploy_workflow_id,
    deploy_workflow_id,
    engineering_workflow_id,
    provision_workflow_id,
    scaffold_workflow_id,
    worker_workflow_id,
)
from core.settings import Settings
from core.temporal import search_attributes

# A message delivered again after its run closed must not start a second run (under the default
# policy it would); the consumer treats the resulting WorkflowAlreadyStartedError as success.
REUSE_POLICY = WorkflowIDReusePolicy.REJECT_DUPLICATE
Input = TypeVar("Input", bound=BaseModel)


async def start_engineering(
    client: Client, message: EngineeringMessage, *, task_queue: str
) -> None:
    await _start_task_run(
        client,
        ENGINEERING_WORKFLOW,
        input_from(EngineeringInput, message),
        id=engineering_workflow_id(message.task_id),
        task_queue=task_queue,
        summary=f"Engineering task {message.task_id} ({message.action}) on project "
        f"{message.project_id}",
    )


async def _start_task_run(
    client: Client,
    workflow: str,
    run_input: EngineeringInput | DeployInput,
    *,
    id: str,
    task_queue: str,
    summary: str,
) -> None:
    """The run of a task: its id from the task's, searchable by task, project and type."""
    task_type = "deploy" if isinstance(run_input, DeployInput) else "engineering"
    await client.start_workflow(
        workflow,
        run_input,
        id=id,
        task_queue=task_queue,
        id_reuse_policy=REUSE_POLICY,
        search_attributes=search_attributes(
            task_id=run_input.task_id, project_id=run_input.project_id, task_type=task_type
        ),
        static_summary=summary,
    )


def input_from(model: type[Input], message: BaseModel) -> Input:
    """A workflow's input from its queue message: each of its fields the message carries."""
    return model.model_validate(message.model_dump(include=set(model.model_fields)))


async def start_scaffold(client: Client, message: ScaffolderMessage, *, task_queue: str) -> None:
    await client.start_workflow(
        SCAFFOLD_WORKFLOW,
        input_from(ScaffoldInput, message),
        id=scaffold_workflow_id(message.project_id),
        task_queue=task_queue,
        id_reuse_policy=REUSE_POLICY,
        search_attributes=search_attributes(project_id=message.project_id),
        static_summary=f"Scaffold {message.repo_full_name} for project {message.project_id}",
    )


async def start_provision(client: Client, message: ProvisionerMessage, *, task_queue: str) -> None:
    await client.start_workflow(
        PROVISION_WORKFLOW,
        input_from(ProvisionInput, message),
        id=provision_workflow_id(message.server_handle),
        task_queue=task_queue,
        # Unlike REUSE_POLICY: one id serves every provisioning of a server (added, then again
        # with force_reinstall or for a recovery), so a closed run must not refuse the next
        # request, and a request for a server being provisioned right now joins that run. A
        # redelivered message stays harmless: its run finds its request_id's published result
        # and returns it without provisioning again.
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary=f"Provision server {message.server_handle}"
        + (" (reinstall)" if message.force_reinstall else "")
        + (" (recovery)" if message.is_recovery else ""),
    )


async def start_deploy(client: Client, message: DeployMessage, *, task_queue: str) -> None:
    await _start_task_run(
        client,
        DEPLOY_WORKFLOW,
        input_from(DeployInput, message),
        id=deploy_workflow_id(message.task_id),
        task_queue=task_queue,
        summary=f"Deploy task {message.task_id} ({message.action}) on project {message.project_id}",
    )


async def start_ansible_deploy(
    client: Client, message: AnsibleDeployMessage, *, task_queue: str
) -> None:
    await client.start_workflow(
        ANSIBLE_DEPLOY_WORKFLOW,
        message,
        id=ansible_deploy_workflow_id(message.request_id),
        task_queue=task_queue,
        id_reuse_policy=REUSE_POLICY,
        search_attributes=search_attributes(project_id=message.project_id),
        static_summary=f"Release {message.release or message.request_id} of "
        f"{message.project_name} to {message.server_ip}:{message.port}",
    )


def worker_of(message: WorkerCommand) -> str:
    """The Worker a command is for: its commands must reach it in the order they were sent."""
    return message.request_id if isinstance(message, CreateWorker) else message.worker_id


def _reply_to(message: WorkerCommand) -> ReplyTo:
    streams = [WORKER_RESPONSES_QUEUE]
    if message.callback_stream:
        streams.append(message.callback_stream)
    return ReplyTo(
        request_id=message.request_id, correlation_id=message.correlation_id, streams=streams
    )


class WorkerCommands:
    """``worker:commands``: create starts a ``WorkerWorkflow``, the others signal it.

    A create's ``request_id`` becomes the Worker's id (the contract has no other field for it):
    the workflow is ``worker-{request_id}`` and every response names it in ``worker_id``. The
    Worker itself answers each command on ``worker:responses`` (and the ``callback_stream``) with
    the command's request_id, so the bridge never waits for an agent. Only a command for a Worker
    that does not exist (or has ended) is answered here.
    """

    def __init__(self, settings: Settings, redis: Redis | None = None) -> None:
        self.task_queue = settings.temporal_task_queue
        self.redis_url = settings.effective_redis_url
        self._redis = redis

    def redis(self) -> Redis:
        if self._redis is None:
            self._redis = Redis.from_url(self.redis_url)
        return self._redis

    async def __call__(self, client: Client, message: WorkerCommand) -> None:
        if isinstance(message, CreateWorker):
            await self.create(client, message)
            return
        handle = client.get_workflow_handle(worker_workflow_id(message.worker_id))
        reply = _reply_to(message)
        try:
            if isinstance(message, SendMessage):
                payload = WorkerMessage(
                    message=message.message, timeout_s=message.timeout, reply=reply
                )
                await handle.signal(WORKER_QUEUE_MESSAGE, payload)
            elif isinstance(message, SendFile):
                file = WorkerFile(path=message.path, content=message.content, reply=reply)
                await handle.signal(WORKER_QUEUE_FILE, file)
            elif isinstance(message, DeleteWorker):
                await handle.signal(WORKER_DELETE, WorkerDelete(reply=reply))
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            await self.answer(reply, message.worker_id, f"no Worker {message.worker_id} is running")

    async def create(self, client: Client, message: CreateWorker) -> None:
        config = message.config
        worker_id = message.request_id
        await client.start_workflow(
            WORKER_WORKFLOW,
            WorkerInput(
                worker_id=worker_id,
                agent=config.agent,
                name=config.name,
                capabilities=config.capabilities,
                env_refs=config.env_refs,
                instructions=config.instructions,
                reply=_reply_to(message),
            ),
            id=worker_workflow_id(worker_id),
            task_queue=self.task_queue,
            id_reuse_policy=REUSE_POLICY,
            static_summary=f"Worker {config.name} ({config.agent})",
        )

    async def answer(self, reply: ReplyTo, worker_id: str, error: str) -> None:
        response = WorkerResponse(
            request_id=reply.request_id,
            correlation_id=reply.correlation_id,
            success=False,
            worker_id=worker_id,
            error=error,
        )
        for stream in reply.streams:
            await self.redis().xadd(stream, response.to_fields())  # type: ignore[arg-type]


def routes(settings: Settings, redis: Redis | None = None) -> list[Route]:
    """The bridges' routes; ``redis`` answers commands for missing Workers (default: settings')."""
    queue = settings.temporal_task_queue
    return [
        Route(ENGINEERING_QUEUE, EngineeringMessage, partial(start_engineering, task_queue=queue)),
        Route(SCAFFOLDER_QUEUE, ScaffolderMessage, partial(start_scaffold, task_queue=queue)),
        Route(DEPLOY_QUEUE, DeployMessage, partial(start_deploy, task_queue=queue)),
        Route(
            ANSIBLE_DEPLOY_QUEUE,
            AnsibleDeployMessage,
            partial(start_ansible_deploy, task_queue=queue),
        ),
        Route(PROVISIONER_QUEUE, ProvisionerMessage, partial(start_provision, task_queue=queue)),
        # worker:responses has no route: a response does not name the workflow that asked.
        Route(
            WORKER_COMMANDS_QUEUE,
            WorkerCommand,
            WorkerCommands(settings, redis),
            order_key=worker_of,
        ),
    ]
