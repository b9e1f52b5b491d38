"""``orchestrator server``: add, list, show, provision and remove the servers deploys go to."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import typer

from cli.output import FAILED, NOT_FOUND, OK, USAGE, CliError, JsonOption, Output, command, escape

if TYPE_CHECKING:
    from cli.client import ApiClient
    from core.settings import Settings

app = typer.Typer(
    help="Servers deploys go to: add, list, show, provision, remove.", no_args_is_help=True
)

LOCAL = "local"  # the handle of this machine as a deploy target
# Where a provisioning ends.
PROVISIONED = ("READY", "FAILED")
POLL_S = 0.5

WaitOption = Annotated[
    bool, typer.Option("--wait", help="Block until provisioning ends: exit 0 READY, 1 FAILED.")
]
TimeoutOption = Annotated[
    float | None, typer.Option(min=0, help="With --wait: give up after this many seconds (exit 1).")
]


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
    from rich.table import Table

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    rows = {
        "server": server.get("handle"),
        "id": server.get("id"),
        "address": f"{server.get('ssh_user')}@{server.get('host')}:{server.get('port')}",
        "status": server.get("status"),
        "capacity": capacity_text(server.get("capacity")),
        "apps": server.get("apps_root"),
        "apps at": f"https://<project>.{server['base_domain']}"
        if server.get("base_domain")
        else None,
        "databases": f"PostgreSQL on its port {(server.get('database') or {}).get('port', 5432)}",
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


def wait_provisioned(
    client: ApiClient, out: Output, requested: dict[str, Any], timeout: float | None
) -> dict[str, Any]:
    """Poll the server until a provisioning ends after ``requested`` (the server as the request
    returned it): READY or FAILED with a new ``last_checked_at``, which every outcome stamps."""
    out.say(f"Waiting for server {escape(requested['handle'])} to be provisioned...")
    before = requested.get("last_checked_at")
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        server: dict[str, Any] = client.get(server_path(requested["id"]))
        if server["status"] in PROVISIONED and server.get("last_checked_at") != before:
            return {**server, "request_id": requested["request_id"]}
        if deadline is not None and time.monotonic() >= deadline:
            raise CliError(
                FAILED,
                f"timed out after {timeout:g}s waiting for server {server['handle']} "
                f"(still {server['status']})",
                f"Provisioning goes on; see it with `orchestrator server show {server['handle']}`.",
                extra={"timed_out": True, "server": server["handle"], "status": server["status"]},
            )
        time.sleep(POLL_S)


def emit_provisioned(out: Output, server: dict[str, Any]) -> None:
    """The provisioned server; exit 1 when it FAILED."""

    def render() -> None:
        status = server["status"]
        if status == "READY":
            details = capacity_text(server.get("capacity"))
            out.console.print(
                f"Server [bold]{escape(server['handle'])}[/bold] [green]READY[/green]"
                + (f": {details}" if details else "")
            )
        else:
            out.console.print(
                f"Server [bold]{escape(server['handle'])}[/bold] [red]{status}[/red]: "
                f"{escape(server.get('last_error') or 'no reason given')}"
            )

    out.emit(server, render)
    raise typer.Exit(OK if server["status"] == "READY" else FAILED)


@command(app, "add")
def add(
    handle: Annotated[str, typer.Option(help="Unique name: lower-case letters, digits, '-'.")],
    host: Annotated[str, typer.Option(help="Host name or IP address to reach it over SSH.")],
    user: Annotated[str, typer.Option(help="The SSH user (with sudo rights).")],
    key_file: Annotated[
        Path, typer.Option(help="The SSH private key's file; stored encrypted, never shown.")
    ],
    port: Annotated[int, typer.Option(help="The SSH port.", min=1, max=65535)] = 22,
    apps_root: Annotated[
        str | None,
        typer.Option(
            help="Where apps live on it (absolute or ~/...); default ~/orchestrator-apps."
        ),
    ] = None,
    base_domain: Annotated[
        str | None,
        typer.Option(
            help="Apps go live at https://<project>.<base-domain> (point a wildcard DNS record "
            "at the server); without it each app is reached on its port."
        ),
    ] = None,
    tls: Annotated[
        str,
        typer.Option(
            help="acme: certificates from Let's Encrypt (the names must resolve to it); "
            "internal: the edge's own CA (a private network)."
        ),
    ] = "acme",
    https_port: Annotated[int, typer.Option(help="The edge's HTTPS port.", min=1)] = 443,
    http_port: Annotated[int, typer.Option(help="The edge's HTTP port (ACME).", min=1)] = 80,
    database_port: Annotated[
        int,
        typer.Option(
            help="The loopback port of the PostgreSQL its apps' databases are in (the deploys "
            "run it).",
            min=1,
            max=65535,
        ),
    ] = 5432,
    wait: WaitOption = False,
    timeout: TimeoutOption = None,
    json_output: JsonOption = False,
) -> None:
    """Add a server (admins) and have it provisioned."""
    from cli.client import ApiClient

    out = Output(json_output)
    body: dict[str, Any] = {
        "handle": handle,
        "host": host,
        "port": port,
        "ssh_user": user,
        "private_key": read_key_file(key_file),
    }
    if apps_root:
        body["apps_root"] = apps_root
    if base_domain:
        body["base_domain"] = base_domain
    body["edge"] = {"tls": tls, "https_port": https_port, "http_port": http_port}
    body["database"] = {"port": database_port}
    with ApiClient() as client:
        server = client.post("/servers", body)
        out.print(
            f"Added server [bold]{escape(server['handle'])}[/bold] ({server['id']}); "
            f"provisioning requested ({server['request_id']})"
        )
        if wait:
            emit_provisioned(out, wait_provisioned(client, out, server, timeout))
    out.emit(server, lambda: None)  # people read the line above


@command(app, "update")
def update(
    server: Annotated[str, typer.Argument(help="Server ID or handle.")],
    base_domain: Annotated[
        str | None,
        typer.Option(
            help="Apps go live at https://<project>.<base-domain> from their next deploy."
        ),
    ] = None,
    no_base_domain: Annotated[
        bool, typer.Option("--no-base-domain", help="Take the names away: apps on their ports.")
    ] = False,
    tls: Annotated[str | None, typer.Option(help="acme or internal.")] = None,
    https_port: Annotated[int | None, typer.Option(help="The edge's HTTPS port.", min=1)] = None,
    http_port: Annotated[int | None, typer.Option(help="The edge's HTTP port.", min=1)] = None,
    database_port: Annotated[
        int | None,
        typer.Option(help="The loopback port of its PostgreSQL for apps.", min=1, max=65535),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Change a server's base domain, edge or database port (admins); its apps get them on their
    next deploy."""
    from cli.client import ApiClient

    if base_domain and no_base_domain:
        raise CliError(USAGE, "--base-domain and --no-base-domain contradict each other")
    out = Output(json_output)
    body: dict[str, Any] = {}
    if base_domain or no_base_domain:
        body["base_domain"] = base_domain
    given = {"tls": tls, "https_port": https_port, "http_port": http_port}
    with ApiClient() as client:
        if any(value is not None for value in given.values()):
            current = client.get(server_path(server)).get("edge") or {}
            body["edge"] = {**current, **{k: v for k, v in given.items() if v is not None}}
        if database_port is not None:
            body["database"] = {"port": database_port}
        if not body:
            raise CliError(USAGE, "nothing to change: give --base-domain, --tls or a port")
        updated = client.request("PATCH", server_path(server), body)
    out.emit(updated, lambda: render_server(out, updated))


