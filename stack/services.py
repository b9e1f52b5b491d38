"""What the embedded stack is made of: each service's command line, address and health probe.

The supervisor starts these in order and ``orchestrator status`` probes them again from the state
file, so a probe is plain data (:class:`Probe`) that either side can run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import docker
import httpx
import redis

from core.readiness import ready_file
from core.settings import Settings
from stack import podman

TEMPORAL = "temporal"
REDIS = "redis"
API = "api"
TEMPORAL_WORKER = "temporal-worker"
BRIDGES = "bridges"
BOT = "bot"
DATABASE = "database"
CONTAINERS = "containers"

PROBE_TIMEOUT = 1.0


@dataclass(frozen=True)
class Probe:
    """How to tell a service is healthy.

    kind ``tcp``: ``target`` is host:port; ``redis``: a Redis URL answering PING; ``http``: a URL
    answering 200; ``ready``: the ready file ``target`` holds the service's PID; ``docker``: a
    Docker API URL answering ``GET /_ping``; ``none``: no check.
    """

    kind: str
    target: str = ""

    def check(self, pid: int | None = None) -> bool:
        try:
            return _CHECKS[self.kind](self.target, pid)
        except Exception:
            return False


def _tcp(target: str, _pid: int | None) -> bool:
    host, _, port = target.rpartition(":")
    with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), PROBE_TIMEOUT):
        return True


def _redis(target: str, _: int | None) -> bool:
    client = redis.Redis.from_url(
        target, socket_timeout=PROBE_TIMEOUT, socket_connect_timeout=PROBE_TIMEOUT
    )
    try:
        return bool(client.ping())
    finally:
        client.close()


def _http(target: str, _: int | None) -> bool:
    return httpx.get(target, timeout=PROBE_TIMEOUT).status_code == 200


def _docker(target: str, _: int | None) -> bool:
    # A fixed API version: the client would otherwise ask the server for it first.
    client = docker.APIClient(base_url=target, version="1.41", timeout=PROBE_TIMEOUT)
    try:
        return bool(client.ping())
    finally:
        client.close()


def _ready(target: str, pid: int | None) -> bool:
    return pid is not None and Path(target).read_text().strip() == str(pid)


_CHECKS = {
    "tcp": _tcp,
    "redis": _redis,
    "http": _http,
    "ready": _ready,
    "docker": _docker,
    "none": lambda _target, _pid: True,
}


@dataclass(frozen=True)
class Service:
    """One child process of the stack."""

    name: str
    argv: list[str]
    address: str
    probe: Probe
    start_timeout: float
    # Ports it binds, checked free before it starts so a stranger is never mistaken for it.
    ports: tuple[int, ...] = ()
    # Files where its own logs go (besides <name>.out, which captures stdout and stderr).
    logs: tuple[str, ...] = ()
    ready_file: str | None = None
    # Variables of its own, over the stack's common environment.
    env: dict[str, str] = field(default_factory=dict)
    # Its working directory; None: the supervisor's.
    cwd: Path | None = None

    def out_file(self, settings: Settings) -> Path:
        return settings.logs_dir / f"{self.name}.out"

    def log_files(self, settings: Settings) -> list[str]:
        return [*self.logs, str(self.out_file(settings))]


@dataclass(frozen=True)
class External:
    """A server the stack uses but does not run (TEMPORAL_ADDRESS, REDIS_URL, DATABASE_URL)."""

    name: str
    address: str
    probe: Probe = field(default_factory=lambda: Probe("none"))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address, "probe": asdict(self.probe)}


def venv_bin(name: str) -> str:
    """A binary installed beside this interpreter (the venv), else one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name) or str(beside)


def _log(settings: Settings, name: str) -> str:
    return str(settings.logs_dir / f"{name}.log")


def temporal(settings: Settings) -> Service:
    argv = [
        venv_bin("temporal"),
        *("server", "start-dev"),
        *("--db-filename", str(settings.temporal_db_file)),
        *("--ip", settings.host),
        *("--port", str(settings.temporal_port)),
        *("--ui-port", str(settings.temporal_ui_port)),
        "--ui-disable-news-fetch",
        # Measured ~2.3x the workflow starts/s of SQLite's default rollback journal.
        *("--sqlite-pragma", "journal_mode=wal"),
        *("--sqlite-pragma", "synchronous=normal"),
        *("--log-level", "warn"),
    ]
    if settings.temporal_namespace != "default":
        argv += ["--namespace", settings.temporal_namespace]
    address = f"{settings.host}:{settings.temporal_port}"
    return Service(
        name=TEMPORAL,
        argv=argv,
        address=address,
        probe=Probe("tcp", address),
        start_timeout=60,
        ports=(settings.temporal_port, settings.temporal_ui_port),
    )


