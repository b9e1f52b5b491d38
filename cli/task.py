"""``orchestrator task``: list, show, cancel, retry, respond and watch tasks."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.output import FAILED, OK, USAGE, CliError, JsonOption, Output, cli_name, command, escape

if TYPE_CHECKING:
    from cli.client import ApiClient

app = typer.Typer(help="Tasks: list, show, cancel, retry, respond, watch.", no_args_is_help=True)

STATUS_STYLE = {
    "QUEUED": "dim",
    "RUNNING": "cyan",
    "WAITING_HUMAN": "yellow",
    "COMPLETED": "green",
    "FAILED": "red",
    "CANCELLED": "magenta",
}
EVENT_MARK = {
    "started": "▶",
    "stage_started": "→",
    "stage_completed": "✓",
    "progress": "·",
    "completed": "✔",
    "failed": "✘",
    "cancelled": "■",
}


def styled(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def exit_code_of(status: str) -> int:
    return OK if status == "COMPLETED" else FAILED


def with_url(client: ApiClient, task: dict[str, Any]) -> dict[str, Any]:
    return {**task, "workflow_url": client.settings.workflow_url(task["workflow_id"])}


def render_task(out: Output, task: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("task", task["id"]),
        ("type", f"{task['type']} ({task.get('action', '')})"),
        ("status", styled(task["status"])),
        ("project", task["project_id"]),
        ("workflow", task["workflow_id"]),
        ("Web UI", task.get("workflow_url", "")),
        ("created", str(task.get("created_at", ""))),
        ("completed", str(task.get("completed_at") or "")),
        ("retry of", task.get("retry_of") or ""),
        ("error", f"[red]{escape(task['error'])}[/red]" if task.get("error") else ""),
    ]
    for label, value in rows:
        if value:
            table.add_row(label, value)
    out.console.print(table)
    if task.get("result"):
        out.console.print("[bold]result[/bold]")
        out.console.print_json(data=task["result"], default=str)
    spec = task.get("spec") or ""
    if spec:
        out.console.print(f"[bold]spec[/bold] {escape(spec[:500])}{'…' if len(spec) > 500 else ''}")
    render_engineering(out, (task.get("details") or {}).get("engineering"))


def render_engineering(out: Output, options: dict[str, Any] | None) -> None:
    """The agent and limits the task was started with (the script itself only as its size)."""
    if not options:
        return
    parts = [
        "script=given" if key == "script" else f"{key}={value}"
        for key, value in options.items()
        if key != "instructions"
    ]
    if options.get("instructions"):
        parts.append(f"instructions={len(options['instructions'])} chars")
    out.console.print(f"[bold]engineering[/bold] {escape(', '.join(parts))}")


def pending_question(events: list[dict[str, Any]]) -> str | None:
    """The question of a WAITING_HUMAN task: the latest event that carries one."""
    for event in reversed(events):
        question = (event.get("data") or {}).get("question")
        if question:
            return str(question)
    return None


def render_question(out: Output, task: dict[str, Any], events: list[dict[str, Any]]) -> None:
    if task["status"] != "WAITING_HUMAN":
        return
    question = pending_question(events) or (events[-1].get("message") if events else None)
    out.console.print(f"[bold yellow]question[/bold yellow] {escape(question or '(not recorded)')}")
    out.console.print(f'Answer it: {cli_name()} task respond {task["id"]} "..."')


def event_line(event: dict[str, Any]) -> str:
    kind = event.get("type", "")
    mark = EVENT_MARK.get(kind, "·")
    stage = f"[bold]{escape(event['stage'])}[/bold] " if event.get("stage") else ""
    label = kind.replace("_", " ")
    message = escape(event.get("message") or "")
    colour = {"failed": "red", "completed": "green", "cancelled": "magenta"}.get(kind, "")
    text = f"{mark} {stage}{label}{': ' + message if message else ''}"
    return f"[{colour}]{text}[/{colour}]" if colour else text


def follow_with_progress(
    client: ApiClient, out: Output, task_id: str, timeout: float | None = None
) -> list[dict[str, Any]]:
    """Follow a task's events to its end: a progress bar and one line per event for people."""
    events: list[dict[str, Any]] = []
    if out.json:
        events.extend(client.follow(task_id, timeout))
        return events
    from rich.progress import (
        BarColumn,
        Progress,
        SpinnerColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=out.console,
    ) as progress:
        bar = progress.add_task("waiting for the task to start", total=1.0)
        for event in client.follow(task_id, timeout):
            events.append(event)
            if event.get("type") != "progress" or event.get("message"):
                progress.console.print(event_line(event))
            description = event.get("stage") or event.get("status", "")
            update: dict[str, Any] = {"description": escape(str(description))}
            if event.get("progress") is not None:
                update["completed"] = float(event["progress"])
            if event.get("type") == "completed":
                update["completed"] = 1.0
            progress.update(bar, **update)
    return events


