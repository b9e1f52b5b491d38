"""What docs/ promises, checked against the code: the variables it names are settings, the
commands it names are CLI commands, and the processes its examples start are the entry points
the embedded stack starts (stack/services.py).

Each check is a function that returns what it found wrong, so the tests below also show that it
does find a wrong name.
"""

from __future__ import annotations

import configparser
import importlib.util
import re
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from cli.main import app
from core.paths import REPO_ROOT
from core.settings import Settings
from gateway.settings import GatewaySettings
from stack import services

DOCS = REPO_ROOT / "docs"
PRODUCTION = DOCS / "production.md"
EXAMPLES = DOCS / "examples"
COMPOSE = EXAMPLES / "compose.yaml"
UNITS = sorted((EXAMPLES / "systemd").glob("*.service"))
# The one-shot the supervisor runs before the services (stack/supervisor.py).
PREPARE = "stack.prepare"

# Variables the product reads straight from the environment, not through a settings class:
# each with the file that reads it, so an entry here cannot outlive the code.
READ_DIRECTLY = {
    "ORCHESTRATOR_DEBIAN_SUITE": "infra/images.py",
    "ORCHESTRATOR_DEBIAN_MIRROR": "infra/images.py",
}

VARIABLE = re.compile(r"\bORCHESTRATOR_[A-Z0-9_]*[A-Z0-9]\b")
# `orchestrator WORD [WORD]` where a command starts: at the start of a line, of a code span, after
# a path (`.venv/bin/orchestrator`) or a shell separator; not inside a name (`orchestrator-reaper`)
# nor as an argument (`useradd ... orchestrator`, the Redis user `orchestrator on ...`).
COMMAND = re.compile(
    r"(?:^[ \t]*|(?<=`)|(?<=bin/)|(?<=&& )|(?<=; ))orchestrator((?: [a-z][a-z-]*){1,2})", re.M
)


def env_names(settings: type[BaseSettings]) -> set[str]:
    """Every environment variable a settings class reads: its prefix and field name, or the
    names of its aliases."""
    prefix = settings.model_config.get("env_prefix", "")
    names = set()
    for name, field in settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {choice for choice in alias.choices if isinstance(choice, str)}
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"{prefix}{name}".upper())
    return names


def known_variables() -> set[str]:
    return env_names(Settings) | env_names(GatewaySettings) | set(READ_DIRECTLY)


def doc_files() -> list[Path]:
    return [PRODUCTION, *sorted(path for path in EXAMPLES.rglob("*") if path.is_file())]


def unknown_variables(text: str) -> set[str]:
    return set(VARIABLE.findall(text)) - known_variables()


def code_of(path: Path) -> str:
    """The parts of a file that are commands: a Markdown file's code blocks, and the code spans
    of its prose; any other file but its comments, and the code spans in those."""
    text = path.read_text()
    if path.suffix == ".md":
        code = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S)
        prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.M | re.S)
    else:
        lines = text.splitlines()
        code = [line for line in lines if not line.lstrip().startswith("#")]
        prose = "\n".join(line for line in lines if line.lstrip().startswith("#"))
    return "\n".join([*code, *re.findall(r"`([^`\n]+)`", prose)])


def unknown_commands(code: str) -> set[str]:
    """``orchestrator ...`` invocations whose command (and sub-command) the CLI does not have."""
    # Typer's own click: a group is what has sub-commands.
    root: Any = typer.main.get_command(app)
    wrong = set()
    for match in COMMAND.finditer(code):
        words = match.group(1).split()
        command = root.commands.get(words[0])
        if command is None:
            wrong.add(words[0])
        elif hasattr(command, "commands") and (len(words) < 2 or words[1] not in command.commands):
            wrong.add(" ".join(words))
    return wrong


