"""Activities of a Worker's life (workflows/worker.py): its container, its agent turns, its files.

The container is made by :class:`ContainerRuntime` (locked down, labelled with the Worker's own
workflow, so the reaper can remove it once that workflow closes). Every Worker reaches the task's
gateway socket: its directory is mounted read-only at ``/run/orchestrator`` and the Worker's main
process is the forwarder that exposes it on a loopback port, the agent CLI's base URL and the
package registries' (pip, uv and npm are pointed there by the Worker's environment); the task's
egress proxy in the same directory is exposed as the Worker's HTTP(S) proxy. No credential enters
the container, an input or a history.

Everything here is idempotent: creating returns the container already made for the worker id,
removing a missing container is fine, a retried agent turn plays the turn again (the CLIs and
the scripted agent leave the workspace as a retried turn expects).

A PO Worker (``CreateContainerInput.api``) also drives the ``orchestrator`` CLI: the API's Unix
socket directory is mounted read-only at ``/run/orchestrator-api`` and the forwarder exposes it on
another loopback port; the CLI is a bundle (infra/cli_bundle.py) mounted read-only and first
on ``PATH``. Its key, scoped to the chat, is made when the container is (re)created and written as
a 0600 file of the Worker's user where the CLI looks (``$ORCHESTRATOR_HOME/api_key``): never an
input, an output, a log line or the container's environment. Each creation makes a new key and
revokes the chat's older ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, Field
from redis.asyncio import Redis
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities import heartbeating, infra_failures
from core.contracts.agents import AgentEvent, AgentResult, Budget
from core.contracts.worker import WorkerResponse
from core.logging import get_logger
from core.settings import Settings
from core.temporal import is_running
from db.errors import NotFound
from db.tasks import TaskService
from db.users import issue_session_key
from gateway import EGRESS_SOCKET_NAME
from gateway.server import Gateway, socket_path_for
from infra.agents import ADAPTERS, get_adapter
from infra.agents.base import AgentRequest
from infra.cli_bundle import default_root, ensure_bundle_async
from infra.containers import ContainerRuntime, Mount, WorkerNotFound, WorkerSpec
from infra.images import PATH, ImageBuilder, ensure_async, service_image
from infra.workers import (
    API_MOUNT,
    API_PORT,
    API_URL,
    CA_BUNDLE_TARGET,
    CA_ENV,
    CLI_HOME,
    CLI_MOUNT,
    DEPENDENCIES_MOUNT,
    DEPENDENCY_CACHE_ENV,
    EGRESS_ENV,
    EGRESS_PORT,
    FORWARDER_PORT,
    GATEWAY_MOUNT,
    MODEL_BASE_URL,
    REGISTRY_ENV,
    UV_CONFIG_TARGET,
    forwarder_command,
    give_cli_key,
    run_agent_turn,
    write_file,
    write_uv_config,
)

log = get_logger("activities.workers")

RESPONSES_MAXLEN = 100_000


class ApiAccess(BaseModel):
    """A Worker that may use the ``orchestrator`` CLI: the API's socket is mounted into it and
    the CLI acts with a key scoped to the chat's user (made here, never in an input)."""

    user_id: str = Field(description="The orchestrator user the CLI acts as")
    chat_id: int = Field(description="The chat the key is scoped to")
    allowed_commands: str = Field(
        default="PRODUCT_OWNER", description="ALLOWED_COMMANDS inside the Worker"
    )


class CreateContainerInput(BaseModel):
    worker_id: str
    task_id: str
    workflow_id: str = Field(description="The Worker's own workflow: the reaper checks it")
    agent: str
    image: str | None = None
    workspace: str | None = None
    budget: Budget = Field(default_factory=Budget)
    api: ApiAccess | None = None
    project_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$",
        description="The project whose dependency caches the Worker shares with its other tasks",
    )


class AgentTurnInput(BaseModel):
    worker_id: str
    task_id: str
    agent: str
    prompt: str
    agent_options: dict[str, object] = Field(default_factory=dict)
    instructions: str | None = None
    model: str | None = None
    timeout_s: float = 600.0
    budget: Budget = Field(default_factory=Budget)


class WriteFileInput(BaseModel):
    worker_id: str
    path: str
    content: str
    mode: int = 0o644


class PublishInput(BaseModel):
    streams: list[str]
    response: WorkerResponse


def _bad_input(message: str) -> ApplicationError:
    return ApplicationError(message, type="BadWorkerInput", non_retryable=True)


