"""``python -m api`` serves the same app on its Unix socket (``<home>/run/api/api.sock``), which
PO Workers reach through a mount: another uid may connect, a stale socket is replaced, a live one
or a path too long for a Unix socket is refused with a clear message."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from core.paths import REPO_ROOT
from core.readiness import is_ready
from core.settings import Settings
from testing.servers import free_port

REPO = REPO_ROOT


@pytest.fixture
def short_home(short_dir: Path) -> Path:
    return short_dir


def api_env(home: Path, database_url: str, redis_url: str, temporal_address: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env.update(
        ORCHESTRATOR_HOME=str(home),
        ORCHESTRATOR_API_PORT=str(free_port()),
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        TEMPORAL_ADDRESS=temporal_address,
    )
    return env


def start(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "api"], cwd=REPO, env=env, stderr=subprocess.PIPE
    )


def wait_ready(proc: subprocess.Popen[bytes], settings: Settings) -> None:
    deadline = time.monotonic() + 30
    while not is_ready(settings, "api", proc.pid):
        assert proc.poll() is None, f"the API exited with {proc.returncode}"
        assert time.monotonic() < deadline, "the API did not become ready"
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.terminate()
    try:
        return proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def health_over(path: Path) -> int:
    transport = httpx.HTTPTransport(uds=str(path))
    with httpx.Client(transport=transport, base_url="http://api", timeout=10) as client:
        return client.get("/health").status_code


def test_the_api_serves_its_socket_too(
    short_home: Path, sqlite_database_url: str, redis_url: str, temporal_address: str
) -> None:
    settings = Settings(home=short_home)
    path = settings.api_socket
    # A socket file a killed API left behind: nothing listens on it.
    path.parent.mkdir(parents=True, mode=0o700)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))
    env = api_env(short_home, sqlite_database_url, redis_url, temporal_address)
    proc = start(env)
    try:
        wait_ready(proc, settings)
        assert health_over(path) == 200
        port = env["ORCHESTRATOR_API_PORT"]
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
        # Workers run as another uid: they must get through the directory and connect.
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
        assert stat.S_IMODE(path.stat().st_mode) == 0o666
        # A second API on the same home refuses to take the socket from the first.
        second = start({**env, "ORCHESTRATOR_API_PORT": str(free_port())})
        assert second.wait(30) == 1
        assert second.stderr is not None
        assert b"is another API running?" in second.stderr.read()
        assert health_over(path) == 200
    finally:
        code = stop(proc)
    assert code == 0
    assert not path.exists()  # removed on the way out


def test_a_socket_path_too_long_is_a_clear_error(
    short_home: Path, sqlite_database_url: str, redis_url: str, temporal_address: str
) -> None:
    home = short_home / ("h" * 100)
    proc = start(api_env(home, sqlite_database_url, redis_url, temporal_address))
    assert proc.wait(30) == 1
    assert proc.stderr is not None
    error = proc.stderr.read().decode()
    assert "over the 107 a Unix socket allows" in error
    assert "ORCHESTRATOR_HOME" in error
    assert not is_ready(Settings(home=home), "api", proc.pid)
