"""``orchestrator secret`` against a real API process: the value comes from stdin or a prompt
that does not echo, never from an argument, and never comes back out."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
from typer.testing import Result

from cli.main import app
from core.crypto import Vault
from db import secrets
from db.engine import Database
from tests.cli.conftest import FOREIGN, Api, Cli

VALUE = "s3cret-Välue with spaces"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def project(cli: Cli) -> str:
    name = unique("sec")
    cli.json("project", "create", "--name", name)
    return name


def piped(cli: Cli, *args: str, value: str, expect: int | None = 0) -> Result:
    """Run the CLI in this process with ``value`` on its stdin (Cli passes no input)."""
    env: dict[str, str | None] = {**dict.fromkeys(FOREIGN), **cli.env}
    result = cli.runner.invoke(app, list(args), input=value, env=env, catch_exceptions=False)
    if expect is not None:
        assert result.exit_code == expect, (result.exit_code, result.output)
    return result


def piped_json(cli: Cli, *args: str, value: str, expect: int = 0) -> Any:
    return json.loads(piped(cli, *args, "--json", value=value, expect=expect).stdout)


def stored(api: Api, project: str, name: str) -> str:
    """The decrypted value, read as the deploy activity will read it."""

    async def read() -> str:
        db = Database(api.database_url)
        try:
            async with db.session() as session:
                from db.projects import get_project

                found = await get_project(session, project)
                refs = await secrets.project_secret_refs(session, found.id)
                return await secrets.resolve_secret_ref(
                    session, Vault.from_settings(api.settings()), refs[name]
                )
        finally:
            await db.dispose()

    return asyncio.run(read())


def test_set_from_stdin_list_remove(cli: Cli, api: Api, project: str) -> None:
    first = piped_json(cli, "secret", "set", "--project", project, "API_TOKEN", value=VALUE + "\n")
    assert first["name"] == "API_TOKEN" and first["created"] is True
    assert first["project"] == project
    assert stored(api, project, "API_TOKEN") == VALUE  # the newline of `echo` is not kept

    again = piped_json(cli, "secret", "set", "-p", project, "API_TOKEN", value="v2-a8b1")
    assert again["created"] is False
    assert stored(api, project, "API_TOKEN") == "v2-a8b1"
    human = piped(cli, "secret", "set", "--project", project, "OTHER", value="x")
    assert "Set secret OTHER" in human.stdout
    replaced = piped(cli, "secret", "set", "--project", project, "OTHER", value="y")
    assert "Replaced secret OTHER" in replaced.stdout

    listed = cli.json("secret", "list", "--project", project)
    assert [s["name"] for s in listed] == ["API_TOKEN", "OTHER"]
    assert all("value" not in s and "ciphertext" not in s for s in listed)
    table = cli("secret", "list", "--project", project)
    assert table.exit_code == 0 and "API_TOKEN" in table.stdout

    removed = cli.json("secret", "remove", "--project", project, "OTHER")
    assert removed["removed"] is True and removed["name"] == "OTHER"
    assert [s["name"] for s in cli.json("secret", "list", "-p", project)] == ["API_TOKEN"]
    assert cli.json("secret", "remove", "-p", project, "OTHER", expect=3)["error"]["status"] == 404

    log = (api.home / "logs" / "api.log").read_text()
    assert "API_TOKEN" in log and VALUE not in log and "v2-a8b1" not in log


def test_usage_errors_exit_2_before_asking(cli: Cli, project: str) -> None:
    bad = piped_json(cli, "secret", "set", "-p", project, "bad-name", value=VALUE, expect=2)
    assert "environment variable names" in bad["error"]["detail"]
    empty = piped_json(cli, "secret", "set", "-p", project, "EMPTY", value="\n", expect=2)
    assert "no value" in empty["error"]["message"]
    missing = piped_json(cli, "secret", "set", "-p", unique("nope"), "KEY", value="v", expect=3)
    assert missing["error"]["status"] == 404
    assert cli.json("secret", "list", "--project", unique("nope"), expect=3)["error"]
    # The value is never an argument.
    assert piped(cli, "secret", "set", "-p", project, "KEY", VALUE, value="", expect=2)
    assert cli.json("secret", "list", "--project", project) == []


def run_on_a_terminal(env: dict[str, str], args: list[str], answers: list[str]) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as its controlling terminal and stdin, answering each
    prompt as it appears; returns the exit code and everything the terminal showed."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", *args],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=env,
        start_new_session=True,
        # Make the pty the session's controlling terminal: getpass reads /dev/tty.
        preexec_fn=lambda: __import__("fcntl").ioctl(0, __import__("termios").TIOCSCTTY, 0),
    )
    os.close(terminal)
    shown, pending = b"", list(answers)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(controller, 4096)
                except OSError:  # the terminal closed: the process is gone
                    break
                if not chunk:
                    break
                shown += chunk
                # getpass turns echo off (flushing input), then writes its own " ": answer then.
                if pending and shown.endswith(b": "):
                    os.write(controller, pending.pop(0).encode() + b"\n")
            elif proc.poll() is not None:
                break
        return proc.wait(30), re.sub(r"\x1b\[[0-9;]*m", "", shown.decode(errors="replace"))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(controller)


def test_set_from_a_hidden_prompt(api: Api, cli: Cli, project: str) -> None:
    args = ["secret", "set", "--project", project, "DB_PASSWORD"]
    code, shown = run_on_a_terminal(cli.env, args, [VALUE, VALUE])
    assert code == 0, shown
    assert "Value of DB_PASSWORD" in shown and "Repeat for confirmation" in shown
    assert "Set secret DB_PASSWORD" in shown
    assert VALUE not in shown  # typed, not echoed
    assert stored(api, project, "DB_PASSWORD") == VALUE

    code, shown = run_on_a_terminal(cli.env, [*args, "--json"], ["first", "second", "v3", "v3"])
    assert code == 0, shown
    assert "do not match" in shown and '"created": false' in shown
    assert stored(api, project, "DB_PASSWORD") == "v3"
