"""``orchestrator``: the CLI a Product Owner agent (and a person) drives; a thin API client.

Exit codes: 0 ok, 1 failed task or not allowed, 2 usage, 3 not found, 4 cannot reach the API.
"""

from __future__ import annotations

import gc
import os
from typing import Any

import typer
from typer.core import TyperGroup

from cli import (
    contracts,
    deploy,
    engineering,
    images,
    incident,
    permissions,
    pr,
    project,
    respond,
    schedule,
    secret,
    server,
    stack,
    task,
    usage,
    worker,
)
from cli.demo import demo
from cli.output import command


class GuardedGroup(TyperGroup):
    """The root group: every command passes ``ALLOWED_COMMANDS`` (cli/permissions.py) here.

    Hooked where the first word is resolved because that is the last moment the remaining
    arguments are still known (a root callback only sees the sub-command's name) and before the
    command runs. ``--help`` runs nothing and is let through whatever is allowed.
    """

    # ctx: Any because typer types it as its vendored click's Context, which it does not export.
    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        name, cmd, rest = super().resolve_command(ctx, args)
        if cmd is not None and name is not None and not ctx.resilient_parsing:
            permissions.enforce(ctx, name, cmd, rest, os.environ)
        return name, cmd, rest


app = typer.Typer(
    cls=GuardedGroup,
    name="orchestrator",
    help="codegen-orchestrator: durable engineering pipelines on Temporal.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stack.register(app)
app.add_typer(project.app, name="project")
app.add_typer(engineering.app, name="engineering")
app.add_typer(deploy.app, name="deploy")
app.add_typer(task.app, name="task")
app.add_typer(contracts.app, name="contracts")
app.add_typer(images.app, name="images")
app.add_typer(pr.app, name="pr")
app.add_typer(server.app, name="server")
app.add_typer(secret.app, name="secret")
app.add_typer(worker.app, name="worker")
app.add_typer(incident.app, name="incident")
app.add_typer(schedule.app, name="schedule")
command(app, "demo")(demo)
command(app, "respond")(respond.respond)
command(app, "permissions")(permissions.permissions)
command(app, "usage")(usage.usage)


def main() -> None:
    try:
        app()
    finally:
        # Exiting, the interpreter's cycle collector walks every object the command's imports
        # made (pydantic's schemas, rich, ...) several times: tens of ms of a short
        # command. Frozen, they are left out of those walks; the memory goes back to the system
        # with the process anyway.
        gc.freeze()


if __name__ == "__main__":
    main()
