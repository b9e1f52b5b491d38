"""What runs inside a Worker container: its main process, files written into it, the key of a
PO Worker's CLI, and one turn of an agent's CLI.

A Worker has no network. Its main process is the forwarder (deploy/images/base/files): it
exposes the host sockets mounted into the container (the task's model gateway; for a PO Worker,
the API) on loopback ports, which the agent's CLI and the ``orchestrator`` CLI use as their base
URLs. No credential enters the container's environment.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable

from core.contracts.agents import AgentEvent, AgentResult
from infra.agents.base import DEFAULT_HOME, AgentAdapter, AgentRequest
from infra.containers import ContainerRuntime
from infra.errors import InfraError, refused
from infra.images import TOOLS_DIR, WORKER_HOME

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
# Where the scripted agent looks for its script when the Worker was made without one: a PO
# sends it with send_file (the adapter writes the same path when it has a script).
SCRIPTED_SCRIPT = posixpath.join(DEFAULT_HOME, "scripted-agent", "script.json")
# An agent turn's output kept for the result: the tail is what the parsers need.
MAX_LINES = 20_000


def forwarder_command(routes: list[tuple[int, str]], multi: bool) -> list[str]:
    """The Worker's main process: ``sleep`` when nothing is forwarded, else the forwarder on
    each (loopback port, socket inside the Worker) route.

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


async def write_file(
    runtime: ContainerRuntime, worker_id: str, path: str, content: str, mode: int
) -> None:
    """Write a file into the Worker (relative paths under /workspace), its directory first."""
    target = path if posixpath.isabs(path) else posixpath.join("/workspace", path)
    target = posixpath.normpath(target)
    made = await runtime.exec(
        worker_id, ["mkdir", "-p", posixpath.dirname(target)], workdir="/", timeout=30
    )
    if made.exit_code != 0:
        raise refused(
            f"cannot make the directory of {target}: {made.stderr.strip()}", "BadWorkerInput"
        )
    await runtime.put_file(worker_id, target, content.encode(), mode)


async def give_cli_key(runtime: ContainerRuntime, worker_id: str, key: str) -> None:
    """The ``orchestrator`` CLI's key as a 0600 file of the Worker's user where the CLI looks,
    once the forwarder to the API listens (the CLI's first call must not find it closed)."""
    made = await runtime.exec(
        worker_id, ["mkdir", "-p", "-m", "700", CLI_HOME], workdir="/", timeout=30
    )
    if made.exit_code != 0:
        raise InfraError(f"cannot make {CLI_HOME}: {made.stderr.strip()}")
    await runtime.put_file(worker_id, CLI_KEY_FILE, f"{key}\n".encode(), 0o600)
    # The container's main process has only just started.
    waited = await runtime.exec(
        worker_id,
        ["python3", "-I", "-S", "-c", _WAIT_FOR_PORT, str(API_PORT)],
        workdir="/",
        timeout=FORWARDER_WAIT_S + 10,
    )
    if waited.exit_code != 0:
        raise InfraError(f"the Worker's forwarder does not listen: {waited.stderr.strip()[-500:]}")


async def run_agent_turn(
    runtime: ContainerRuntime,
    worker_id: str,
    agent: str,
    adapter: AgentAdapter,
    request: AgentRequest,
    *,
    timeout_s: float,
    scripted_default: bool = False,
    on_event: Callable[[AgentEvent], None] | None = None,
    on_line: Callable[[str, int], None] | None = None,
) -> AgentResult:
    """One run of the agent's CLI in the Worker, its output folded into one result.

    ``on_event`` gets the CLI's live events (edits, commands, messages) as its output is parsed;
    ``on_line`` (stream, lines so far) every output line, e.g. to heartbeat.
    ``scripted_default``: the scripted agent reads the script a PO sent as a file.
    """
    command = adapter.command(request)
    env = dict(command.env)
    if scripted_default:
        env.setdefault("SCRIPTED_AGENT_SCRIPT", SCRIPTED_SCRIPT)
    for file in command.files:
        await write_file(runtime, worker_id, file.path, file.content, file.mode)
    lines: list[str] = []

    def take_line(stream: str, line: str) -> None:
        if stream == "stdout":
            lines.append(line)
            del lines[:-MAX_LINES]
            if on_event is not None:
                for event in adapter.parse_line(line):
                    on_event(event)
        if on_line is not None:
            on_line(stream, len(lines))

    result = await runtime.exec(
        worker_id,
        command.argv,
        env=env,
        workdir=command.cwd,
        timeout=timeout_s,
        on_line=take_line,
        # A turn orphaned by a killed worker process must not edit alongside this one.
        exclusive="agent-turn",
    )
    if result.timed_out:
        return AgentResult(
            status="failed", raw_error=f"the agent ran past its {timeout_s:g} s limit"
        )
    return adapter.result(lines, result.exit_code, workdir=command.cwd)
