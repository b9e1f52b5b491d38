"""``orchestrator schedule``: the scheduled jobs (the reaper, the server and app checks): list
them, pause and unpause their Temporal Schedules, run one now (admins)."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer

from cli.incident import when
from cli.output import JsonOption, Output, command, escape

app = typer.Typer(
    help="The scheduled jobs: list, pause, unpause, run now (admins).", no_args_is_help=True
)

NameArgument = Annotated[
    str, typer.Argument(help="The job's name, as `schedule list` shows it (e.g. reaper).")
]


def interval_text(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def state_text(schedule: dict[str, Any]) -> str:
    if not schedule["exists"]:
        return "[red]not made[/red] (`orchestrator up` makes it)"
    if schedule["paused"]:
        note = schedule.get("note")
        return "[yellow]paused[/yellow]" + (f": {escape(note)}" if note else "")
    return "[green]active[/green]"


def last_run_text(schedule: dict[str, Any]) -> str:
    text = when(schedule.get("last_run_at"))
    return f"{text} (running)" if schedule.get("running") else text


@command(app, "list")
def list_schedules(json_output: JsonOption = False) -> None:
    """Every scheduled job: interval, paused or not, last and next run (UTC)."""
    from cli.client import ApiClient

    out = Output(json_output)
    with ApiClient() as client:
        found = client.get("/schedules")

    def render() -> None:
        from rich.table import Table

        table = Table()
        table.add_column("name", no_wrap=True)
        table.add_column("interval", no_wrap=True, justify="right")
        table.add_column("state")
        table.add_column("last run", no_wrap=True)
        table.add_column("next run", no_wrap=True)
        table.add_column("summary")
        for schedule in found:
            table.add_row(
                escape(schedule["name"]),
                interval_text(schedule["interval_s"]),
                state_text(schedule),
                last_run_text(schedule),
                when(schedule.get("next_run_at")),
                escape(schedule["summary"]),
            )
        out.console.print(table)

    out.emit(found, render)


def change(name: str, action: str, body: dict[str, Any] | None, json_output: bool) -> None:
    """POST /schedules/<name>/<action> and show the Schedule as it is now."""
    from cli.client import ApiClient

    out = Output(json_output)
    with ApiClient() as client:
        schedule = client.post(f"/schedules/{quote(name, safe='')}/{action}", body)

    def render() -> None:
        what = f"Schedule [bold]{escape(schedule['name'])}[/bold] ({schedule['schedule_id']})"
        if schedule["paused"]:
            note = schedule.get("note")
            out.console.print(f"{what} paused" + (f": {escape(note)}" if note else ""))
        else:
            out.console.print(f"{what} runs again; next run {when(schedule.get('next_run_at'))}")

    out.emit(schedule, render)


@command(app, "pause")
def pause(
    name: NameArgument,
    note: Annotated[
        str | None, typer.Option(help="Why, kept with the Schedule; default: who paused it.")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Pause a job (admins): it starts no runs until unpaused; a run going on goes on."""
    change(name, "pause", {"note": note} if note else None, json_output)


@command(app, "unpause")
def unpause(name: NameArgument, json_output: JsonOption = False) -> None:
    """Unpause a job (admins): its runs start again at its interval."""
    change(name, "unpause", None, json_output)


@command(app, "run")
def run(
    name: NameArgument,
    wait: Annotated[
        float, typer.Option(min=0, max=300, help="Seconds to wait for the run's end (0: don't).")
    ] = 60,
    json_output: JsonOption = False,
) -> None:
    """Run a job now (admins), as its interval would, and show what the run found."""
    from cli.client import ApiClient

    out = Output(json_output)
    # The API waits up to `wait` for the run; this client waits for the API a little longer.
    with ApiClient(timeout=wait + 30) as client:
        ran = client.post(f"/schedules/{quote(name, safe='')}/run", {"wait_s": wait})

    def render() -> None:
        out.console.print(f"Run {escape(ran['workflow_id'])}: {ran['status']}")
        if ran.get("error"):
            out.console.print(f"[red]{escape(ran['error'])}[/red]")
        report = ran.get("result") or {}
        for checked in report.get("checked", []):
            out.console.print(f"  {escape(check_line(checked))}")
        for subject, why in (report.get("errors") or {}).items():
            out.console.print(f"  [red]{escape(subject)}: {escape(why)}[/red]")

    out.emit(ran, render)
    if ran["status"] == "failed":
        raise typer.Exit(1)


def check_line(checked: dict[str, Any]) -> str:
    """One line of a check's report: a server's status, or an app's state."""
    if "handle" in checked:
        problems = "; ".join(checked.get("problems") or [])
        return f"server {checked['handle']}: {checked['status']}" + (
            f" ({problems})" if problems else ""
        )
    state = "up" if checked.get("up") else "not checked" if checked.get("up") is None else "down"
    restarted = ", started again" if checked.get("restarted") else ""
    problem = f": {checked['problem']}" if checked.get("problem") else ""
    return f"app {checked.get('project') or checked['deployment_id']}: {state}{restarted}{problem}"
