"""``orchestrator demo``: the main job, end to end, on the embedded stack.

It brings the stack up if needed, creates a project, starts an engineering task, follows it to the
end and shows where each run is in the Temporal Web UI. The stack is left running.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

import typer
from rich.markup import escape

from cli.client import ApiClient, WaitTimeout
from cli.engineering import start_task
from cli.output import JsonOption, Output, cli_name
from cli.stack import ensure_up, print_summary, summary
from cli.task import exit_code_of, follow_with_progress, styled, timed_out
from core.contracts.engineering import EngineeringAction
from core.ids import scaffold_workflow_id
from core.settings import Settings

DEMO_SPEC = (
    "A small HTTP service with a GET /hello endpoint that answers "
    '{"message": "hello"}, and a test for it.'
)


def runs_of(project_id: str, task: dict[str, Any], events: list[dict[str, Any]]) -> list[str]:
    """The workflow IDs this task ran: its own, and the scaffold run when that stage ran."""
    stages = {e.get("stage") for e in events} | set((task.get("result") or {}).get("stages", []))
    runs = [task["workflow_id"]]
    if "scaffold" in stages:
        runs.append(scaffold_workflow_id(project_id))
    return runs


def demo(
    spec: Annotated[str, typer.Option(help="What the demo asks Engineering to build.")] = DEMO_SPEC,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the task.")] = 600,
    json_output: JsonOption = False,
) -> None:
    """Run the main job: stack up, a project, an engineering task followed to its end."""
    out = Output(json_output)
    settings = Settings()
    if settings.api_url:  # an API elsewhere: use it as it is
        current, started = {"api_url": settings.effective_api_url}, False
    else:
        current, started = ensure_up(out, settings, timeout=300)
    if started:
        out.say("[green]Started the embedded stack[/green] (it keeps running after the demo).")
        print_summary(out, summary(current))
    else:
        out.say(f"Using the running stack at {current.get('api_url')}.")
    with ApiClient(settings) as client:
        name = f"demo-{secrets.token_hex(2)}"
        project = client.post("/projects", {"name": name, "description": "orchestrator demo"})
        out.say(f"Project [bold]{name}[/bold] ({project['id']})")
        run = start_task(client, project["id"], spec, EngineeringAction.create)
        out.say(f"Task {run['task_id']}  workflow {run['workflow_id']}")
        out.say(f"Web UI {run['workflow_url']}")
        try:
            events = follow_with_progress(client, out, run["task_id"], timeout)
        except WaitTimeout:
            raise timed_out(client, run["task_id"], timeout) from None
        task = client.task(run["task_id"])
    runs = runs_of(project["id"], task, events)
    result = task.get("result") or {}
    report = {
        "project_id": project["id"],
        "project_name": name,
        "task_id": task["id"],
        "workflow_id": task["workflow_id"],
        "status": task["status"],
        "result": task.get("result"),
        "error": task.get("error"),
        "workflow_url": settings.workflow_url(task["workflow_id"]),
        "workflow_urls": {wid: settings.workflow_url(wid) for wid in runs},
    }

    def render() -> None:
        out.console.print(f"\nTask {task['id']} {styled(task['status'])}")
        if task.get("error"):
            out.console.print(f"[red]{escape(task['error'])}[/red]")
        if result.get("repository"):
            out.console.print(f"repository  {escape(result['repository'])}")
        if result.get("stages"):
            out.console.print(f"stages      {', '.join(result['stages'])}")
        for label in ("branch", "commit_sha", "pr_url"):
            if result.get(label):
                out.console.print(f"{label:<11} {escape(str(result[label]))}")
        out.console.print("Runs in the Temporal Web UI:")
        for wid, url in report["workflow_urls"].items():
            out.console.print(f"  {wid}  {url}")

    out.emit(report, render)
    out.say(f"The stack keeps running; `{cli_name()} down` stops it.")
    raise typer.Exit(exit_code_of(task["status"]))
