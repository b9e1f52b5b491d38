"""Activities of a Worker's life (workflows/worker.py): its container, its agent turns, its files.

The container is made by :class:`ContainerRuntime` (locked down, labelled with the Worker's own
workflow, so the reaper can remove it once that workflow closes). An agent that needs a model
reaches it through the task's gateway socket: its directory is mounted read-only at
``/run/orchestrator`` and the Worker's main process is the forwarder that exposes it on a loopback
port, the CLI's base URL. No credential enters the container, an input or a history.

Everything here is idempotent: creating returns the container already made for the worker id,
removing a missing container is fine, a retried agent turn plays the turn again (the CLIs and
the scripted agent leave the workspace as a retried turn expects).
"""

from __future__ import annotations

import asyncio
import posixpath
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, Field
from redis.asyncio import Redis
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.agents import ADAPTERS, AgentEvent, AgentResult, get_adapter
from activities.agents.base import DEFAULT_HOME, AgentRequest
from activities.containers import ContainerRuntime, Mount, WorkerNotFound, WorkerSpec
from activities.heartbeat import heartbeating
from activities.images import TOOLS_DIR, ImageBuilder, ensure_async
from activities.slots import WorkerSlots
from api.services.tasks import TaskNotFound, TaskService
from core.contracts.events import EventType
from core.contracts.worker import WorkerResponse
from core.logging import get_logger
from core.settings import Settings
from gateway.ledger import Budget
from gateway.server import Gateway, socket_path_for

log = get_logger("activities.workers")

# Inside the Worker: the gateway socket's directory, and the forwarder's loopback port.
GATEWAY_MOUNT = "/run/orchestrator"
FORWARDER_PORT = 8788
MODEL_BASE_URL = f"http://127.0.0.1:{FORWARDER_PORT}"
# Agents that call no model run without the gateway.
MODEL_FREE_AGENTS = frozenset({"scripted"})
# Where the scripted agent looks for its script when the Worker was made without one: a PO
# sends it with send_file (the adapter writes the same path when it has a script).
SCRIPTED_SCRIPT = posixpath.join(DEFAULT_HOME, "scripted-agent", "script.json")
RESPONSES_MAXLEN = 100_000
# An agent turn's output kept for the result: the tail is what the parsers need.
MAX_LINES = 20_000


def uses_model(agent: str) -> bool:
    return agent not in MODEL_FREE_AGENTS


