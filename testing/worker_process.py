"""The Temporal worker as ``python -m stack.temporal_worker`` (or ``orchestrator worker run``) in a
process of its own, for the kill -9 and several-hosts tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from core.faults import CRASH_AT_ENV
from core.paths import REPO_ROOT
from core.readiness import is_ready
from core.settings import Settings
from testing.waiting import eventually


def worker_env(
    home: Path,
    *,
    database_url: str,
    redis_url: str,
    temporal_address: str,
    task_queue: str,
    **extra: str,
) -> dict[str, str]:
    """This environment, pointed at the test's servers (``extra``: more variables)."""
    env = {
        **os.environ,
        "ORCHESTRATOR_HOME": str(home),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "TEMPORAL_ADDRESS": temporal_address,
        "ORCHESTRATOR_TEMPORAL_TASK_QUEUE": task_queue,
        **extra,
    }
    if CRASH_AT_ENV not in extra:
        env.pop(CRASH_AT_ENV, None)
    return env


def spawn_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "stack.temporal_worker"],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def spawn_joining_worker(
    env: dict[str, str], log: Path, capabilities: str | None = None
) -> subprocess.Popen[bytes]:
    """``orchestrator worker run`` (with ``--capabilities`` when given): a worker joining the
    servers ``env`` names, as on another host. It execs the worker: its PID is the worker's."""
    argv = [sys.executable, "-m", "cli.main", "worker", "run", "--json"]
    if capabilities is not None:
        argv += ["--capabilities", capabilities]
    with log.open("ab") as out:
        return subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


async def wait_ready(settings: Settings, proc: subprocess.Popen[bytes]) -> None:
    async def ready() -> bool:
        assert proc.poll() is None, f"worker exited with {proc.returncode}"
        return is_ready(settings, "temporal-worker", proc.pid)

    await eventually(ready, within=30)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
