"""``orchestrator worker run``: a Temporal worker on this host, joining a running deployment.

It creates no stack: it connects to the Temporal, Redis and database the environment names
(``TEMPORAL_ADDRESS``, ``REDIS_URL``, ``DATABASE_URL``, the same as the stack's other processes)
and polls the base task queue, plus the queue of each capability this host has: ``containers``
(a container engine for Workers: ``DOCKER_HOST``) and ``ansible`` (playbooks over SSH to the
servers). It becomes the process ``python -m stack.temporal_worker`` (exec: the same PID, so
signals and the ready file are its own); the stack's own Temporal worker is one too.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.output import UNREACHABLE, USAGE, CliError, JsonOption, Output, command

if TYPE_CHECKING:
    from core.settings import Settings

app = typer.Typer(
    help="Temporal workers: run one on this host, joining a running deployment.",
    no_args_is_help=True,
)

# core.task_queues.CAPABILITIES, repeated: importing core here would load it for `--help`.
KNOWN = ("containers", "ansible")
VARIABLE = "ORCHESTRATOR_WORKER_CAPABILITIES"

CapabilitiesOption = Annotated[
    str | None,
    typer.Option(
        "--capabilities",
        help="What this host takes besides the rest, comma-separated: containers, ansible; "
        f'"" for neither. Default: {VARIABLE}, else both.',
    ),
]


def parse_capabilities(text: str) -> list[str]:
    wanted = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [name for name in wanted if name not in KNOWN]
    if unknown:
        raise CliError(
            USAGE,
            f"unknown capability {', '.join(map(repr, unknown))}",
            f"known: {', '.join(KNOWN)}",
        )
    return wanted


def check_container_engine(settings: Settings) -> str:
    """The Docker API this host's Workers are made through; exit 4 when none answers (a host
    that says it has containers but has no engine would fail every Worker it takes)."""
    import docker
    import docker.errors

    from cli.images import docker_host

    url = docker_host(settings)
    try:
        client = docker.DockerClient(base_url=url, timeout=10)
        try:
            client.ping()
        finally:
            client.close()
    except docker.errors.DockerException as exc:
        raise CliError(
            UNREACHABLE,
            f"no Docker API answers at {url}, and this host would take Worker containers",
            f"Set DOCKER_HOST to a Docker engine or podman socket, or leave out the containers "
            f"capability. ({exc})",
        ) from None
    return url


@command(app, "run")
def run(capabilities: CapabilitiesOption = None, json_output: JsonOption = False) -> None:
    """Poll the deployment's task queues until SIGTERM or SIGINT (exit 0; 1 when it fails).

    Prints where it connects and which queues it polls, then logs to
    <home>/logs/temporal-worker.log and marks <home>/run/temporal-worker.ready once polling.
    """
    out = Output(json_output)
    # The worker reads its settings from the environment, as every service does: it gets this
    # one's, with the capabilities asked for (this process's own stays as it was).
    environment = dict(os.environ)
    if capabilities is not None:
        environment[VARIABLE] = ",".join(parse_capabilities(capabilities))
    from pydantic import ValidationError

    from core.settings import Settings
    from core.task_queues import capability_queue

    try:
        settings = Settings(worker_capabilities=environment.get(VARIABLE, ",".join(KNOWN)))
    except ValidationError as exc:
        raise CliError(USAGE, "invalid settings", str(exc)) from None
    base = settings.temporal_task_queue
    info: dict[str, Any] = {
        "temporal_address": settings.effective_temporal_address,
        "namespace": settings.temporal_namespace,
        "capabilities": settings.worker_capabilities,
        "task_queues": [
            base,
            *(capability_queue(base, name) for name in settings.worker_capabilities),
        ],
        "docker_host": None,
        "log": str(settings.logs_dir / "temporal-worker.log"),
    }
    if "containers" in settings.worker_capabilities:
        info["docker_host"] = check_container_engine(settings)
    out.emit(
        info,
        lambda: out.say(
            f"Temporal worker for {info['temporal_address']} polling "
            f"{', '.join(info['task_queues'])}; log: {info['log']}"
        ),
    )
    sys.stdout.flush()
    sys.stderr.flush()
    # Exec rather than import: the CLI stays a client (no workflow code in its imports), and
    # the worker is the very service the stack runs, with this environment.
    os.execve(sys.executable, [sys.executable, "-m", "stack.temporal_worker"], environment)