def redis_server(settings: Settings) -> Service:
    argv = [
        shutil.which("redis-server") or "redis-server",
        *("--port", str(settings.redis_port)),
        *("--bind", settings.host),
        *("--dir", str(settings.redis_dir)),
        # The append-only file keeps queued messages across a restart.
        *("--appendonly", "yes"),
        *("--save", ""),
        *("--daemonize", "no"),
        *("--logfile", _log(settings, REDIS)),
    ]
    return Service(
        name=REDIS,
        argv=argv,
        address=f"{settings.host}:{settings.redis_port}",
        probe=Probe("redis", settings.effective_redis_url),
        start_timeout=30,
        ports=(settings.redis_port,),
        logs=(_log(settings, REDIS),),
    )


def podman_root(settings: Settings) -> Path:
    """Where the embedded container service keeps its configuration, images and socket."""
    return settings.home_dir / "podman"


def docker_socket(settings: Settings) -> Path:
    return podman_root(settings) / podman.SOCKET_NAME


def effective_docker_host(settings: Settings) -> str:
    return settings.docker_host or f"unix://{docker_socket(settings)}"


def containers(settings: Settings) -> Service:
    """Podman serving the Docker API that Workers are created through."""
    root = podman_root(settings)
    address = f"unix://{docker_socket(settings)}"
    return Service(
        name=CONTAINERS,
        argv=podman.service_argv(docker_socket(settings)),
        address=address,
        probe=Probe("docker", address),
        start_timeout=60,
        env=podman.config_env(root),
        # conmon leaves files (an ``oom`` marker when a Worker's process is OOM-killed) in its
        # working directory: its own, not wherever `up` was run.
        cwd=root,
    )


def python_service(
    settings: Settings, name: str, module: str, address: str, probe: Probe | None = None
) -> Service:
    ready = str(ready_file(settings, name))
    return Service(
        name=name,
        argv=[sys.executable, "-m", module],
        address=address,
        probe=probe or Probe("ready", ready),
        start_timeout=60,
        ports=(settings.api_port,) if name == API else (),
        logs=(_log(settings, name),),
        ready_file=ready,
    )


def infrastructure(settings: Settings) -> list[Service]:
    """The servers to start before anything can be set up: those not given as addresses."""
    services = []
    if not settings.temporal_address:
        services.append(temporal(settings))
    if not settings.redis_url:
        services.append(redis_server(settings))
    if not settings.docker_host:
        services.append(containers(settings))
    return services


def applications(settings: Settings) -> list[Service]:
    """Our own processes, started once the database is migrated and Temporal is prepared."""
    api = settings.effective_api_url
    # The Temporal worker polls a task queue; the bridges read Redis: that is where they are.
    queue = f"{settings.temporal_task_queue}@{settings.effective_temporal_address}"
    redis_address = _redact(settings.effective_redis_url)
    found = [
        python_service(settings, API, "api", api, Probe("http", f"{api}/health")),
        python_service(settings, TEMPORAL_WORKER, "stack.temporal_worker", queue),
        python_service(settings, BRIDGES, "bridges", redis_address),
    ]
    if settings.telegram_token is not None:
        # After the API: the bot's first look-ups go there. Ready once updates can arrive.
        where = settings.telegram_webhook_url or f"polling {settings.telegram_api_url}"
        found.append(python_service(settings, BOT, "bot", where))
    return found


def externals(settings: Settings) -> list[External]:
    found = []
    if settings.temporal_address:
        found.append(
            External(TEMPORAL, settings.temporal_address, Probe("tcp", settings.temporal_address))
        )
    if settings.redis_url:
        found.append(
            External(REDIS, _redact(settings.redis_url), Probe("redis", settings.redis_url))
        )
    if settings.database_url:
        found.append(External(DATABASE, _redact(settings.database_url)))
    if settings.docker_host:
        probe = Probe("docker", settings.docker_host)
        found.append(External(CONTAINERS, _redact(settings.docker_host), probe))
    return found


def _redact(url: str) -> str:
    """Hide a password in a URL shown to people or written to the state file."""
    with contextlib.suppress(Exception):
        parsed = httpx.URL(url)
        if parsed.password:
            return str(parsed.copy_with(password="***"))
    return url


def child_env(settings: Settings) -> dict[str, str]:
    """The environment of every child: one home and the same addresses, so all of them agree."""
    env = dict(os.environ)
    effective = {
        "HOME": str(settings.home_dir),
        "HOST": settings.host,
        "API_PORT": str(settings.api_port),
        "TEMPORAL_PORT": str(settings.temporal_port),
        "TEMPORAL_UI_PORT": str(settings.temporal_ui_port),
        "REDIS_PORT": str(settings.redis_port),
        "TEMPORAL_NAMESPACE": settings.temporal_namespace,
        "TEMPORAL_UI_URL": settings.effective_temporal_ui_url,
        "API_URL": settings.effective_api_url,
    }
    addresses = {
        "DATABASE_URL": settings.effective_database_url,
        "REDIS_URL": settings.effective_redis_url,
        "TEMPORAL_ADDRESS": settings.effective_temporal_address,
        "DOCKER_HOST": effective_docker_host(settings),
    }
    env.update({f"ORCHESTRATOR_{key}": value for key, value in {**effective, **addresses}.items()})
    # The bare names too: Settings reads either, and so may tools run by the services.
    env.update(addresses)
    env["PYTHONUNBUFFERED"] = "1"
    return env
