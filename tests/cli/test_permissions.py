"""`ALLOWED_COMMANDS`: profiles, wildcards, refusals before any API call, and usage errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

import cli.permissions as permissions
from cli.main import app
from cli.permissions import PROFILES, InvalidEntry, Policy, command_names, expand
from testing.servers import free_port
from tests.cli.conftest import FOREIGN, Cli

KNOWN = command_names(typer.main.get_group(app))
DEVELOPER_REFUSAL = "`engineering start` is not allowed here (ALLOWED_COMMANDS=DEVELOPER)"
START = ("engineering", "start", "--project", "p", "--spec", "add /ping")


def nowhere() -> str:
    """An API address nothing listens on: any request to it fails with exit 4."""
    return f"http://127.0.0.1:{free_port()}"


def run(*args: str, allowed: str | None = None, **env: str | None) -> Result:
    """The CLI in this process, against no API, with only the permissions the test names."""
    merged: dict[str, str | None] = dict.fromkeys([*FOREIGN, *permissions.VARIABLES], None)
    merged.update(ORCHESTRATOR_API_URL=nowhere(), ORCHESTRATOR_API_KEY="orch_unused")
    if allowed is not None:
        merged["ALLOWED_COMMANDS"] = allowed
    merged.update(env)
    return CliRunner().invoke(app, list(args), env=merged, catch_exceptions=False)


def policy(value: str) -> Policy:
    return Policy("ALLOWED_COMMANDS", value, expand(value, KNOWN))


# --- what the entries mean ---------------------------------------------------------------------


def test_the_command_names_are_group_dot_command_and_bare_top_level_names() -> None:
    assert {"project.create", "engineering.start", "task.respond", "up", "status"} <= set(KNOWN)
    assert "project" not in KNOWN  # a group is not a command


def test_profiles_expand_as_documented() -> None:
    assert expand("PRODUCT_OWNER", KNOWN) == ("*",)
    for name, patterns in PROFILES.items():
        assert expand(name, KNOWN) == patterns
        # The module docstring is the one place they are documented: it must not drift.
        for pattern in patterns:
            assert pattern in (permissions.__doc__ or ""), (name, pattern)
    # Profiles and patterns combine, separated by commas and/or spaces, without repeats.
    assert expand("DEVELOPER, task.cancel  project.list", KNOWN) == (
        *PROFILES["DEVELOPER"],
        "task.cancel",
    )


def test_profiles_allow_and_refuse() -> None:
    everything = policy("PRODUCT_OWNER")
    assert all(everything.allows(name) for name in KNOWN)

    developer = policy("DEVELOPER")
    for name in ("project.list", "project.show", "task.show", "task.list", "task.watch"):
        assert developer.allows(name), name
    for name in ("engineering.status", "engineering.wait", "respond", "pr.show"):
        assert developer.allows(name), name
    for name in ("engineering.start", "project.create", "task.cancel", "task.retry", "up", "down"):
        assert not developer.allows(name), name
    assert not developer.allows("deploy.start")

    devops = policy("DEVOPS")
    for name in ("deploy.start", "deploy.status", "server.add", "secret.set", "task.show"):
        assert devops.allows(name), name
    for name in ("incident.list", "incident.ack", "schedule.list"):
        assert devops.allows(name), name
    for name in ("engineering.start", "project.create", "task.respond", "images.build"):
        assert not devops.allows(name), name
    for name in ("schedule.pause", "schedule.run"):  # the jobs themselves: a person's
        assert not devops.allows(name), name
    # A merge, and auto-deploy, are a person's to decide: only the PO passes them on.
    for name in ("pr.merge", "project.update"):
        assert everything.allows(name) and not developer.allows(name), name
        assert not devops.allows(name), name


def test_wildcards() -> None:
    project = policy("project.*")
    assert all(project.allows(f"project.{c}") for c in ("create", "list", "show"))
    assert not project.allows("task.list")
    assert not project.allows("up")

    lists = policy("*.list")
    assert lists.allows("project.list") and lists.allows("task.list")
    assert not lists.allows("project.show")

    assert all(policy("*").allows(name) for name in KNOWN)
    top = policy("up status")
    assert top.allows("up") and top.allows("status")
    assert not top.allows("down")


def test_unset_allows_everything_and_empty_allows_nothing_but_permissions() -> None:
    assert all(Policy().allows(name) for name in KNOWN)
    empty = policy("")
    assert not any(empty.allows(name) for name in KNOWN if name != "permissions")
    assert empty.allows("permissions")


@pytest.mark.parametrize(
    "value, bad",
    [
        ("SUPERUSER", "SUPERUSER"),
        ("DEVELOPER, projet.list", "projet.list"),  # a typo names no command
        ("project.*,tsk.*", "tsk.*"),
        ("developer", "developer"),  # profiles are upper case
        ("project", "project"),  # a group, not a command: project.*
        ("project.list;task.list", "project.list;task.list"),
    ],
)
def test_an_unknown_entry_is_rejected(value: str, bad: str) -> None:
    with pytest.raises(InvalidEntry) as caught:
        expand(value, KNOWN)
    assert caught.value.entry == bad


# --- the CLI -----------------------------------------------------------------------------------


def test_a_refused_command_exits_1_before_calling_the_api() -> None:
    # The API address is a closed port: reaching for it would be exit 4, not 1.
    result = run(*START, allowed="DEVELOPER")
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert DEVELOPER_REFUSAL in result.stderr
    assert "Allowed: project.list, project.show, task.list" in result.stderr
    assert "cannot reach" not in result.stderr

    # The control: an allowed command, same environment, does reach for the (absent) API.
    allowed = run("task", "list", allowed="DEVELOPER")
    assert allowed.exit_code == 4, (allowed.stdout, allowed.stderr)
    # And without ALLOWED_COMMANDS (a person at a terminal) everything may run.
    assert run(*START).exit_code == 4


def test_refusals_of_top_level_and_other_commands(tmp_path: Path) -> None:
    result = run("status", allowed="project.*", ORCHESTRATOR_HOME=str(tmp_path))
    assert result.exit_code == 1
    assert "`status` is not allowed here (ALLOWED_COMMANDS=project.*). Allowed: project.*" in (
        result.stderr
    )
    refused = run("task", "respond", uuid.uuid4().hex, "yes", allowed="DEVOPS")
    assert refused.exit_code == 1
    assert "`task respond` is not allowed here (ALLOWED_COMMANDS=DEVOPS)" in refused.stderr
    # Options before and after the words do not hide the command.
    assert run("task", "list", "--json", "--limit", "3", allowed="project.*").exit_code == 1


def test_a_json_refusal_is_one_error_object_on_stdout() -> None:
    result = run(*START, "--json", allowed="DEVELOPER")
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert error["exit_code"] == 1
    assert error["command"] == "engineering.start"
    assert error["allowed"] == [*PROFILES["DEVELOPER"], "permissions"]
    assert error["variable"] == "ALLOWED_COMMANDS"
    assert DEVELOPER_REFUSAL in error["message"]
    assert result.stderr == ""


def test_the_prefixed_variable_wins() -> None:
    both = {"ORCHESTRATOR_ALLOWED_COMMANDS": "task.*"}
    # DEVELOPER alone would refuse `task cancel`; the prefixed variable allows it (-> the API).
    assert run("task", "cancel", "x", allowed="DEVELOPER", **both).exit_code == 4
    refused = run("project", "list", allowed="PRODUCT_OWNER", **both)
    assert refused.exit_code == 1
    assert "(ORCHESTRATOR_ALLOWED_COMMANDS=task.*)" in refused.stderr


def test_an_unknown_entry_is_a_usage_error_naming_it() -> None:
    result = run("task", "list", allowed="DEVELOPER,SUPERUSER")
    assert result.exit_code == 2
    assert "'SUPERUSER'" in result.stderr
    assert "PRODUCT_OWNER, DEVELOPER, DEVOPS" in result.stderr

    as_json = run("project", "list", "--json", allowed="projet.list")
    assert as_json.exit_code == 2
    error = json.loads(as_json.stdout)["error"]
    assert error["entry"] == "projet.list"
    assert "'projet.list'" in error["message"]


def test_help_and_the_command_list_stay_available() -> None:
    assert run("engineering", "start", "--help", allowed="DEVELOPER").exit_code == 0
    listing = run("--help", allowed="")
    assert listing.exit_code == 0
    for group in ("engineering", "project", "task", "up"):
        assert group in listing.stdout
    # A group without its command is still the usual usage error, not a refusal.
    assert run("engineering", allowed="DEVELOPER").exit_code == 2
    assert run("engineering", "strt", allowed="DEVELOPER").exit_code == 2


def test_permissions_shows_what_is_allowed() -> None:
    shown = json.loads(run("permissions", "--json", allowed="DEVELOPER task.cancel").stdout)
    assert shown["restricted"] is True
    assert shown["variable"] == "ALLOWED_COMMANDS"
    assert shown["value"] == "DEVELOPER task.cancel"
    assert {"task.show", "task.cancel", "project.list", "permissions"} <= set(shown["allowed"])
    assert {"engineering.start", "project.create", "up"} <= set(shown["refused"])
    assert set(shown["allowed"]) | set(shown["refused"]) == set(KNOWN)

    # Even when nothing else is: it runs nothing but tells a Worker what it may do.
    nothing = run("permissions", allowed="")
    assert nothing.exit_code == 0
    assert "refused" in nothing.stdout

    unrestricted = json.loads(run("permissions", "--json").stdout)
    assert unrestricted["restricted"] is False
    assert unrestricted["allowed"] == KNOWN


def test_the_installed_cli_refuses_in_its_own_process() -> None:
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN}
    env.update(ALLOWED_COMMANDS="DEVELOPER", ORCHESTRATOR_API_URL=nowhere())
    env.pop("ORCHESTRATOR_ALLOWED_COMMANDS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", *START],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert DEVELOPER_REFUSAL in proc.stderr


# --- against a real API -----------------------------------------------------------------------


def test_allowed_commands_work_and_refused_ones_change_nothing(cli: Cli) -> None:
    name = f"perm-{uuid.uuid4().hex[:8]}"
    project: dict[str, Any] = cli.json("project", "create", "--name", name, ALLOWED_COMMANDS="*")

    developer = {"ALLOWED_COMMANDS": "DEVELOPER"}
    assert cli.json("project", "show", name, **developer)["id"] == project["id"]
    assert name in {p["name"] for p in cli.json("project", "list", **developer)}

    other = f"perm-{uuid.uuid4().hex[:8]}"
    refused = cli.json("project", "create", "--name", other, expect=1, **developer)["error"]
    assert refused["command"] == "project.create"
    assert refused.get("status") is None  # refused here, not by the API
    cli.json("project", "show", other, expect=3)
