"""``orchestrator deploy``: hand work to the DevOps department and follow it.

Every deploy is a task (``deploy-<task id>`` in Temporal): ``start`` puts a release of the project
on a server, ``rollback`` brings the release before back, ``stop`` and ``undeploy`` end it.
One deploy of a project runs at a time; the others wait their turn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.engineering import status as task_status
from cli.engineering import wait as task_wait
from cli.output import JsonOption, Output, cli_name, command, escape
from cli.task import exit_code_of, follow_with_progress, styled, timed_out

# The contract's own choices (core/enums.py: pydantic-free, so the CLI starts without pydantic).
from core.enums import DeployAction

if TYPE_CHECKING:
    from cli.client import ApiClient

app = typer.Typer(
    help="Deploys: start, rollback, stop, undeploy, status, wait, list; custom domains.",
    no_args_is_help=True,
)

ProjectOption = Annotated[str, typer.Option(help="Project ID or name.")]
WaitOption = Annotated[
    bool, typer.Option("--wait", help="Follow the deploy until it ends (exit 1 unless it worked).")
]
TimeoutOption = Annotated[
    float | None, typer.Option(min=0, help="With --wait: give up after this many seconds.")
]


def start_deploy(
    client: ApiClient,
    project: str,
    action: DeployAction,
    ref: str | None = None,
    drop_data: bool = False,
) -> dict[str, Any]:
    """Create the deploy task; the API names its workflow before any bridge has started it."""
    project_id = client.project(project)["id"]
    options: dict[str, Any] = {"action": action.value}
    if ref:
        options["ref"] = ref
    if drop_data:
        options["drop_data"] = True
    task = client.post("/tasks", {"type": "deploy", "project_id": project_id, "deploy": options})
    return {
        "task_id": task["id"],
        "workflow_id": task["workflow_id"],
        "workflow_url": client.settings.workflow_url(task["workflow_id"]),
        "project_id": project_id,
        "action": action.value,
        "status": task["status"],
    }


def _run(
    project: str,
    action: DeployAction,
    ref: str | None,
    wait: bool,
    timeout: float | None,
    json_output: bool,
    drop_data: bool = False,
) -> None:
    from cli.client import ApiClient, WaitTimeout

    out = Output(json_output)
    with ApiClient() as client:
        started = start_deploy(client, project, action, ref, drop_data)
        if not wait:
            out.emit(started, lambda: _render_started(out, started))
            return
        out.print(f"Deploy task {started['task_id']}  workflow {started['workflow_id']}")
        out.print(f"Web UI {started['workflow_url']}")
        try:
            follow_with_progress(client, out, started["task_id"], timeout)
        except WaitTimeout:
            raise timed_out(client, started["task_id"], timeout) from None
        final = client.task(started["task_id"])
    summary = {**started, "status": final["status"], "result": final.get("result")}
    if final.get("error"):
        summary["error"] = final["error"]
    out.emit(summary, lambda: _render_final(out, final))
    raise typer.Exit(exit_code_of(final["status"]))


def _render_started(out: Output, started: dict[str, Any]) -> None:
    out.console.print(f"task      [bold]{started['task_id']}[/bold] ({started['action']})")
    out.console.print(f"workflow  {started['workflow_id']}")
    out.console.print(f"Web UI    {started['workflow_url']}")
    out.console.print(f"Follow it: {cli_name()} task watch {started['task_id']}")


def _render_final(out: Output, task: dict[str, Any]) -> None:
    result = task.get("result") or {}
    out.console.print(f"Deploy {task['id']} {styled(task['status'])}")
    if result.get("deployed_url"):
        out.console.print(f"URL      [bold]{result['deployed_url']}[/bold]")
    elif result.get("bot"):
        out.console.print(f"bot      [bold]@{escape(result['bot'])}[/bold] (serves no port)")
    if result.get("release"):
        out.console.print(f"release  {result.get('release')} on {result.get('server')}")
    if result.get("database"):
        out.console.print(f"database {escape(result['database'])} (PostgreSQL on the server)")
    if task.get("error"):
        out.console.print(f"[red]{escape(task['error'])}[/red]")


@command(app, "start")
def start(
    project: ProjectOption,
    ref: Annotated[
        str | None, typer.Option(help="Branch, tag or commit to deploy (default: main).")
    ] = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = None,
    json_output: JsonOption = False,
) -> None:
    """Deploy a new release of the project; prints the task and workflow IDs at once."""
    _run(project, DeployAction.create, ref, wait, timeout, json_output)


@command(app, "rollback")
def rollback(
    project: Annotated[str, typer.Argument(help="Project ID or name.")],
    wait: WaitOption = False,
    timeout: TimeoutOption = None,
    json_output: JsonOption = False,
) -> None:
    """Serve the release before the serving one again (same server, same port)."""
    _run(project, DeployAction.rollback, None, wait, timeout, json_output)


@command(app, "stop")
def stop(
    project: Annotated[str, typer.Argument(help="Project ID or name.")],
    wait: WaitOption = False,
    timeout: TimeoutOption = None,
    json_output: JsonOption = False,
) -> None:
    """Stop serving the project; its port and releases stay (`deploy start` serves again)."""
    _run(project, DeployAction.stop, None, wait, timeout, json_output)


@command(app, "undeploy")
def undeploy(
    project: Annotated[str, typer.Argument(help="Project ID or name.")],
    drop_data: Annotated[
        bool,
        typer.Option(
            "--drop-data",
            help="Drop its database too (without it the data stays for its next deploy).",
        ),
    ] = False,
    wait: WaitOption = False,
    timeout: TimeoutOption = None,
    json_output: JsonOption = False,
) -> None:
    """Stop the project and remove its releases from its servers; its port is freed. Its
    database stays unless --drop-data is given."""
    _run(project, DeployAction.undeploy, None, wait, timeout, json_output, drop_data)


@command(app, "list")
def list_deployments(
    project: Annotated[str | None, typer.Option(help="Only this project's releases.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="At most this many.")] = 20,
    json_output: JsonOption = False,
) -> None:
    """Releases, newest first: where each runs and which one serves."""
    from cli.client import ApiClient

    out = Output(json_output)
    params: dict[str, Any] = {"limit": limit}
    if project:
        params["project"] = project
    with ApiClient() as client:
        found = client.get("/deployments", **params)

    def render() -> None:
        from rich.table import Table

        # Nothing is cut at any width (people copy URLs and IDs): long values wrap instead.
        table = Table()
        table.add_column("release", overflow="fold")
        table.add_column("status", no_wrap=True)
        table.add_column("server", overflow="fold")
        table.add_column("port", no_wrap=True)
        table.add_column("url", overflow="fold")
        table.add_column("task", overflow="fold")
        for row in found:
            table.add_row(
                row["release"],
                styled(row["status"]) if row["status"] != "RUNNING" else "[green]RUNNING[/]",
                (row.get("details") or {}).get("server", ""),
                str(row["port"]),
                row.get("url") or "",
                row.get("task_id") or "",
            )
        out.console.print(table)

    out.emit(found, render)


command(app, "status")(task_status)
command(app, "wait")(task_wait)


# --- custom domains: `deploy domain add|remove|list` --------------------------------------------

domain_app = typer.Typer(
    help="A project's custom domains, served over HTTPS by its server's edge from its next deploy.",
    no_args_is_help=True,
)
app.add_typer(domain_app, name="domain")

DomainArgument = Annotated[str, typer.Argument(help="A DNS name, e.g. shop.example.com.")]
ProjectArgument = Annotated[str, typer.Argument(help="Project ID or name.")]


def _domains_path(client: ApiClient, project: str) -> tuple[dict[str, Any], str]:
    from urllib.parse import quote

    found = client.project(project)
    return found, f"/projects/{quote(found['id'], safe='')}/domains"


@command(domain_app, "add")
def add_domain(
    project: ProjectArgument, name: DomainArgument, json_output: JsonOption = False
) -> None:
    """Serve the project's app at NAME too (point NAME's DNS at its server first)."""
    from cli.client import ApiClient

    out = Output(json_output)
    with ApiClient() as client:
        found, path = _domains_path(client, project)
        domain = client.post(path, {"name": name})
    out.emit(
        domain,
        lambda: out.console.print(
            f"Added [bold]{escape(domain['name'])}[/bold] to {escape(found['name'])}: served from "
            f"its next deploy (`{cli_name()} deploy start {escape(found['name'])}`)"
        ),
    )


@command(domain_app, "remove")
def remove_domain(
    project: ProjectArgument, name: DomainArgument, json_output: JsonOption = False
) -> None:
    """Stop serving the project's app at NAME (from its next deploy)."""
    from urllib.parse import quote

    from cli.client import ApiClient

    out = Output(json_output)
    with ApiClient() as client:
        found, path = _domains_path(client, project)
        client.request("DELETE", f"{path}/{quote(name, safe='')}")
    result = {"project_id": found["id"], "project": found["name"], "name": name, "removed": True}
    out.emit(
        result,
        lambda: out.console.print(
            f"Removed [bold]{escape(name)}[/bold] from {escape(found['name'])}: no longer served "
            "from its next deploy"
        ),
    )


@command(domain_app, "list")
def list_domains(project: ProjectArgument, json_output: JsonOption = False) -> None:
    """The project's custom domains."""
    from cli.client import ApiClient

    out = Output(json_output)
    with ApiClient() as client:
        _, path = _domains_path(client, project)
        domains = client.get(path)

    def render() -> None:
        if not domains:
            out.console.print(f"No custom domains: `{cli_name()} deploy domain add P NAME`.")
        for domain in domains:
            out.console.print(escape(domain["name"]))

    out.emit(domains, render)