@command(app, "list")
def list_tasks(
    project: Annotated[str | None, typer.Option(help="Only this project (ID or name).")] = None,
    status: Annotated[str | None, typer.Option(help="Only this status, e.g. RUNNING.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many.")] = 50,
    json_output: JsonOption = False,
) -> None:
    """Tasks, newest first."""
    from cli.client import ApiClient

    out = Output(json_output)
    with ApiClient() as client:
        project_id = client.project(project)["id"] if project else None
        tasks = client.get(
            "/tasks", project_id=project_id, status=status.upper() if status else None, limit=limit
        )

    def render() -> None:
        from rich.table import Table

        if not tasks:
            out.console.print("No tasks.")
            return
        # IDs are never cut: people copy them into the next command.
        table = Table()
        table.add_column("task", no_wrap=True, min_width=32)
        table.add_column("status", no_wrap=True, min_width=9)
        table.add_column("created", no_wrap=True, min_width=11)
        table.add_column(
            f"{'type: ' if len({t['type'] for t in tasks}) > 1 else ''}spec",
            overflow="ellipsis",
            no_wrap=True,
            max_width=50,
        )
        for task in tasks:
            table.add_row(
                task["id"],
                styled(task["status"]),
                str(task["created_at"])[5:16].replace("T", " "),
                escape(_summary(task, with_type=len({t["type"] for t in tasks}) > 1)),
            )
        out.console.print(table)

    out.emit(tasks, render)


def _summary(task: dict[str, Any], *, with_type: bool) -> str:
    first_line = task["spec"].splitlines()[0] if task["spec"] else ""
    return f"{task['type']}: {first_line}" if with_type else first_line


@command(app, "show")
def show(
    task_id: Annotated[str, typer.Argument(help="Task ID (or its workflow ID).")],
    json_output: JsonOption = False,
) -> None:
    """A task, its result and its events."""
    from cli.client import ApiClient

    out = Output(json_output)
    with ApiClient() as client:
        task = with_url(client, client.task(task_id))
        events = client.get(f"/tasks/{task['id']}/events")

    def render() -> None:
        render_task(out, task)
        if events:
            out.console.print("[bold]events[/bold]")
            for event in events:
                out.console.print(f"  {event_line(event)}")
        render_question(out, task, events)

    out.emit({**task, "events": events}, render)


@command(app, "cancel")
def cancel(
    task_id: Annotated[str, typer.Argument(help="Task ID (or its workflow ID).")],
    json_output: JsonOption = False,
) -> None:
    """Cancel a task: its workflow is cancelled, or the task is marked CANCELLED if not started."""
    from cli.client import ApiClient, task_id_of

    out = Output(json_output)
    with ApiClient() as client:
        task = with_url(client, client.post(f"/tasks/{task_id_of(task_id)}/cancel"))
    out.emit(
        task,
        lambda: out.console.print(f"Cancel requested for {task['id']}: {styled(task['status'])}"),
    )


@command(app, "retry")
def retry(
    task_id: Annotated[str, typer.Argument(help="A FAILED or CANCELLED task.")],
    json_output: JsonOption = False,
) -> None:
    """Run a failed or cancelled task again, as a new task with the same spec."""
    from cli.client import ApiClient, task_id_of

    out = Output(json_output)
    with ApiClient() as client:
        task = with_url(client, client.post(f"/tasks/{task_id_of(task_id)}/retry"))

    def render() -> None:
        out.console.print(f"New task [bold]{task['id']}[/bold] (retry of {task['retry_of']})")
        out.console.print(f"workflow  {task['workflow_id']}")
        out.console.print(f"Web UI    {task['workflow_url']}")

    out.emit({**task, "task_id": task["id"]}, render)


@command(app, "respond")
def respond(
    task_id: Annotated[str, typer.Argument(help="A task in WAITING_HUMAN.")],
    answer: Annotated[str, typer.Argument(help="The answer; '-' reads it from stdin.")],
    json_output: JsonOption = False,
) -> None:
    """Answer the question of a task waiting for a person (exit 1 if it is not waiting)."""
    from cli.client import ApiClient, task_id_of

    out = Output(json_output)
    text = sys.stdin.read() if answer == "-" else answer
    if not text.strip():
        raise CliError(USAGE, "the answer is empty")
    with ApiClient() as client:
        path = f"/tasks/{task_id_of(task_id)}/respond"
        task = with_url(client, client.post(path, {"answer": text}))
    out.emit(task, lambda: out.console.print(f"Answer delivered to task {task['id']}"))


@command(app, "watch")
def watch(
    task_id: Annotated[str, typer.Argument(help="Task ID (or its workflow ID).")],
    timeout: Annotated[
        float | None, typer.Option(help="Give up after this many seconds (exit 1).")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Follow a task live until it ends; the exit code is 0 only if it COMPLETED."""
    from cli.client import ApiClient, WaitTimeout

    out = Output(json_output)
    with ApiClient() as client:
        task = client.task(task_id)
        out.print(f"Task {task['id']}  workflow {task['workflow_id']}")
        out.print(f"Web UI {client.settings.workflow_url(task['workflow_id'])}")
        try:
            events = follow_with_progress(client, out, task["id"], timeout)
        except WaitTimeout:
            raise timed_out(client, task["id"], timeout) from None
        final = client.task(task["id"])
    status = final["status"]
    out.emit(
        {"task_id": final["id"], "status": status, "result": final.get("result"), "events": events},
        lambda: out.console.print(f"Task {final['id']} {styled(status)}"),
    )
    raise typer.Exit(exit_code_of(status))


def timed_out(client: ApiClient, task_id: str, timeout: float | None) -> CliError:
    status = client.task(task_id)["status"]
    return CliError(
        FAILED,
        f"timed out after {timeout:g}s waiting for task {task_id} (still {status})",
        f"The task goes on; follow it with `orchestrator task watch {task_id}`.",
        extra={"timed_out": True, "task_id": task_id, "status": status},
    )