@command(app, "provision")
def provision(
    server: Annotated[str, typer.Argument(help="Server ID or handle.")],
    force_reinstall: Annotated[
        bool,
        typer.Option(
            "--force-reinstall", help="Install what deploys need (python3, tar, gzip) with apt-get."
        ),
    ] = False,
    wait: WaitOption = False,
    timeout: TimeoutOption = None,
    json_output: JsonOption = False,
) -> None:
    """Provision a server again (admins): it checks what deploys need and measures capacity."""
    from cli.client import ApiClient

    out = Output(json_output)
    with ApiClient() as client:
        requested = client.post(
            f"{server_path(server)}/provision", {"force_reinstall": force_reinstall}
        )
        out.print(
            f"Provisioning of server [bold]{escape(requested['handle'])}[/bold] requested "
            f"({requested['request_id']})"
        )
        if wait:
            emit_provisioned(out, wait_provisioned(client, out, requested, timeout))
    out.emit(requested, lambda: None)  # people read the line above


def local_edge(settings: Settings, host: str) -> dict[str, Any]:
    """The local target's names, edge and database: *.localhost resolve to loopback in curl and
    browsers; certificates from the edge's own CA; PostgreSQL on a port of the stack's own."""
    return {
        "database": {"port": settings.local_database_port},
        "base_domain": "localhost",
        "edge": {
            "http_port": settings.local_edge_http_port,
            "https_port": settings.local_edge_https_port,
            "admin_port": settings.local_edge_admin_port,
            "bind": host,
            "tls": "internal",
        },
    }


