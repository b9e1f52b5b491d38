"""``orchestrator server``: add, list, show and remove the servers deploys go to."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.markup import escape
from rich.table import Table

from cli.client import ApiClient
from cli.output import USAGE, CliError, JsonOption, Output, command

app = typer.Typer(help="Servers deploys go to: add, list, show, remove.", no_args_is_help=True)


def read_key_file(path: Path) -> str:
    """The private key's text; a usage error (exit 2) when it cannot be read."""
    try:
        text = path.expanduser().read_text()
    except FileNotFoundError:
        raise CliError(USAGE, f"no key file at {path}") from None
    except IsADirectoryError:
        raise CliError(USAGE, f"{path} is a directory, not a key file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(USAGE, f"cannot read the key file {path}", type(exc).__name__) from None
    if not text.strip():
        raise CliError(USAGE, f"the key file {path} is empty")
    return text


def capacity_text(capacity: dict[str, Any] | None) -> str:
    if not capacity:
        return ""
    parts = []
    if capacity.get("cpus") is not None:
        parts.append(f"{capacity['cpus']} CPU")
    if capacity.get("memory_mb") is not None:
        parts.append(f"{capacity['memory_mb']} MB RAM")
    if capacity.get("disk_free_gb") is not None:
        parts.append(f"{capacity['disk_free_gb']} GB free")
    return ", ".join(parts)


def render_server(out: Output, server: dict[str, Any]) -> None:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    rows = {
        "server": server.get("handle"),
        "id": server.get("id"),
        "address": f"{server.get('ssh_user')}@{server.get('host')}:{server.get('port')}",
        "status": server.get("status"),
        "capacity": capacity_text(server.get("capacity")),
        "key": server.get("key_ref"),
        "last error": server.get("last_error"),
        "last checked": server.get("last_checked_at"),
        "created": server.get("created_at"),
        "provision request": server.get("request_id"),
    }
    for label, value in rows.items():
        if value:
            table.add_row(label, escape(str(value)))
    out.console.print(table)


def server_path(id_or_handle: str) -> str:
    return f"/servers/{quote(id_or_handle, safe='')}"


@command(app, "add")
def add(
    handle: Annotated[str, typer.Option(help="Unique name: lower-case letters, digits, '-'.")],
    host: Annotated[str, typer.Option(help="Host name or IP address to reach it over SSH.")],
    user: Annotated[str, typer.Option(help="The SSH user (with sudo rights).")],
    key_file: Annotated[
        Path, typer.Option(help="The SSH private key's file; stored encrypted, never shown.")
    ],
    port: Annotated[int, typer.Option(help="The SSH port.", min=1, max=65535)] = 22,
    json_output: JsonOption = False,
) -> None:
    """Add a server (admins) and have it provisioned."""
    out = Output(json_output)
    body = {
        "handle": handle,
        "host": host,
        "port": port,
        "ssh_user": user,
        "private_key": read_key_file(key_file),
    }
    with ApiClient() as client:
        server = client.post("/servers", body)
    out.emit(
        server,
        lambda: out.console.print(
            f"Added server [bold]{escape(server['handle'])}[/bold] ({server['id']}); "
            f"provisioning requested ({server['request_id']})"
        ),
    )


@command(app, "list")
def list_servers(json_output: JsonOption = False) -> None:
    """All servers."""
    out = Output(json_output)
    with ApiClient() as client:
        servers = client.get("/servers")

    def render() -> None:
        if not servers:
            out.console.print(
                "No servers yet: `orchestrator server add --handle H --host HOST --user U "
                "--key-file F`."
            )
            return
        # Handles and IDs are never cut: people copy them into the next command.
        longest = max(len(server["handle"]) for server in servers)
        table = Table()
        table.add_column("handle", no_wrap=True, min_width=max(6, longest))
        table.add_column("id", no_wrap=True, min_width=32)
        table.add_column("address", overflow="fold")
        table.add_column("status", no_wrap=True, min_width=12)
        table.add_column("capacity")
        for server in servers:
            table.add_row(
                escape(server["handle"]),
                server["id"],
                escape(f"{server['ssh_user']}@{server['host']}:{server['port']}"),
                server["status"],
                capacity_text(server.get("capacity")),
            )
        out.console.print(table)

    out.emit(servers, render)


@command(app, "show")
def show(
    server: Annotated[str, typer.Argument(help="Server ID or handle.")],
    json_output: JsonOption = False,
) -> None:
    """One server."""
    out = Output(json_output)
    with ApiClient() as client:
        found = client.get(server_path(server))
    out.emit(found, lambda: render_server(out, found))


@command(app, "remove")
def remove(
    server: Annotated[str, typer.Argument(help="Server ID or handle.")],
    json_output: JsonOption = False,
) -> None:
    """Remove a server and its stored key (admins); refused while it hosts deployments."""
    out = Output(json_output)
    with ApiClient() as client:
        found = client.get(server_path(server))
        client.request("DELETE", server_path(found["id"]))
    result = {"id": found["id"], "handle": found["handle"], "removed": True}
    out.emit(
        result,
        lambda: out.console.print(f"Removed server [bold]{escape(found['handle'])}[/bold]"),
    )
