"""``orchestrator up / down / status``: the embedded stack.

The stack's modules (the supervisor, psutil, ...) are imported by the commands that use them: the
CLI itself must import with its client dependencies only (a Worker runs it from a bundle).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.output import FAILED, CliError, JsonOption, Output, cli_name

if TYPE_CHECKING:
    from core.settings import Settings

STATE_STYLE = {
    "running": "green",
    "external": "green",
    "unhealthy": "yellow",
    "stopped": "red",
    "unreachable": "red",
}


def summary(current: dict[str, Any]) -> dict[str, Any]:
    return {
        "api_url": current.get("api_url"),
        "temporal_ui_url": current.get("temporal_ui_url"),
        "home": current.get("home"),
        "logs_dir": current.get("logs_dir"),
        "supervisor_pid": current.get("supervisor_pid"),
    }


def print_summary(out: Output, info: dict[str, Any]) -> None:
    out.say(f"API             {info['api_url']}")
    if info.get("temporal_ui_url"):
        out.say(f"Temporal Web UI {info['temporal_ui_url']}")
    out.say(f"Home            {info['home']}")
    out.say(f"Logs            {info['logs_dir']}")


def ensure_up(out: Output, settings: Settings, timeout: float) -> tuple[dict[str, Any], bool]:
    """The running stack's state, starting it detached if it is not up; (state, started)."""
    from stack import state
    from stack.supervisor import StackError, start_detached

    current = state.read_state(settings)
    if not state.is_up(current):
        out.say(f"Starting the embedded stack in {settings.home_dir} ...")
    try:
        return start_detached(settings, timeout)
    except StackError as exc:
        raise CliError(FAILED, "the stack did not start", str(exc)) from None


def up(
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Run in the background; return once healthy.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for a detached start.")] = 300,
    json_output: JsonOption = False,
) -> None:
    """Start the embedded stack: Temporal, Redis, the API, the Temporal worker, the bridges."""
    from core.settings import Settings
    from stack import state

    out = Output(json_output)
    settings = Settings()
    current = state.read_state(settings)
    if state.is_up(current) and current is not None:
        info = {**summary(current), "status": "already_running"}
        out.emit(info, lambda: _already(out, info))
        return
    if detach:
        current, started = ensure_up(out, settings, timeout)
        info = {**summary(current), "status": "started" if started else "already_running"}

        def render() -> None:
            out.say("[green]The stack is up.[/green]" if started else "The stack is already up.")
            print_summary(out, info)
            out.say(f"Stop it with: {cli_name()} down")

        out.emit(info, render)
        return
    run_foreground(out, settings)


def _already(out: Output, info: dict[str, Any]) -> None:
    out.say(f"The stack is already up (supervisor pid {info['supervisor_pid']}).")
    print_summary(out, info)


def run_foreground(out: Output, settings: Settings) -> None:
    from stack.supervisor import Supervisor

    out.say(f"Starting the embedded stack in {settings.home_dir} ...")

    def ready(supervisor: Supervisor) -> None:
        info = {**summary(supervisor.state()), "status": "started"}
        out.emit(info, lambda: None)
        out.say("[green]The stack is up.[/green]")
        print_summary(out, info)
        out.say("Press Ctrl-C to stop it.")

    code = Supervisor(settings, echo=out.say).run(on_ready=ready)
    if code != 0:
        raise typer.Exit(code)


def down(
    timeout: Annotated[float, typer.Option(help="Seconds before leftovers get SIGKILL.")] = 90,
    json_output: JsonOption = False,
) -> None:
    """Stop the stack and every process it started."""
    from core.settings import Settings
    from stack.supervisor import stop

    out = Output(json_output)
    result = stop(Settings(), timeout)

    def render() -> None:
        if result.get("local_target"):
            out.console.print("Stopped the local deploy target (its apps keep running).")
        if not result["was_running"]:
            out.console.print("The stack is not running.")
            return
        out.console.print(f"Stopped ({len(result['stopped'])} processes).")
        if result["killed"]:
            out.console.print(f"[yellow]Killed after the timeout: {result['killed']}[/yellow]")

    out.emit(result, render)


def show_status(json_output: JsonOption = False) -> None:
    """Each service of the stack: running, unhealthy or stopped; its address and PID."""
    from core.settings import Settings
    from stack.supervisor import status

    out = Output(json_output)
    info = status(Settings())

    def render() -> None:
        from rich.table import Table

        headline = "[green]up[/green]" if info["running"] else "[red]down[/red]"
        out.console.print(f"Stack {headline} ({info['phase']}), home {info['home']}")
        if info.get("error"):
            out.console.print(f"[red]last error:[/red] {info['error']}")
        table = Table("service", "state", "address", "pid", "log (in the home)")
        for svc in info["services"]:
            style = STATE_STYLE.get(svc["state"], "white")
            table.add_row(
                svc["name"],
                f"[{style}]{svc['state']}[/]",
                svc.get("address") or "",
                str(svc.get("pid") or ""),
                _short(svc.get("log"), info["home"]),
            )
        out.console.print(table)
        if info["running"]:
            out.console.print(f"API {info['api_url']}   Temporal Web UI {info['temporal_ui_url']}")

    out.emit(info, render)


def _short(path: str | None, home: str) -> str:
    if not path:
        return ""
    return path.removeprefix(home.rstrip("/") + "/")


def register(app: typer.Typer) -> None:
    from cli.output import command

    command(app, "up")(up)
    command(app, "down")(down)
    command(app, "status")(show_status)
