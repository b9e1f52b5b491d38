"""What the embedded stack is made of: each service's command line, address and health probe.

The supervisor starts these in order and ``orchestrator status`` probes them again from the state
file, so a probe is plain data (:class:`Probe`) that either side can run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker
import httpx
import redis

from core.readiness import ready_file
from core.secret_files import ensure_secret_file, new_password, private_dir
from core.settings import REDIS_USER, Settings
from stack import podman, registries

TEMPORAL = "temporal"
REDIS = "redis"
API = "api"
TEMPORAL_WORKER = "temporal-worker"
BRIDGES = "bridges"
BOT = "bot"
DATABASE = "database"
CONTAINERS = "containers"

PROBE_TIMEOUT = 1.0
# Variables of the package caches' private-upstream tokens (core.settings), by every name.
REGISTRY_TOKENS = (
    "ORCHESTRATOR_PYPI_INDEX_TOKEN",
    "ORCHESTRATOR_NPM_REGISTRY_TOKEN",
)


@dataclass(frozen=True)
class Probe:
    """How to tell a service is healthy.

    kind ``tcp``: ``target`` is host:port; ``redis``: a Redis URL answering PING, with the
    password in the file ``password_file`` (the probe is written to the state file: no password in
    it); ``http``: a URL answering 200; ``ready``: the ready file ``target`` holds the service's
    PID; ``docker``: a Docker API URL answering ``GET /_ping``; ``none``: no check.
    """

    kind: str
    target: str = ""
    password_file: str = ""

    def check(self, pid: int | None = None) -> bool:
        try:
            if self.kind == "redis":
                return _redis(self.target, self.password_file)
            return _CHECKS[self.kind](self.target, pid)
        except Exception:
            return False


def _tcp(target: str, _pid: int | None) -> bool:
    host, _, port = target.rpartition(":")
    with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), PROBE_TIMEOUT):
        return True


def _redis(target: str, password_file: str) -> bool:
    password = Path(password_file).read_text().strip() if password_file else None
    client = redis.Redis.from_url(
        target,
        password=password,
        socket_timeout=PROBE_TIMEOUT,
        socket_connect_timeout=PROBE_TIMEOUT,
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
    # Its file mode creation mask (0o077: what it writes only its owner reads); None: inherited.
    umask: int | None = None

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
        umask=0o077,  # its database holds every workflow's inputs and results
    )


def redis_config(settings: Settings) -> Path:
    return settings.redis_dir / "redis.conf"


def redis_server(settings: Settings) -> Service:
    # Everything is in the configuration file (write_redis_config), none of it on the command
    # line: every user of the machine can read command lines (ps).
    argv = [shutil.which("redis-server") or "redis-server", str(redis_config(settings))]
    url = f"redis://{REDIS_USER}@{settings.host}:{settings.redis_port}/0"
    return Service(
        name=REDIS,
        argv=argv,
        address=f"{settings.host}:{settings.redis_port}",
        probe=Probe("redis", url, password_file=str(settings.redis_password_file)),
        start_timeout=30,
        ports=(settings.redis_port,),
        logs=(_log(settings, REDIS),),
        umask=0o077,  # its append-only file holds every queued message
    )


def write_redis_config(settings: Settings) -> Path:
    """The embedded Redis's configuration (0600), written before each start.

    Its ACL shuts the default user out and lets in only ours, with the password of
    ``<home>/redis_password``: a process without it (another user's: the home is 0700) reads or
    writes no queue. The file holds the password's SHA-256, not the password.
    """
    password = ensure_secret_file(settings.redis_password_file, new_password)
    digest = hashlib.sha256(password.encode()).hexdigest()
    lines = [
        f"port {settings.redis_port}",
        f"bind {settings.host}",
        f"dir {_quoted(private_dir(settings.redis_dir))}",
        # The append-only file keeps queued messages across a restart.
        "appendonly yes",
        'save ""',
        "daemonize no",
        f"logfile {_quoted(_log(settings, REDIS))}",
        "user default off resetpass resetkeys resetchannels -@all",
        f"user {REDIS_USER} on #{digest} ~* &* +@all",
    ]
    path = redis_config(settings)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    temporary.replace(path)
    return path


def _quoted(value: str | Path) -> str:
    # Redis reads a double-quoted argument with C escapes, which JSON's are (left as UTF-8).
    return json.dumps(str(value), ensure_ascii=False)


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


def pypi_cache(settings: Settings) -> Service:
    """proxpi behind gunicorn: the PyPI cache Workers install through (stack/registries.py)."""
    address = settings.pypi_cache_url
    return Service(
        name=registries.PYPI_CACHE,
        argv=registries.pypi_cache_argv(settings, venv_bin("gunicorn")),
        address=address,
        probe=Probe("http", f"{address}/health"),
        start_timeout=60,
        ports=(settings.pypi_cache_port,),
        env=registries.pypi_cache_env(settings),  # a private index's token: only here
        cwd=registries.pypi_cache_dir(settings),
        umask=0o077,
    )


def npm_cache(settings: Settings) -> Service:
    """verdaccio: the npm cache Workers install through; its configuration is written to the
    home before each start (the supervisor), its uplink's token only in its environment."""
    address = settings.npm_cache_url
    config = registries.npm_cache_dir(settings) / "config.yaml"
    return Service(
        name=registries.NPM_CACHE,
        argv=registries.npm_cache_argv(settings, config),
        address=address,
        probe=Probe("http", f"{address}/-/ping"),
        start_timeout=60,
        ports=(settings.npm_cache_port,),
        env=registries.npm_cache_env(settings),
        cwd=registries.npm_cache_dir(settings),
        umask=0o077,
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
    # Before the Temporal worker: the first Worker may install packages.
    services += [pypi_cache(settings), npm_cache(settings)]
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
        found.append(External(REDIS, _redact(settings.redis_url), _tcp_probe(settings.redis_url)))
    if settings.database_url:
        found.append(External(DATABASE, _redact(settings.database_url)))
    if settings.docker_host:
        probe = Probe("docker", settings.docker_host)
        found.append(External(CONTAINERS, _redact(settings.docker_host), probe))
    return found


def _tcp_probe(url: str) -> Probe:
    """Whether a given server's port answers: its URL may hold a password, which a probe (written
    to the state file) must not."""
    parsed = urlsplit(url)
    if not parsed.hostname:
        return Probe("none")
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    return Probe("tcp", f"{host}:{parsed.port or 6379}")


def _redact(url: str) -> str:
    """Hide a password in a URL shown to people or written to the state file."""
    with contextlib.suppress(Exception):
        parsed = httpx.URL(url)
        if parsed.password:
            # The user stays: which ACL user a service is matters when reading `status`.
            return str(parsed.copy_with(username=parsed.username, password="***"))
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
        "PYPI_CACHE_PORT": str(settings.pypi_cache_port),
        "NPM_CACHE_PORT": str(settings.npm_cache_port),
        # The gateway (in the Temporal worker) forwards Workers' registry requests here.
        "PYPI_CACHE_URL": settings.pypi_cache_url,
        "NPM_CACHE_URL": settings.npm_cache_url,
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
    # A private upstream's token goes only to its cache (Service.env), not to every process.
    for name in REGISTRY_TOKENS:
        env.pop(name, None)
    return env
