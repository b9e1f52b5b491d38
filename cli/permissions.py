"""Which commands this CLI may run here: ``ALLOWED_COMMANDS``.

A Worker's agent drives the ``orchestrator`` CLI; what it may do is set by the environment variable
``ORCHESTRATOR_ALLOWED_COMMANDS`` (else ``ALLOWED_COMMANDS``): entries separated by commas and/or
spaces, each one of

- a command: ``group.command`` (``project.list``), or a top-level command by its bare name
  (``up``, ``status``, ``demo``, ``respond``);
- a wildcard: ``group.*`` (every command of a group), ``*`` (everything), ``*.list``;
- a profile (upper case), which stands for its patterns:

  PRODUCT_OWNER  ``*``
  DEVELOPER      ``project.list project.show task.list task.show task.watch respond
                 engineering.status engineering.wait pr.list pr.show contracts.schema``
  DEVOPS         ``project.list project.show task.list task.show task.watch respond
                 deploy.* server.* secret.* incident.* schedule.list``

Merging a pull request (``pr.merge``) and changing a project (``project.update``: auto-deploy)
are a person's decisions, passed on by the PO: no agent's profile but the PO's has them.

Unset: everything is allowed (a person at their terminal). Set but empty: nothing is (a Worker
that was meant to be limited stays limited). ``permissions`` (show what is allowed) and ``--help``
run nothing and are never refused. An entry that is no profile, or names no command of this CLI,
is a usage error (exit 2) naming it; profiles may name commands this CLI does not have yet.

The check runs once, in the root group (``cli/main.py``), after the command is resolved and before
it runs: a refused command exits 1 without calling the API.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import typer
from typer.core import TyperGroup

from cli.output import FAILED, USAGE, CliError, JsonOption, Output, escape

# The prefixed name wins, as for every other setting (core/settings.py's aliases).
VARIABLES = ("ORCHESTRATOR_ALLOWED_COMMANDS", "ALLOWED_COMMANDS")

_READ = ("project.list", "project.show", "task.list", "task.show", "task.watch", "respond")
PROFILES: dict[str, tuple[str, ...]] = {
    "PRODUCT_OWNER": ("*",),
    "DEVELOPER": (
        *_READ,
        "engineering.status",
        "engineering.wait",
        "pr.list",
        "pr.show",
        "contracts.schema",
    ),
    # Incidents are theirs to look into and acknowledge; the jobs that find them, to look at.
    "DEVOPS": (*_READ, "deploy.*", "server.*", "secret.*", "incident.*", "schedule.list"),
}
# Commands that only look at this CLI itself: refusing them would only hide what is allowed.
ALWAYS = ("permissions",)

_PATTERN = re.compile(r"[a-z0-9_*-]+(\.[a-z0-9_*-]+)?")


class InvalidEntry(ValueError):
    def __init__(self, variable: str, entry: str, hint: str) -> None:
        super().__init__(f"{variable}: unknown entry {entry!r}")
        self.variable = variable
        self.entry = entry
        self.hint = hint


@dataclass(frozen=True)
class Policy:
    """The allowed patterns, or ``variable=None`` when nothing limits this CLI."""

    variable: str | None = None
    value: str = ""
    patterns: tuple[str, ...] = ()

    @property
    def restricted(self) -> bool:
        return self.variable is not None

    def allows(self, name: str) -> bool:
        if not self.restricted or name in ALWAYS:
            return True
        return any(fnmatchcase(name, pattern) for pattern in self.patterns)

    def shown(self) -> list[str]:
        """What to tell a refused caller: the patterns, and what is allowed anyway."""
        if not self.restricted:
            return ["*"]
        extra = [name for name in ALWAYS if not any(fnmatchcase(name, p) for p in self.patterns)]
        return [*self.patterns, *extra]

    def describe(self) -> str:
        return f"{self.variable}={self.value}" if self.restricted else "no ALLOWED_COMMANDS"


def split(value: str) -> list[str]:
    return [entry for entry in re.split(r"[,\s]+", value) if entry]


def expand(value: str, known: Sequence[str], variable: str = "ALLOWED_COMMANDS") -> tuple[str, ...]:
    """The patterns ``value`` stands for, profiles expanded, in order, without repeats.

    ``known`` is every command of this CLI (``group.command`` / top-level name): a pattern that
    matches none of them is a typo, reported rather than silently allowing nothing.
    """
    patterns: list[str] = []
    for entry in split(value):
        if entry in PROFILES:
            patterns.extend(PROFILES[entry])
        elif _PATTERN.fullmatch(entry) and any(fnmatchcase(name, entry) for name in known):
            patterns.append(entry)
        else:
            raise InvalidEntry(variable, entry, _hint(entry))
    return tuple(dict.fromkeys(patterns))


def _hint(entry: str) -> str:
    if entry.upper() in PROFILES:
        return f"profiles are upper case: {entry.upper()}"
    return (
        f"profiles: {', '.join(PROFILES)}; commands: group.command, group.*, a top-level "
        "command or * (see `orchestrator permissions`)"
    )


def load(environ: Mapping[str, str], known: Sequence[str]) -> Policy:
    for variable in VARIABLES:
        if variable in environ:
            value = environ[variable]
            return Policy(variable, value.strip(), expand(value, known, variable))
    return Policy()


def command_names(group: Any, prefix: str = "") -> list[str]:
    """Every command under ``group`` as ``group.command``; top-level commands by their name."""
    names: list[str] = []
    for name, command in sorted(group.commands.items()):
        full = f"{prefix}.{name}" if prefix else name
        if isinstance(command, TyperGroup):
            names.extend(command_names(command, full))
        else:
            names.append(full)
    return names


# --- the check, called by the root group once it has resolved the first word ------------------


@dataclass(frozen=True)
class Invocation:
    path: tuple[str, ...]
    json: bool
    help: bool

    @property
    def name(self) -> str:
        return ".".join(self.path)


def resolve(parent: typer.Context, name: str, command: Any, args: list[str]) -> Invocation | None:
    """The command the arguments lead to, or None if they stop at a group (help or usage error).

    Parses like shell completion does (``resilient_parsing``): no callbacks, no errors, nothing run.
    """
    path = [name]
    while True:
        ctx = command.make_context(name, list(args), parent=parent, resilient_parsing=True)
        if not isinstance(command, TyperGroup):
            words = args[: args.index("--")] if "--" in args else args
            asked_help = any(word in ctx.help_option_names for word in words)
            return Invocation(tuple(path), bool(ctx.params.get("json_output")), asked_help)
        rest = [*ctx._protected_args, *ctx.args]
        if not rest:
            return None
        sub_name, command, args = command.resolve_command(ctx, rest)
        if command is None or sub_name is None:
            return None  # an unknown command: the real parse reports it
        name, parent = sub_name, ctx
        path.append(name)


def enforce(
    ctx: typer.Context, name: str, command: Any, args: list[str], environ: Mapping[str, str]
) -> None:
    """Refuse (exit 1) a command ``ALLOWED_COMMANDS`` does not allow, before it does anything."""
    if not any(variable in environ for variable in VARIABLES):
        return
    invocation = resolve(ctx, name, command, args)
    if invocation is None or invocation.help:
        return
    out = Output(invocation.json)
    try:
        policy = load(environ, command_names(ctx.find_root().command))
    except InvalidEntry as error:
        out.fail(
            CliError(
                USAGE,
                f"{error.variable}: unknown profile or command {error.entry!r}",
                error.hint,
                extra={"entry": error.entry, "variable": error.variable},
            )
        )
    if policy.allows(invocation.name):
        return
    allowed = policy.shown()
    out.fail(
        CliError(
            FAILED,
            f"`{' '.join(invocation.path)}` is not allowed here ({policy.describe()}). "
            f"Allowed: {', '.join(allowed) or 'nothing'}",
            extra={"command": invocation.name, "allowed": allowed, "variable": policy.variable},
        )
    )


# --- `orchestrator permissions` --------------------------------------------------------------


def permissions(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """What this CLI may run here (ALLOWED_COMMANDS): the patterns, the commands they allow."""
    out = Output(json_output)
    known = command_names(ctx.find_root().command)
    policy = load(os.environ, known)  # a bad entry was already reported by the check
    allowed = [name for name in known if policy.allows(name)]
    refused = [name for name in known if name not in allowed]
    info = {
        "restricted": policy.restricted,
        "variable": policy.variable,
        "value": policy.value if policy.restricted else None,
        "patterns": policy.shown(),
        "profiles": {name: list(patterns) for name, patterns in PROFILES.items()},
        "allowed": allowed,
        "refused": refused,
    }

    def render() -> None:
        if not policy.restricted:
            out.console.print("Everything is allowed (ALLOWED_COMMANDS is not set).")
            return
        out.console.print(escape(policy.describe()))
        out.console.print(f"[green]allowed[/green]  {_words(allowed) or 'nothing'}")
        out.console.print(f"[red]refused[/red]  {_words(refused) or 'nothing'}")

    out.emit(info, render)


def _words(names: Iterable[str]) -> str:
    return ", ".join(name.replace(".", " ") for name in names)
