"""The CLI against a real API process: `python -m api` on a migrated SQLite file, real Redis and
Temporal from the session fixtures, no bridge (so tasks stay QUEUED unless a test moves them).

A module that needs the rest of the stack (``stack``: the worker and the bridges) overrides
``redis_url`` with a Redis of its own, since its bridges take every queue's messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from cli.main import app
from core.readiness import is_ready
from core.settings import Settings
from testing.servers import free_port
from testing.worker_process import REPO_ROOT, stop

# Variables that would point the CLI (or the API) somewhere else than the servers of the test.
FOREIGN = [
    f"{prefix}{name}"
    for prefix in ("", "ORCHESTRATOR_")
    for name in (
        "API_URL",
        "API_KEY",
        "DATABASE_URL",
        "REDIS_URL",
        "TEMPORAL_ADDRESS",
        "ALLOWED_COMMANDS",
    )
]


def clean_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN}
    return {**env, **values}


@dataclass
class Api:
    env: dict[str, str]
    home: Path
    url: str
    database_url: str
    redis_url: str

    def settings(self) -> Settings:
        return Settings(home=self.home)


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, settings: Settings, out: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API exited with {proc.returncode}:\n{out.read_text()[-3000:]}")
        try:
            healthy = httpx.get(f"{url}/health", timeout=1).status_code == 200
        except httpx.TransportError:
            healthy = False
        if healthy and is_ready(settings, "api", proc.pid):
            return
        time.sleep(0.05)
    raise TimeoutError(f"the API was not healthy after 60s:\n{out.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, temporal_address: str
) -> Iterator[Api]:
    home = tmp_path_factory.mktemp("cli-home")
    port = free_port()
    database_url = f"sqlite+aiosqlite:///{home / 'orchestrator.db'}"
    env = clean_env(
        ORCHESTRATOR_HOME=str(home),
        ORCHESTRATOR_API_PORT=str(port),
        ORCHESTRATOR_DATABASE_URL=database_url,
        ORCHESTRATOR_REDIS_URL=redis_url,
        ORCHESTRATOR_TEMPORAL_ADDRESS=temporal_address,
    )
    # The same one-shot setup `orchestrator up` runs: migrations, the admin key file, attributes.
    subprocess.run([sys.executable, "-m", "stack.prepare"], env=env, check=True, timeout=120)
    out = home / "api.out"
    with open(out, "wb") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "api"], env=env, stdout=handle, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, url, Settings(home=home), out)
        yield Api(env=env, home=home, url=url, database_url=database_url, redis_url=redis_url)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Cli:
    """Runs the Typer app in this process with the API's environment."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self.runner = CliRunner()

    def __call__(self, *args: str, **env: str) -> Result:
        # Only the environment of the test counts: unset what it does not name.
        merged: dict[str, str | None] = dict.fromkeys(FOREIGN, None)
        merged.update(self.env)
        merged.update(env)
        return self.runner.invoke(app, list(args), env=merged, catch_exceptions=False)

    def json(self, *args: str, expect: int = 0, **env: str) -> Any:
        result = self(*args, "--json", **env)
        assert result.exit_code == expect, (result.exit_code, result.stdout, result.stderr)
        return json.loads(result.stdout)


@pytest.fixture
def cli(api: Api) -> Cli:
    return Cli(api.env)


SERVICES = {"temporal-worker": "stack.temporal_worker", "bridges": "bridges"}


def wait_ready(api: Api, name: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while not is_ready(api.settings(), name, proc.pid):
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} was not ready after 60s:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def stack(api: Api) -> Iterator[None]:
    """The Temporal worker and the bridges as `orchestrator up` runs them, on the API's home
    (the same key opens the stored SSH keys), database, Redis and Temporal."""
    env = {**api.env, "ORCHESTRATOR_TEMPORAL_TASK_QUEUE": f"cli-stack-{uuid.uuid4().hex[:8]}"}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, module in SERVICES.items():
            log = api.home / f"{name}.out"
            with log.open("ab") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", module],
                    cwd=REPO_ROOT,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            procs.append(proc)
            wait_ready(api, name, proc, log)
        yield
    finally:
        for proc in procs:
            stop(proc)
