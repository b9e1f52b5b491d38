"""``orchestrator engineering``: hand work to the Engineering department and follow it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.output import USAGE, CliError, JsonOption, Output, cli_name, command
from cli.task import exit_code_of, render_task, styled, timed_out, with_url

# The contract's own choices (core/enums.py: pydantic-free, so the CLI starts without pydantic).
from core.enums import AgentName, EngineeringAction

if TYPE_CHECKING:
    from cli.client import ApiClient

app = typer.Typer(help="Engineering tasks: start, status, wait.", no_args_is_help=True)


def start_task(
    client: ApiClient,
    project: str,
    spec: str,
    action: EngineeringAction,
    engineering: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Create the task; the API names its workflow before any bridge has started it."""
    project_id = client.project(project)["id"]
    body = {"type": "engineering", "project_id": project_id, "spec": spec, "action": action.value}
    if engineering:
        body["engineering"] = engineering
    task = client.post("/tasks", body)
    return {
        "task_id": task["id"],
        "workflow_id": task["workflow_id"],
        "workflow_url": client.settings.workflow_url(task["workflow_id"]),
        "project_id": project_id,
        "status": task["status"],
    }


def read_script(path: Path) -> dict[str, Any]:
    """The scripted agent's script: a JSON object in a file."""
    try:
        script = json.loads(path.read_text())
    except OSError as exc:
        raise CliError(USAGE, f"cannot read the script {path}", str(exc)) from None
    except ValueError as exc:
        raise CliError(USAGE, f"the script {path} is not JSON", str(exc)) from None
    if not isinstance(script, dict):
        raise CliError(USAGE, f"the script {path} must be a JSON object")
    return script


def engineering_options(
    agent: AgentName | None, script: Path | None, **given: Any
) -> dict[str, Any]:
    """TaskCreate.engineering from the options given; the API fills in the rest."""
    options = {key: value for key, value in given.items() if value is not None}
    if script is not None:
        if agent not in (None, "scripted"):
            raise CliError(USAGE, f"--script is for the scripted agent, not {agent}")
        agent = "scripted"
        options["script"] = read_script(script)
    if agent is not None:
        options["agent"] = agent
    return options


@command(app, "start")
def start(
    project: Annotated[str, typer.Option(help="Project ID or name.")],
    spec: Annotated[str, typer.Option(help="What to build or fix; '-' reads it from stdin.")],
    action: Annotated[EngineeringAction, typer.Option(help="Kind of work.")] = (
        EngineeringAction.feature
    ),
    agent: Annotated[
        AgentName | None, typer.Option(help="The coding agent; default: the stack's choice.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="The agent's model.")] = None,
    script: Annotated[
        Path | None,
        typer.Option(help="JSON file: the scripted agent's script (implies --agent scripted)."),
    ] = None,
    instructions: Annotated[
        str | None, typer.Option(help="Project rules added to the agent's own.")
    ] = None,
    max_rounds: Annotated[int | None, typer.Option(help="At most this many developer turns.")] = (
        None
    ),
    max_minutes: Annotated[
        float | None, typer.Option(help="Wall time of the developer/tester loop.")
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Model tokens in + out.")] = None,
    max_cost_usd: Annotated[float | None, typer.Option(help="Model cost in USD.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Start an engineering task; prints its task ID and workflow ID at once."""
    from cli.client import ApiClient

    out = Output(json_output)
    options = engineering_options(
        agent,
        script,
        model=model,
        instructions=instructions,
        max_rounds=max_rounds,
        max_minutes=max_minutes,
        max_tokens=max_tokens,
        max_cost_usd=max_cost_usd,
    )
    text = sys.stdin.read() if spec == "-" else spec
    with ApiClient() as client:
        started = start_task(client, project, text, action, options)

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
    from cli.client import ApiClient

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
    from cli.client import ApiClient, WaitTimeout

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
