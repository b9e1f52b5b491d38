"""``orchestrator engineering``: hand work to the Engineering department and follow it."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from cli.client import ApiClient, WaitTimeout
from cli.output import JsonOption, Output, cli_name, command
from cli.task import exit_code_of, render_task, styled, timed_out, with_url
from core.contracts.engineering import EngineeringAction

app = typer.Typer(help="Engineering tasks: start, status, wait.", no_args_is_help=True)


def start_task(
    client: ApiClient, project: str, spec: str, action: EngineeringAction
) -> dict[str, Any]:
    """Create the task; the API names its workflow before any bridge has started it."""
    project_id = client.project(project)["id"]
    task = client.post(
        "/tasks",
        {"type": "engineering", "project_id": project_id, "spec": spec, "action": action.value},
    )
    return {
        "task_id": task["id"],
        "workflow_id": task["workflow_id"],
        "workflow_url": client.settings.workflow_url(task["workflow_id"]),
        "project_id": project_id,
        "status": task["status"],
    }


@command(app, "start")
def start(
    project: Annotated[str, typer.Option(help="Project ID or name.")],
    spec: Annotated[str, typer.Option(help="What to build or fix; '-' reads it from stdin.")],
    action: Annotated[EngineeringAction, typer.Option(help="Kind of work.")] = (
        EngineeringAction.feature
    ),
    json_output: JsonOption = False,
) -> None:
    """Start an engineering task; prints its task ID and workflow ID at once."""
    out = Output(json_output)
    text = sys.stdin.read() if spec == "-" else spec
    with ApiClient() as client:
        started = start_task(client, project, text, action)

    def render() -> None:
        out.console.print(f"task      [bold]{started['task_id']}[/bold]")
        out.console.print(f"workflow  {started['workflow_id']}")
        out.console.print(f"Web UI    {started['workflow_url']}")
        out.console.print(f"Follow it: {cli_name()} task watch {started['task_id']}")

    out.emit(started, render)


@command(app, "status")
def status(
    task_id: Annotated[str, typer.Argument(help="Task ID (or its workflow ID).")],
    json_output: JsonOption = False,
) -> None:
    """The task's state and result."""
    out = Output(json_output)
    with ApiClient() as client:
        task = with_url(client, client.task(task_id))
    out.emit(task, lambda: render_task(out, task))


@command(app, "wait")
def wait(
    task_id: Annotated[str, typer.Argument(help="Task ID (or its workflow ID).")],
    timeout: Annotated[
        float | None, typer.Option(min=0, help="Give up after this many seconds (exit 1).")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Block until the task ends: exit 0 if it COMPLETED, 1 if it FAILED or was CANCELLED."""
    out = Output(json_output)
    with ApiClient() as client:
        task = client.task(task_id)
        try:
            for _ in client.follow(task["id"], timeout):
                pass
        except WaitTimeout:
            raise timed_out(client, task["id"], timeout) from None
        final = with_url(client, client.task(task["id"]))
    out.emit(final, lambda: out.console.print(f"Task {final['id']} {styled(final['status'])}"))
    raise typer.Exit(exit_code_of(final["status"]))
