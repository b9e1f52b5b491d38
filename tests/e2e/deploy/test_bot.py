"""A project that is only a Telegram bot, through the whole deploy pipeline: the EnvAnalyzer takes
a service with no port, the playbook runs it supervised and judges it by staying up and by the
Bot API's getMe (a stand-in here) with its token, and the deploy completes with the bot's name
instead of a URL. The token is in no history."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from testing.apps import STDLIB_BOT, child_of, pid_alive
from testing.deploy import DeployStack
from testing.standins.telegram_api import TelegramStandIn, bot_user, serving
from testing.waiting import eventually

TOKEN = "515151:deploy-bot-token"


def manifest(name: str) -> str:
    return f"""version: 2
name: {name}
services:
  - name: bot
    command: python3 bot.py
    bot_token_env: TELEGRAM_BOT_TOKEN
    env:
      required: [TELEGRAM_BOT_TOKEN, TELEGRAM_API_URL]
"""


@pytest.fixture
def telegram() -> Iterator[TelegramStandIn]:
    with serving(TOKEN) as standin:
        yield standin


async def test_a_bot_only_project_goes_live_judged_by_getme(
    deploy_stack: DeployStack, telegram: TelegramStandIn
) -> None:
    stack = deploy_stack
    name = "polling-bot"
    project = await stack.project(
        name, **{".orchestrator.yml": manifest(name), "bot.py": STDLIB_BOT}
    )
    for key, value in (("TELEGRAM_BOT_TOKEN", TOKEN), ("TELEGRAM_API_URL", telegram.url)):
        put = await stack.api.put(f"/projects/{name}/secrets/{key}", json={"value": value})
        assert put.status_code == 201, put.text

    task = await stack.deploy(project["id"])
    done = await stack.finished(task["id"])

    assert done["status"] == "COMPLETED", done["error"]
    result = done["result"]
    assert result["bot"] == bot_user(TOKEN)["username"]
    assert result["deployed_url"] is None and result["port"] is None
    health = [e for e in await stack.events(task["id"]) if e["stage"] == "health"]
    assert [e["message"] for e in health] == [
        f"bot serves no port: it stays up on its server; its bot is @{result['bot']}"
    ]
    await eventually(lambda: telegram.calls_of("deleteWebhook"), "the bot to start polling")
    release_dir = stack.apps_root / name / "releases" / result["release"]
    assert "PORT=" not in (release_dir / ".env").read_text()
    [row] = (await stack.api.get("/deployments", params={"project": name})).json()
    assert row["status"] == "RUNNING" and row["release"] == result["release"]

    # Killed, it is started again by its supervisor on the server.
    app_dir = stack.apps_root / name
    killed = child_of(app_dir, result["release"])
    os.kill(killed, signal.SIGKILL)

    def restarted() -> bool:
        child = child_of(app_dir, result["release"])
        return child != killed and pid_alive(child)

    await eventually(restarted, "the bot started again", within=30)

    # The token went by reference: in neither run's history.
    for workflow in (task["workflow_id"], f"ansible-deploy-{task['id']}-{result['release']}"):
        history = await stack.client.get_workflow_handle(workflow).fetch_history()
        assert TOKEN not in history.to_json()