def ensure_local_server(
    client: ApiClient, out: Output, settings: Settings, timeout: float | None = 120
) -> dict[str, Any]:
    """The server ``local`` (an sshd of the stack's own on this machine), started, registered
    and provisioned if it is not yet: READY, or a CliError saying why not."""
    from stack import local_target  # here: a PO Worker's CLI bundle has no stack package

    try:
        target = local_target.ensure_running(settings)
    except (local_target.TargetError, OSError, subprocess.SubprocessError) as exc:
        raise CliError(FAILED, "the local deploy target did not start", str(exc)) from None
    try:
        server: dict[str, Any] = client.get(server_path(LOCAL))
    except CliError as error:
        if error.exit_code != NOT_FOUND:
            raise
        body = {
            "handle": LOCAL,
            "host": target.host,
            "port": target.port,
            "ssh_user": target.user,
            "private_key": target.private_key,
            "apps_root": str(target.apps_root),
            **local_edge(settings, target.host),
        }
        out.say(f"Registering this machine as the deploy target [bold]{LOCAL}[/bold] ...")
        server = wait_provisioned(client, out, client.post("/servers", body), timeout)
    if server.get("edge") is None or server.get("database") is None:
        # Registered before servers had an edge or a database: it gets them now.
        server = client.request("PATCH", server_path(LOCAL), local_edge(settings, target.host))
    if server["status"] != "READY":
        requested = client.post(f"{server_path(LOCAL)}/provision", {})
        server = wait_provisioned(client, out, requested, timeout)
    if server["status"] != "READY":
        raise CliError(
            FAILED,
            f"the local deploy target is {server['status']}",
            server.get("last_error") or "",
            extra={"server": server},
        )
    return server


@command(app, "local")
def local(
    timeout: TimeoutOption = 120,
    json_output: JsonOption = False,
) -> None:
    """Make this machine a deploy target: an sshd of the stack's own on loopback (stopped by
    `down`), registered as the server `local` and provisioned; apps live under the home."""
    from cli.client import ApiClient

    out = Output(json_output)
    with ApiClient() as client:
        server = ensure_local_server(client, out, client.settings, timeout)
    out.emit(server, lambda: render_server(out, server))


@command(app, "list")
def list_servers(json_output: JsonOption = False) -> None:
    """All servers."""
    from cli.client import ApiClient

    out = Output(json_output)
    with ApiClient() as client:
        servers = client.get("/servers")

    def render() -> None:
        from rich.table import Table

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
    from cli.client import ApiClient

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
    from cli.client import ApiClient

    out = Output(json_output)
    with ApiClient() as client:
        found = client.get(server_path(server))
        client.request("DELETE", server_path(found["id"]))
    result = {"id": found["id"], "handle": found["handle"], "removed": True}
    out.emit(
        result,
        lambda: out.console.print(f"Removed server [bold]{escape(found['handle'])}[/bold]"),
    )
