"""A release that serves no port: the app template's Telegram bot alone, deployed by deploy.yml to
the loopback target, judged by staying up and by the Bot API's getMe with its token (a stand-in
here), supervised: started again when its process dies."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import copier
import pytest

from core.paths import TEMPLATES_DIR
from infra.ansible import AnsibleRunner, SshTarget
from testing.apps import (
    STDLIB_BOT,
    child_of,
    deploy,
    pid_alive,
    pid_of,
    processes_in,
    release_processes,
)
from testing.standins.telegram_api import TelegramStandIn, bot_user, serving
from testing.waiting import eventually
from tests.infra.ansible.conftest import git

TOKEN = "424242:bot-release-token"
BOT_COMMAND = "python3 -m app.bot"  # python3: the release's own, or the server's without one


@pytest.fixture(scope="module")
def bot_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The app template with only its tg_bot module, committed on `main`."""
    repo = tmp_path_factory.mktemp("bot") / "repo"
    data = {"project_name": "hello", "description": "A bot deploy test.", "modules": ["tg_bot"]}
    copier.run_copy(str(TEMPLATES_DIR / "app"), str(repo), data=data, defaults=True, quiet=True)
    git(repo, "init", "--quiet", "--initial-branch=main")
    git(repo, "add", "--all")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", "Scaffold")
    return repo


@pytest.fixture(scope="module")
def stdlib_bot_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bot of the standard library alone (nothing to install): for the failure paths."""
    repo = tmp_path_factory.mktemp("stdlib-bot") / "repo"
    (repo / "app" / "bot").mkdir(parents=True)
    (repo / "app" / "__init__.py").write_text("")
    (repo / "app" / "bot" / "__init__.py").write_text("")
    (repo / "app" / "bot" / "__main__.py").write_text(STDLIB_BOT)
    git(repo, "init", "--quiet", "--initial-branch=main")
    git(repo, "add", "--all")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", "A bot")
    return repo


@pytest.fixture
def telegram() -> Iterator[TelegramStandIn]:
    with serving(TOKEN) as standin:
        yield standin


def deploy_bot(
    runner: AnsibleRunner,
    target: SshTarget,
    repo: Path,
    apps_root: Path,
    release: str,
    telegram: TelegramStandIn,
    token: str = TOKEN,
) -> tuple[bool, dict[str, object], str]:
    run = deploy(
        runner, target, repo, apps_root, release, 0,
        secret_env={"TELEGRAM_BOT_TOKEN": token},
        extravars={
            "start_command": BOT_COMMAND,
            "env": {"TELEGRAM_API_URL": telegram.url, "BOT_MODE": "polling", "LOG_LEVEL": "INFO"},
            "bot_token_env": "TELEGRAM_BOT_TOKEN",
            "liveness_s": 2,
        },
    )  # fmt: skip
    said = f"{run.stdout_tail}\n{run.failed_msg or ''}\n{run.data}"
    assert token not in said  # read on the server only, never in the playbook's output
    return run.ok, run.data, run.failed_msg or run.stdout_tail


async def test_a_bot_goes_live_by_getme_and_is_started_again_when_killed(
    runner: AnsibleRunner,
    target: SshTarget,
    bot_repo: Path,
    apps_root: Path,
    telegram: TelegramStandIn,
) -> None:
    app_dir = apps_root / "hello"
    ok, data, said = deploy_bot(runner, target, bot_repo, apps_root, "b1", telegram)
    assert ok, said
    # Healthy by the Bot API's own word: getMe with its token named the bot.
    assert data["bot"] == bot_user(TOKEN)["username"]
    assert (data["port"], data["health_url"]) == (0, None)
    assert not (app_dir / "releases" / "b1" / ".env").read_text().count("PORT=")
    await eventually(lambda: telegram.calls_of("deleteWebhook"), "the bot to start polling")

    # Its process killed, its supervisor starts it again, and it polls again.
    killed = child_of(app_dir, "b1")
    started = len(telegram.calls_of("deleteWebhook"))
    os.kill(killed, signal.SIGKILL)

    def restarted() -> bool:
        child = child_of(app_dir, "b1")
        return child != killed and pid_alive(child)

    await eventually(restarted, "the supervisor to start the bot again", within=30)
    await eventually(
        lambda: len(telegram.calls_of("deleteWebhook")) > started, "the bot to start again"
    )
    log = (app_dir / "logs" / "b1.log").read_text()
    assert "appctl: release b1 exited (status 137)" in log
    assert processes_in(app_dir) == release_processes(app_dir, "b1")


async def test_a_bot_whose_token_is_refused_fails_and_the_serving_one_starts_again(
    runner: AnsibleRunner,
    target: SshTarget,
    stdlib_bot_repo: Path,
    apps_root: Path,
    telegram: TelegramStandIn,
) -> None:
    app_dir = apps_root / "hello"
    ok, _, said = deploy_bot(runner, target, stdlib_bot_repo, apps_root, "b1", telegram)
    assert ok, said
    ok, _, said = deploy_bot(
        runner, target, stdlib_bot_repo, apps_root, "b2", telegram, token="424242:a-wrong-token"
    )
    assert not ok
    assert said.startswith(
        "release b2 failed its health check (the Bot API refused getMe: 401 Unauthorized); "
        "last lines of its log:"
    ), said
    # b1 stopped for b2 (one poller per bot), and started again once b2 failed.
    assert (app_dir / "current").resolve() == app_dir / "releases" / "b1"
    assert pid_alive(pid_of(app_dir, "b1"))
    assert not (app_dir / "run" / "b2.pid").exists()