class WorkerActivities:
    """The Worker activities of one worker process.

    The container runtime and the image builder are made on first use: a worker process that
    never runs a Worker needs no container service.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        redis: Redis,
        client: Client,
        gateway: Gateway | None = None,
        runtime: ContainerRuntime | None = None,
        images: Callable[[ContainerRuntime], ImageBuilder] | None = None,
        tasks: TaskService | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.client = client
        self.gateway = gateway
        self.tasks = tasks  # to issue a PO Worker's API key
        self._runtime = runtime
        self._images = images
        self._builder: ImageBuilder | None = None

    async def runtime(self) -> ContainerRuntime:
        if self._runtime is None:
            # Connecting asks the service its API version: blocking.
            self._runtime = await asyncio.to_thread(ContainerRuntime.from_settings, self.settings)
        return self._runtime

    async def service_image(self, service: str) -> str:
        """The image of a backing service a project's tests use (built here on first use)."""
        return await self._image(service_image(service))

    async def _image(self, agent: str) -> str:
        runtime = await self.runtime()
        if self._builder is None:
            make = self._images or (
                lambda r: ImageBuilder(r.client, self.settings.home_dir / "images")
            )
            self._builder = make(runtime)
        async with heartbeating(f"image {agent}"):
            return (await ensure_async(self._builder, agent)).reference

    def _socket(self, task_id: str) -> Path:
        return socket_path_for(self.settings.home_dir / "run", task_id)

    async def _open_gateway(self, task_id: str, budget: Budget) -> Path:
        if self.gateway is None:
            raise ApplicationError(
                "this worker process serves no model gateway", type="NoGateway", non_retryable=True
            )
        path = self._socket(task_id)
        # Idempotent; after a crash of the process that served it, this binds the socket again.
        await self.gateway.open(task_id, path, budget)
        return path

    # --- the container --------------------------------------------------------------------------

    @activity.defn
    async def create_container(self, request: CreateContainerInput) -> str:
        """Create (or find) and start the Worker's container; returns its id."""
        if request.agent not in ADAPTERS:
            raise _bad_input(f"unknown agent {request.agent!r}; known: {sorted(ADAPTERS)}")
        workspace = Path(request.workspace) if request.workspace else None
        if workspace is not None and not workspace.is_dir():
            raise _bad_input(f"the workspace {workspace} is not a directory")
        image = request.image or await self._image(request.agent)
        mounts: list[Mount] = []
        # The forwarder keeps the container alive and is the Worker's way to the task's gateway
        # (the agent's model, every Worker's package registries), its egress proxy, and the
        # CLI's to the API.
        socket = await self._open_gateway(request.task_id, request.budget)
        mounts.append(Mount(source=socket.parent, target=GATEWAY_MOUNT, read_only=True))
        routes = [
            (FORWARDER_PORT, f"{GATEWAY_MOUNT}/{socket.name}"),
            (EGRESS_PORT, f"{GATEWAY_MOUNT}/{EGRESS_SOCKET_NAME}"),
        ]
        uv_config = write_uv_config(self.settings.home_dir / "workers")
        mounts.append(Mount(source=uv_config, target=UV_CONFIG_TARGET, read_only=True))
        env: dict[str, str] = REGISTRY_ENV | EGRESS_ENV | CA_ENV
        if self.settings.worker_ca_bundle is not None:
            bundle = self.settings.worker_ca_bundle.resolve()
            mounts.append(Mount(source=bundle, target=CA_BUNDLE_TARGET, read_only=True))
        if request.api is not None:
            api_mounts, api_env = await self._api_access(request.worker_id, request.api)
            mounts += api_mounts
            env |= api_env
            routes.append((API_PORT, f"{API_MOUNT}/{self.settings.api_socket.name}"))
        if request.project_id is not None:
            mounts.append(self._dependencies(request.project_id))
            env |= DEPENDENCY_CACHE_ENV
        spec = WorkerSpec(
            image=image,
            worker_id=request.worker_id,
            task_id=request.task_id,
            workflow_id=request.workflow_id,
            workspace=workspace,
            mounts=mounts,
            env=env,
            command=forwarder_command(routes, request.api is not None),
        )
        runtime = await self.runtime()
        container_id = await runtime.create_worker(spec)
        if request.api is not None:
            # After the container exists, also when it already did (a retry): a fresh key.
            await self._give_key(runtime, request.worker_id, request.api)
        return container_id

    def _dependencies(self, project_id: str) -> Mount:
        """The project's dependency directory (package caches, the Tester's environments), made
        on first use; every task of the project mounts the same one."""
        path = self.settings.home_dir / "dependencies" / project_id
        path.mkdir(parents=True, exist_ok=True)
        return Mount(source=path, target=DEPENDENCIES_MOUNT, read_only=False, worker_owns=True)

    async def _api_access(
        self, worker_id: str, api: ApiAccess
    ) -> tuple[list[Mount], dict[str, str]]:
        """The mounts and environment of a Worker that drives the ``orchestrator`` CLI."""
        if self.tasks is None:
            raise ApplicationError(
                "this worker process has no database to issue the Worker's API key",
                type="NoDatabase",
                non_retryable=True,
            )
        bundle = await ensure_bundle_async(default_root(self.settings))
        # The API makes the socket; its directory must exist to be mounted before it does.
        socket_dir = self.settings.api_socket.parent
        socket_dir.mkdir(parents=True, exist_ok=True)
        mounts = [
            Mount(source=socket_dir, target=API_MOUNT, read_only=True),
            Mount(source=bundle.path, target=CLI_MOUNT, read_only=True),
        ]
        env = {
            "PATH": f"{CLI_MOUNT}/bin:{PATH}",
            "ORCHESTRATOR_HOME": CLI_HOME,
            "ORCHESTRATOR_API_URL": API_URL,
            "ALLOWED_COMMANDS": api.allowed_commands,
            "ORCHESTRATOR_CHAT_ID": str(api.chat_id),
            "ORCHESTRATOR_WORKER_ID": worker_id,
        }
        return mounts, env

    async def _give_key(self, runtime: ContainerRuntime, worker_id: str, api: ApiAccess) -> None:
        """A new key for the chat (the older ones revoked), as a 0600 file of the Worker's user."""
        assert self.tasks is not None  # checked by _api_access
        try:
            async with self.tasks.db.session() as session:
                key = await issue_session_key(session, user_id=api.user_id, chat_id=api.chat_id)
        except NotFound as exc:
            raise _bad_input(str(exc.detail)) from None
        with infra_failures():
            await give_cli_key(runtime, worker_id, key)
        log.info("worker api key written", worker_id=worker_id, chat_id=api.chat_id)

    @activity.defn
    async def remove_container(self, worker_id: str) -> bool:
        """Remove the Worker's container and its sidecars (running or not); False when there
        was none. (Its workflow gives its turn back: workflows/toolkit.py.)"""
        return await (await self.runtime()).remove(worker_id)

    # --- work inside it -------------------------------------------------------------------------

    @activity.defn
    async def run_agent_turn(self, turn: AgentTurnInput) -> AgentResult:
        """Run the agent's CLI once on ``turn.prompt``; heartbeats with every output line."""
        return await self.agent_turn(turn)

    async def agent_turn(
        self, turn: AgentTurnInput, on_event: Callable[[AgentEvent], None] | None = None
    ) -> AgentResult:
        """The body of ``run_agent_turn``, for other activities too; ``on_event`` gets the CLI's
        live events (edits, commands, messages) as its output is parsed."""
        try:
            adapter = get_adapter(turn.agent, **turn.agent_options)
        except (ValueError, TypeError) as exc:
            raise _bad_input(str(exc)) from None
        # Again before each turn: after a crash of the process that served it, this binds it anew.
        await self._open_gateway(turn.task_id, turn.budget)
        request = AgentRequest(
            prompt=turn.prompt,
            model_base_url=MODEL_BASE_URL,
            instructions=turn.instructions,
            model=turn.model,
        )
        runtime = await self.runtime()
        try:
            with infra_failures():
                async with heartbeating("agent turn"):
                    return await run_agent_turn(
                        runtime,
                        turn.worker_id,
                        turn.agent,
                        adapter,
                        request,
                        timeout_s=turn.timeout_s,
                        scripted_default=turn.agent == "scripted"
                        and "script" not in turn.agent_options,
                        on_event=on_event,
                        on_line=lambda stream, count: activity.heartbeat(stream, count),
                    )
        except WorkerNotFound as exc:
            raise ApplicationError(str(exc), type="WorkerNotFound", non_retryable=True) from None

    @activity.defn
    async def write_file(self, request: WriteFileInput) -> None:
        """Write a file into the Worker, making its directory first."""
        runtime = await self.runtime()
        try:
            with infra_failures():
                await write_file(
                    runtime, request.worker_id, request.path, request.content, request.mode
                )
        except WorkerNotFound as exc:
            raise ApplicationError(str(exc), type="WorkerNotFound", non_retryable=True) from None

    # --- answers and the reaper -----------------------------------------------------------------

    @activity.defn
    async def publish_response(self, request: PublishInput) -> None:
        """XADD the response to each stream (at least once: readers match on request_id)."""
        fields = request.response.to_fields()
        for stream in dict.fromkeys(request.streams):
            await self.redis.xadd(stream, fields, maxlen=RESPONSES_MAXLEN, approximate=True)  # type: ignore[arg-type]

    @activity.defn
    async def reap_workers(self) -> list[str]:
        """Remove the containers whose workflow is closed (or unknown); returns their ids."""
        runtime = await self.runtime()
        return await runtime.reap(self._is_open)

    async def _is_open(self, workflow_id: str) -> bool:
        return bool(workflow_id) and await is_running(self.client, workflow_id)