def runs_as_main(module: str) -> bool:
    """``python -m module`` runs something: a package with ``__main__`` or a module with a
    ``__main__`` guard."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return False
    if spec.submodule_search_locations is not None:
        return importlib.util.find_spec(f"{module}.__main__") is not None
    return 'if __name__ == "__main__":' in Path(spec.origin).read_text()


def module_of(argv: list[str]) -> str | None:
    """The module of a ``python -m MODULE`` command line, else None."""
    if len(argv) >= 3 and Path(argv[0]).name.startswith("python") and argv[1] == "-m":
        return argv[2]
    return None


def stack_modules() -> set[str]:
    """The modules of every process the embedded stack runs, the bot included, and prepare."""
    settings = Settings(telegram_token="0:stand-in", home=Path("/nonexistent/home"))
    found = {module_of(service.argv) for service in services.applications(settings)}
    assert None not in found
    return {module for module in found if module is not None} | {PREPARE}


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def orchestrator_services(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The compose services that run our image."""
    image = spec["x-orchestrator"]["image"]
    return {name: svc for name, svc in spec["services"].items() if svc.get("image") == image}


def wrong_entry_points(commands: Iterable[list[str]]) -> list[str]:
    wrong = []
    for argv in commands:
        module = module_of(argv)
        if module is None or not runs_as_main(module):
            wrong.append(" ".join(argv))
    return wrong


def unit_command(path: Path) -> list[str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return shlex.split(parser["Service"]["ExecStart"])


# --- the documents --------------------------------------------------------------------------


def test_the_production_page_and_its_examples_exist() -> None:
    assert PRODUCTION.is_file()
    assert COMPOSE.is_file()
    assert UNITS
    assert "docs/production.md" in (REPO_ROOT / "README.md").read_text()
    assert "production.md" in (REPO_ROOT / "ARCHITECTURE.md").read_text()


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_variable_named_is_a_setting(path: Path) -> None:
    assert not unknown_variables(path.read_text()), "no such setting"


@pytest.mark.parametrize("name", sorted(READ_DIRECTLY))
def test_the_variables_read_directly_are_still_read(name: str) -> None:
    assert f'"{name}"' in (REPO_ROOT / READ_DIRECTLY[name]).read_text()


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_command_named_is_a_command(path: Path) -> None:
    assert not unknown_commands(code_of(path))


def test_the_checks_find_what_is_not_there() -> None:
    assert unknown_variables("set ORCHESTRATOR_TEMPORAL_TLS_CLIENT_CRT=x") == {
        "ORCHESTRATOR_TEMPORAL_TLS_CLIENT_CRT"
    }
    assert not unknown_variables("ORCHESTRATOR_TEMPORAL_TLS_CLIENT_CERT, DATABASE_URL")
    assert unknown_commands("run `orchestrator worker --join HOST`") == {"worker"}
    assert unknown_commands(".venv/bin/orchestrator images pull") == {"images pull"}
    assert not unknown_commands("`orchestrator images build` and the `orchestrator-reaper`")
    assert wrong_entry_points([["python", "-m", "stack.scheduler"], ["orchestrator", "up"]]) == [
        "python -m stack.scheduler",
        "orchestrator up",
    ]
    assert not wrong_entry_points([["python", "-m", "api"], ["python", "-m", PREPARE]])


# --- the compose example --------------------------------------------------------------------


def test_compose_runs_every_process_of_the_stack_through_its_entry_point() -> None:
    ours = orchestrator_services(compose())
    commands = [svc["command"] for svc in ours.values()]
    assert not wrong_entry_points(commands)
    assert {module_of(argv) for argv in commands} == stack_modules()


def test_compose_gives_our_processes_only_variables_they_read() -> None:
    for name, svc in orchestrator_services(compose()).items():
        unknown = set(svc["environment"]) - known_variables()
        assert not unknown, f"{name}: {sorted(unknown)} are no settings"


def test_compose_keeps_the_bot_single_and_the_home_at_one_path() -> None:
    ours = orchestrator_services(compose())
    assert not ours["bot"].get("deploy", {}).get("replicas")
    for name, svc in ours.items():
        home = svc["environment"]["ORCHESTRATOR_HOME"]
        assert f"{home}:{home}" in svc["volumes"], f"{name}: the home is not at the same path"


# --- the systemd example --------------------------------------------------------------------


def test_the_units_run_every_process_of_the_stack_through_its_entry_point() -> None:
    commands = [unit_command(path) for path in UNITS]
    assert not wrong_entry_points(commands)
    assert {module_of(argv) for argv in commands} == stack_modules()


def test_the_environment_file_sets_only_settings() -> None:
    path = EXAMPLES / "systemd" / "orchestrator.env"
    names = {
        line.split("=", 1)[0]
        for line in path.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert names and not names - known_variables()
