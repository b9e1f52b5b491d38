"""``orchestrator incident``: what the scheduled checks found wrong: list, show, acknowledge."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from cli.output import USAGE, CliError, JsonOption, Output, command, escape

app = typer.Typer(
    help="What the scheduled checks found wrong: list, show, ack.", no_args_is_help=True
)

IncidentArgument = Annotated[str, typer.Argument(help="The incident's number (12 or #12).")]


def incident_path(incident: str) -> str:
    """``/incidents/<n>`` for "12" or "#12" (as the chats' notes write it); else a usage error."""
    number = incident.strip().removeprefix("#")
    if not number.isdigit():
        raise CliError(USAGE, f"not an incident number: {incident!r}", "Give it as 12 or #12.")
    return f"/incidents/{int(number)}"


def when(value: str | None) -> str:
    """A timestamp of the API (UTC), to the second."""
    return str(value)[:19].replace("T", " ") if value else ""


def state_text(incident: dict[str, Any]) -> str:
    if incident["open"]:
        return "[red]open[/red]"
    return f"[green]resolved[/green] {when(incident.get('resolved_at'))}"


def render_incident(out: Output, incident: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("incident", f"#{incident['id']}: {escape(incident['title'])}")
    table.add_row("state", state_text(incident))
    rows = {
        "kind": incident.get("kind"),
        "subject": incident.get("subject"),
        "project": incident.get("project_id"),
        "server": incident.get("server_id"),
        "opened": when(incident.get("opened_at")),
        "acknowledged": f"{when(incident['acked_at'])} by {incident.get('acked_by')}"
        if incident.get("acked_at")
        else None,
    }
    evidence = dict(incident.get("evidence") or {})
    error, tail = evidence.pop("error", None), evidence.pop("log_tail", None)
    rows["failed checks"] = evidence.pop("failed_checks", None)
    rows["error"] = error
    rows.update({key: json.dumps(value) for key, value in evidence.items()})
    for label, value in rows.items():
        if value not in (None, ""):
            table.add_row(label, escape(str(value)))
    out.console.print(table)
    if tail:
        out.console.print("\n[bold]Its last log lines[/bold]")
        out.console.print(escape(str(tail)))


@command(app, "list")
def list_incidents(
    open_only: Annotated[bool, typer.Option("--open", help="Only those not resolved yet.")] = False,
    project: Annotated[
        str | None, typer.Option("--project", "-p", help="Project ID or name.")
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option(help="Only this kind: server_unreachable, disk_low, app_down, ..."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="At most this many.")] = 100,
    json_output: JsonOption = False,
) -> None:
    """Incidents, newest first (yours: those of your projects; an admin's: all)."""
    from cli.client import ApiClient

    out = Output(json_output)
    with ApiClient() as client:
        found = client.get(
            "/incidents",
            open="true" if open_only else None,
            project=project,
            kind=kind,
            limit=limit,
        )

    def render() -> None:
        from rich.table import Table

        if not found:
            out.console.print("No open incidents." if open_only else "No incidents.")
            return
        table = Table()
        table.add_column("#", justify="right", no_wrap=True)
        table.add_column("kind", no_wrap=True)
        table.add_column("title")
        table.add_column("opened", no_wrap=True)
        table.add_column("state", no_wrap=True)
        table.add_column("acked by", overflow="fold")
        for incident in found:
            table.add_row(
                str(incident["id"]),
                incident["kind"],
                escape(incident["title"]),
                when(incident["opened_at"]),
                state_text(incident),
                escape(incident.get("acked_by") or ""),
            )
        out.console.print(table)

    out.emit(found, render)


@command(app, "show")
def show(incident: IncidentArgument, json_output: JsonOption = False) -> None:
    """One incident: what failed, since when, its evidence (an app's last log lines)."""
    from cli.client import ApiClient

    out = Output(json_output)
    path = incident_path(incident)
    with ApiClient() as client:
        found = client.get(path)
    out.emit(found, lambda: render_incident(out, found))


@command(app, "ack")
def ack(incident: IncidentArgument, json_output: JsonOption = False) -> None:
    """Acknowledge an incident: you look into it (the first acknowledgement is kept)."""
    from cli.client import ApiClient

    out = Output(json_output)
    path = incident_path(incident)
    with ApiClient() as client:
        acked = client.post(f"{path}/ack")

    def render() -> None:
        by = escape(str(acked.get("acked_by")))
        out.console.print(
            f"Incident [bold]#{acked['id']}[/bold] acknowledged by {by} at "
            f"{when(acked.get('acked_at'))}: {escape(acked['title'])}"
        )

    out.emit(acked, render)
