"""Kill -9 of the bot and of the Temporal worker in the middle of a PO turn: no message is lost
and none is answered twice. Both run as the processes ``up`` starts (``python -m bot``,
``python -m stack.temporal_worker``); the API and the bridges stay up in this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from core.contracts.workflows import PO_STATUS, POSessionStatus
from core.ids import chat_stream
from core.readiness import is_ready
from core.settings import Settings
from testing.waiting import eventually
from testing.worker_process import REPO_ROOT, spawn_worker, stop, wait_ready, worker_env
from tests.e2e.chat.conftest import ChatStack, po_script

# The first play of round 1 hangs (it is the one killed); the retry finds the marker and goes on.
HANG_ONCE = "if [ ! -e /workspace/hung ]; then touch /workspace/hung; sleep 120; fi"


def bot_env(settings: Settings) -> dict[str, str]:
    assert settings.telegram_token is not None and settings.api_key is not None
    env = {
        **os.environ,
        "ORCHESTRATOR_HOME": str(settings.home_dir),
        "REDIS_URL": settings.effective_redis_url,
        "ORCHESTRATOR_API_URL": settings.effective_api_url,
        "ORCHESTRATOR_API_KEY": settings.api_key.get_secret_value(),
        "ORCHESTRATOR_TELEGRAM_TOKEN": settings.telegram_token.get_secret_value(),
        "ORCHESTRATOR_TELEGRAM_API_URL": settings.telegram_api_url,
        "ORCHESTRATOR_TELEGRAM_ADMINS": ",".join(map(str, settings.telegram_admins)),
    }
    return env


def spawn_bot(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bot"],
            cwd=REPO_ROOT,
            env=bot_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def bot_ready(settings: Settings, proc: subprocess.Popen[bytes]) -> None:
    def ready() -> bool:
        assert proc.poll() is None, f"the bot exited with {proc.returncode}"
        return is_ready(settings, "bot", proc.pid)

    await eventually(ready, "the bot to start", within=30)


def kill_9(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait()


async def test_kill_9_of_the_bot_and_the_worker_during_a_po_turn(
    chat_stack: Any, docker_host: str, temporal_address: str, redis_url: str, tmp_path: Path
) -> None:
    script = po_script({"run": HANG_ONCE, "summary": "first answer"}, {"summary": "second answer"})
    async with chat_stack(script, worker=False, bot=False) as stack:
        settings: Settings = stack.settings
        env = worker_env(
            settings.home_dir,
            database_url=str(settings.database_url),
            redis_url=redis_url,
            temporal_address=temporal_address,
            task_queue=settings.temporal_task_queue,
            DOCKER_HOST=docker_host,
            ORCHESTRATOR_WORKER_MEMORY="256m",
            ORCHESTRATOR_WORKER_PIDS="128",
            ORCHESTRATOR_PO_AGENT="scripted",
            ORCHESTRATOR_PO_SCRIPT=str(settings.po_script),
        )
        logs = tmp_path / "processes.log"
        processes = [spawn_worker(env, logs), spawn_bot(settings, logs)]
        try:
            await wait_ready(settings, processes[0])
            await bot_ready(settings, processes[1])
            await _crash_during_a_turn(stack, processes, env, logs)
        finally:
            for proc in processes:
                stop(proc)


async def _crash_during_a_turn(
    stack: ChatStack,
    processes: list[subprocess.Popen[bytes]],
    env: dict[str, str],
    logs: Path,
) -> None:
    chat = stack.admin["id"]
    first = stack.say(stack.admin, "one")
    await eventually(
        lambda: (stack.workspace(chat) / "hung").exists(), "the PO turn to start", within=120
    )
    for proc in processes:
        kill_9(proc)
    # Written while the bot is down: Telegram keeps it until a bot takes it.
    second = stack.say(stack.admin, "two")

    processes[:] = [spawn_worker(env, logs), spawn_bot(stack.settings, logs)]
    await wait_ready(stack.settings, processes[0])
    await bot_ready(stack.settings, processes[1])

    await eventually(lambda: len(stack.sent_to(chat)) >= 2, "both replies", within=120)
    # Everything on the chat's stream has been taken by the bot: nothing more is on its way.
    stream = chat_stream(chat)

    async def all_delivered() -> bool:
        pending = await stack.redis.xpending(stream, "bot")
        return int(pending["pending"]) == 0

    await eventually(all_delivered, "the bot to acknowledge the chat's entries", within=30)
    assert await stack.redis.xlen(stream) == 2  # one reply each, however often they were published
    status = await stack.client.get_workflow_handle(f"po-{chat}").query(
        PO_STATUS, result_type=POSessionStatus
    )
    assert status.turns == 2 and status.pending == [] and status.current is None
    assert stack.texts_to(chat) == ["first answer", "second answer"]
    assert [len(stack.replies_to(chat, m)) for m in (first, second)] == [1, 1]
