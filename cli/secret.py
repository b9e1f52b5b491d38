"""``orchestrator secret``: a project's secrets. Values go in from stdin or a hidden prompt,
never as an argument (it would be in the shell's history and in ``ps``), and never come out."""

from __future__ import annotations

import re
import sys
from typing import Annotated, Any
from urllib.parse import quote

import typer

from cli.output import USAGE, CliError, JsonOption, Output, command, escape

app = typer.Typer(help="A project's secrets: set, list (names only), remove.", no_args_is_help=True)

# The API's rule (db/secrets.py), checked here too so a bad name fails before the prompt.
_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")

ProjectOption = Annotated[str, typer.Option("--project", "-p", help="Project ID or name.")]
KeyArgument = Annotated[
    str, typer.Argument(help="The environment variable's name, e.g. DATABASE_URL.")
]


def check_name(name: str) -> None:
    if not _NAME.match(name):
        raise CliError(
            USAGE,
            f"invalid secret name {name!r}",
            "Secret names are environment variable names: upper-case letters, digits and '_', "
            "not starting with a digit (e.g. DATABASE_URL).",
        )


def secrets_path(project: str, name: str | None = None) -> str:
    path = f"/projects/{quote(project, safe='')}/secrets"
    return path if name is None else f"{path}/{quote(name, safe='')}"


def read_value(name: str) -> str:
    """The value: all of stdin when it is piped, else typed at a prompt that does not echo."""
    if sys.stdin is not None and not sys.stdin.isatty():
        # `echo VALUE | ...` ends it with a newline that is not part of the value.
        value = sys.stdin.read().rstrip("\r\n")
    else:
        value = typer.prompt(
            f"Value of {name}", hide_input=True, confirmation_prompt=True, err=True
        )
    if not value:
        raise CliError(USAGE, f"no value given for {name}", "Pipe it in, or type it when asked.")
    return value


@command(app, "set")
def set_secret(
    key: KeyArgument,
    project: ProjectOption,
    json_output: JsonOption = False,
) -> None:
    """Set a secret (from stdin when piped, else a hidden prompt); replaces an existing one."""
    from cli.client import ApiClient

    out = Output(json_output)
    check_name(key)
    with ApiClient() as client:
        found = client.project(project)  # before the prompt: a wrong project wastes no typing
        value = read_value(key)
        created = client.request("PUT", secrets_path(found["id"], key), json={"value": value})
    result: dict[str, Any] = {
        "project_id": found["id"],
        "project": found["name"],
        "name": key,
        "created": created is not None,
    }
    verb = "Set" if created is not None else "Replaced"
    out.emit(
        result,
        lambda: out.console.print(
            f"{verb} secret [bold]{escape(key)}[/bold] of project {escape(found['name'])}"
        ),
    )


@command(app, "list")
def list_secrets(project: ProjectOption, json_output: JsonOption = False) -> None:
    """The project's secrets: names only."""
    from cli.client import ApiClient

    out = Output(json_output)
    with ApiClient() as client:
        secrets = client.get(secrets_path(project))

    def render() -> None:
        from rich.table import Table

        if not secrets:
            out.console.print(
                f"No secrets yet: `orchestrator secret set --project {escape(project)} NAME`."
            )
            return
        table = Table()
        table.add_column("name", no_wrap=True)
        table.add_column("updated", no_wrap=True)
        for secret in secrets:
            table.add_row(escape(secret["name"]), str(secret.get("updated_at") or ""))
        out.console.print(table)

    out.emit(secrets, render)


@command(app, "remove")
def remove(key: KeyArgument, project: ProjectOption, json_output: JsonOption = False) -> None:
    """Remove a secret."""
    from cli.client import ApiClient

    out = Output(json_output)
    with ApiClient() as client:
        found = client.project(project)
        client.request("DELETE", secrets_path(found["id"], key))
    result = {"project_id": found["id"], "project": found["name"], "name": key, "removed": True}
    out.emit(
        result,
        lambda: out.console.print(
            f"Removed secret [bold]{escape(key)}[/bold] of project {escape(found['name'])}"
        ),
    )
