"""``python -m bridges`` killed with SIGKILL between the start and the ack loses nothing, and a
second bridge does not start the workflow twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from redis.asyncio import Redis
from temporalio.client import Client

from core.contracts.engineering import ENGINEERING_QUEUE
from core.ids import engineering_workflow_id
from core.paths import REPO_ROOT
from testing.bridges import (
    acked,
    engineering_message,
    pending_count,
    publish,
    runs_of,
    workflow_exists,
)
from testing.waiting import eventually

REPO = REPO_ROOT


def spawn_bridge(env: dict[str, str], crash_at: str | None = None) -> subprocess.Popen[bytes]:
    env = {**env}
    if crash_at:
        env["ORCHESTRATOR_CRASH_AT"] = crash_at
    else:
        env.pop("ORCHESTRATOR_CRASH_AT", None)
    return subprocess.Popen([sys.executable, "-m", "bridges"], cwd=REPO, env=env)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


async def exited(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is not None


async def test_kill_9_before_ack_then_a_new_bridge_acks_without_a_second_run(
    redis: Redis, redis_url: str, temporal_client: Client, temporal_address: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "ORCHESTRATOR_HOME": str(tmp_path),
        "REDIS_URL": redis_url,
        "TEMPORAL_ADDRESS": temporal_address,
        "ORCHESTRATOR_TEMPORAL_TASK_QUEUE": f"bridges-kill-{uuid.uuid4().hex[:8]}",
        "ORCHESTRATOR_BRIDGE_CLAIM_IDLE_MS": "500",
        "ORCHESTRATOR_BRIDGE_BLOCK_MS": "200",
    }
    message = engineering_message()
    workflow_id = engineering_workflow_id(message.task_id)
    ready_file = tmp_path / "run" / "bridges.ready"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        first = spawn_bridge(env, crash_at="bridge.before_ack")
        processes.append(first)
        await publish(redis, ENGINEERING_QUEUE, message.to_fields())

        await eventually(lambda: exited(first), "the first bridge to die", within=30)
        assert first.returncode == -signal.SIGKILL
        # Temporal accepted the start, the ack never happened.
        assert await workflow_exists(temporal_client, workflow_id)
        assert await pending_count(redis, ENGINEERING_QUEUE) == 1

        second = spawn_bridge(env)
        processes.append(second)

        async def second_ready() -> bool:
            return ready_file.exists() and ready_file.read_text().strip() == str(second.pid)

        await eventually(second_ready, "the second bridge to be ready", within=30)
        await eventually(lambda: acked(redis, ENGINEERING_QUEUE), "the claimed ack", within=30)
        runs = await eventually(lambda: runs_of(temporal_client, workflow_id), "the run listed")
        assert len(runs) == 1
        log = (tmp_path / "logs" / "bridges.log").read_text()
        assert "workflow already started" in log  # the second bridge took the duplicate path

        second.send_signal(signal.SIGTERM)
        await eventually(lambda: exited(second), "a clean stop on SIGTERM", within=15)
        assert second.returncode == 0
        assert not ready_file.exists()
    finally:
        for proc in processes:
            stop(proc)