class CreateContainerInput(BaseModel):
    worker_id: str
    task_id: str
    workflow_id: str = Field(description="The Worker's own workflow: the reaper checks it")
    agent: str
    image: str | None = None
    workspace: str | None = None
    budget: Budget = Field(default_factory=Budget)


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
        self.slots = WorkerSlots(redis, settings.max_workers)
        self.tasks = tasks  # to tell a task that its Worker waits for a slot
        self._runtime = runtime
        self._images = images
        self._builder: ImageBuilder | None = None

    async def runtime(self) -> ContainerRuntime:
        if self._runtime is None:
            # Connecting asks the service its API version: blocking.
            self._runtime = await asyncio.to_thread(ContainerRuntime.from_settings, self.settings)
        return self._runtime

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
        await self._take_slot(request)
        image = request.image or await self._image(request.agent)
        mounts: list[Mount] = []
        command = ["sleep", "infinity"]
        if uses_model(request.agent):
            socket = await self._open_gateway(request.task_id, request.budget)
            mounts.append(Mount(source=socket.parent, target=GATEWAY_MOUNT, read_only=True))
            # The forwarder keeps the container alive and is the agent's way to its model.
            command = [
                "python3",
                f"{TOOLS_DIR}/forwarder.py",
                "--listen",
                f"127.0.0.1:{FORWARDER_PORT}",
                "--socket",
                f"{GATEWAY_MOUNT}/{socket.name}",
            ]
        spec = WorkerSpec(
            image=image,
            worker_id=request.worker_id,
            task_id=request.task_id,
            workflow_id=request.workflow_id,
            workspace=workspace,
            mounts=mounts,
            command=command,
        )
        runtime = await self.runtime()
        return await runtime.create_worker(spec)

    async def _take_slot(self, request: CreateContainerInput) -> None:
        """Wait until fewer than ``max_workers`` Workers exist (each process counts the same)."""

        async def on_wait(in_use: int) -> None:
            message = (
                f"Waiting for a Worker slot: {in_use} of {self.settings.max_workers} in use "
                "(ORCHESTRATOR_MAX_WORKERS)"
            )
            log.info("waiting for a worker slot", worker_id=request.worker_id, in_use=in_use)
            if self.tasks is None:
                return
            try:
                await self.tasks.add_event(
                    request.task_id, EventType.progress, message, data={"in_use": in_use}
                )
            except TaskNotFound:  # a Worker of no task (worker:commands): the log says it
                pass

        waited = await self.slots.take(
            request.workflow_id,
            request.worker_id,
            self._is_open,
            on_wait,
            lambda: activity.heartbeat("waiting for a worker slot"),
        )
        if waited:
            log.info("worker slot taken", worker_id=request.worker_id, waited_s=round(waited, 1))

    @activity.defn
    async def remove_container(self, worker_id: str) -> bool:
        """Remove the Worker's container (running or not) and free its slot; False when there
        was no container."""
        removed = await (await self.runtime()).remove(worker_id)
        await self.slots.release_worker(worker_id)
        return removed

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
        if uses_model(turn.agent):
            await self._open_gateway(turn.task_id, turn.budget)
        request = AgentRequest(
            prompt=turn.prompt,
            model_base_url=MODEL_BASE_URL,
            instructions=turn.instructions,
            model=turn.model,
        )
        command = adapter.command(request)
        env = dict(command.env)
        if turn.agent == "scripted" and "script" not in turn.agent_options:
            env.setdefault("SCRIPTED_AGENT_SCRIPT", SCRIPTED_SCRIPT)
        runtime = await self.runtime()
        try:
            for file in command.files:
                await self._write(runtime, turn.worker_id, file.path, file.content, file.mode)
            lines: list[str] = []

            def on_line(stream: str, line: str) -> None:
                if stream == "stdout":
                    lines.append(line)
                    del lines[:-MAX_LINES]
                    if on_event is not None:
                        for event in adapter.parse_line(line):
                            on_event(event)
                activity.heartbeat(stream, len(lines))

            async with heartbeating("agent turn"):
                result = await runtime.exec(
                    turn.worker_id,
                    command.argv,
                    env=env,
                    workdir=command.cwd,
                    timeout=turn.timeout_s,
                    on_line=on_line,
                    # A turn orphaned by a killed worker process must not edit alongside this one.
                    exclusive="agent-turn",
                )
        except WorkerNotFound as exc:
            raise ApplicationError(str(exc), type="WorkerNotFound", non_retryable=True) from None
        if result.timed_out:
            return AgentResult(
                status="failed", raw_error=f"the agent ran past its {turn.timeout_s:g} s limit"
            )
        return adapter.result(lines, result.exit_code, workdir=command.cwd)

    @activity.defn
    async def write_file(self, request: WriteFileInput) -> None:
        """Write a file into the Worker, making its directory first."""
        runtime = await self.runtime()
        try:
            await self._write(
                runtime, request.worker_id, request.path, request.content, request.mode
            )
        except WorkerNotFound as exc:
            raise ApplicationError(str(exc), type="WorkerNotFound", non_retryable=True) from None

    @staticmethod
    async def _write(
        runtime: ContainerRuntime, worker_id: str, path: str, content: str, mode: int
    ) -> None:
        target = path if posixpath.isabs(path) else posixpath.join("/workspace", path)
        target = posixpath.normpath(target)
        made = await runtime.exec(
            worker_id, ["mkdir", "-p", posixpath.dirname(target)], workdir="/", timeout=30
        )
        if made.exit_code != 0:
            raise _bad_input(f"cannot make the directory of {target}: {made.stderr.strip()}")
        await runtime.put_file(worker_id, target, content.encode(), mode)

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
        removed = await runtime.reap(self._is_open)
        await self.slots.free_closed(self._is_open)
        return removed

    async def _is_open(self, workflow_id: str) -> bool:
        if not workflow_id:
            return False
        try:
            description = await self.client.get_workflow_handle(workflow_id).describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        return description.status == WorkflowExecutionStatus.RUNNING
