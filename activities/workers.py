"""Activities of a Worker's life (workflows/worker.py): its container, its agent turns, its files.

The container is made by :class:`ContainerRuntime` (locked down, labelled with the Worker's own
workflow, so the reaper can remove it once that workflow closes). An agent that needs a model
reaches it through the task's gateway socket: its directory is mounted read-only at
``/run/orchestrator`` and the Worker's main process is the forwarder that exposes it on a loopback
port, the CLI's base URL. No credential enters the container, an input or a history.

Everything here is idempotent: creating returns the container already made for the worker id,
removing a missing container is fine, a retried agent turn plays the turn again (the CLIs and
the scripted agent leave the workspace as a retried turn expects).

A PO Worker (``CreateContainerInput.api``) also drives the ``orchestrator`` CLI: the API's Unix
socket directory is mounted read-only at ``/run/orchestrator-api`` and the forwarder exposes it on
another loopback port; the CLI is a bundle (activities/cli_bundle.py) mounted read-only and first
on ``PATH``. Its key, scoped to the chat, is made when the container is (re)created and written as
a 0600 file of the Worker's user where the CLI looks (``$ORCHESTRATOR_HOME/api_key``): never an
input, an output, a log line or the container's environment. Each creation makes a new key and
revokes the chat's older ones.
"""

from __future__ import annotations

import asyncio
import posixpath
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, Field
from redis.asyncio import Redis
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.agents import ADAPTERS, AgentEvent, AgentResult, get_adapter
from activities.agents.base import DEFAULT_HOME, AgentRequest
from activities.cli_bundle import default_root, ensure_bundle_async
from activities.containers import ContainerRuntime, Mount, WorkerNotFound, WorkerSpec
from activities.heartbeat import heartbeating
from activities.images import PATH, TOOLS_DIR, WORKER_HOME, ImageBuilder, ensure_async
from activities.slots import WorkerSlots
from activities.temporal import is_running
from api.problems import NotFound
from api.services.tasks import TaskNotFound, TaskService
from api.services.users import issue_session_key
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
# Inside a PO Worker: the API socket's directory, the forwarder's port for it, the CLI bundle,
# and the CLI's home (its key file).
API_MOUNT = "/run/orchestrator-api"
API_PORT = 8789
API_URL = f"http://127.0.0.1:{API_PORT}"
CLI_MOUNT = "/opt/orchestrator/cli"
CLI_HOME = posixpath.join(WORKER_HOME, ".orchestrator")
CLI_KEY_FILE = posixpath.join(CLI_HOME, "api_key")  # where Settings.read_api_key() looks
FORWARDER_WAIT_S = 20
# Run in the Worker: wait until something listens on each loopback port given.
_WAIT_FOR_PORT = f"""import socket, sys, time
deadline = time.monotonic() + {FORWARDER_WAIT_S}
for port in map(int, sys.argv[1:]):
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            break
        except OSError as exc:
            if time.monotonic() > deadline:
                sys.exit(f"nothing listens on 127.0.0.1:{{port}}: {{exc}}")
            time.sleep(0.05)
"""
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


def _forwarder_command(routes: list[tuple[int, str]], multi: bool) -> list[str]:
    """The Worker's main process: ``sleep`` when nothing is forwarded, else the forwarder.

    A Worker without API access keeps the single-route form it always had."""
    if not routes:
        return ["sleep", "infinity"]
    command = ["python3", f"{TOOLS_DIR}/forwarder.py"]
    if not multi:
        ((port, socket),) = routes
        return [*command, "--listen", f"127.0.0.1:{port}", "--socket", socket]
    for port, socket in routes:
        command += ["--route", f"127.0.0.1:{port}={socket}"]
    return command


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
        env: dict[str, str] = {}
        # The forwarder keeps the container alive and is the agent's way to its model and the
        # CLI's to the API.
        routes: list[tuple[int, str]] = []
        if uses_model(request.agent):
            socket = await self._open_gateway(request.task_id, request.budget)
            mounts.append(Mount(source=socket.parent, target=GATEWAY_MOUNT, read_only=True))
            routes.append((FORWARDER_PORT, f"{GATEWAY_MOUNT}/{socket.name}"))
        if request.api is not None:
            api_mounts, env = await self._api_access(request.worker_id, request.api)
            mounts += api_mounts
            routes.append((API_PORT, f"{API_MOUNT}/{self.settings.api_socket.name}"))
        spec = WorkerSpec(
            image=image,
            worker_id=request.worker_id,
            task_id=request.task_id,
            workflow_id=request.workflow_id,
            workspace=workspace,
            mounts=mounts,
            env=env,
            command=_forwarder_command(routes, request.api is not None),
        )
        runtime = await self.runtime()
        container_id = await runtime.create_worker(spec)
        if request.api is not None:
            # After the container exists, also when it already did (a retry): a fresh key.
            await self._give_key(runtime, request.worker_id, request.api)
        return container_id

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
        made = await runtime.exec(
            worker_id, ["mkdir", "-p", "-m", "700", CLI_HOME], workdir="/", timeout=30
        )
        if made.exit_code != 0:
            raise ApplicationError(f"cannot make {CLI_HOME}: {made.stderr.strip()}")
        await runtime.put_file(worker_id, CLI_KEY_FILE, f"{key}\n".encode(), 0o600)
        log.info("worker api key written", worker_id=worker_id, chat_id=api.chat_id)
        # The container's main process has only just started: the CLI's first call must not
        # find the port closed.
        waited = await runtime.exec(
            worker_id,
            ["python3", "-I", "-S", "-c", _WAIT_FOR_PORT, str(API_PORT)],
            workdir="/",
            timeout=FORWARDER_WAIT_S + 10,
        )
        if waited.exit_code != 0:
            raise ApplicationError(
                f"the Worker's forwarder does not listen: {waited.stderr.strip()[-500:]}"
            )

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
        return bool(workflow_id) and await is_running(self.client, workflow_id)
