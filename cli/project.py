"""``orchestrator project``: create, list and show projects."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli.output import USAGE, CliError, JsonOption, Output, command, escape
from core.enums import ProjectTemplate

app = typer.Typer(help="Projects: create, list, show, update.", no_args_is_help=True)


def parse_modules(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [module.strip() for module in value.split(",") if module.strip()]


def render_project(out: Output, project: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for label, key in (
        ("project", "name"),
        ("id", "id"),
        ("status", "status"),
        ("modules", "modules"),
        ("template", "template"),
        ("repository", "repository"),
        ("description", "description"),
        ("created", "created_at"),
    ):
        value = project.get(key)
        if isinstance(value, list):
            value = ", ".join(value)
        if value:
            table.add_row(label, escape(str(value)))
    deploys = "on: a merge into main deploys it" if project.get("auto_deploy") else "off"
    table.add_row("auto-deploy", deploys)
    budget = project.get("daily_budget_usd")
    if budget is not None:
        table.add_row("daily budget", f"${budget:,.2f} of model calls a UTC day")
    out.console.print(table)


@command(app, "create")
def create(
    name: Annotated[str, typer.Option(help="Unique name: letters, digits, '.', '_', '-'.")],
    modules: Annotated[
        str | None, typer.Option(help="Comma-separated modules, e.g. backend,tg_bot.")
    ] = None,
    description: Annotated[str, typer.Option(help="What the project is for.")] = "",
    template: Annotated[
        ProjectTemplate | None,
        typer.Option(
            help="What its repository starts from: app (FastAPI on PostgreSQL, an aiogram bot, "
            "uv lockfile, compose) or service (a dependency-free HTTP service). Default: the "
            "stack's."
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Create a project."""
    from cli.client import ApiClient

    out = Output(json_output)
    body: dict[str, Any] = {"name": name, "description": description}
    if template is not None:
        body["template"] = template.value
    if (parsed := parse_modules(modules)) is not None:
        body["modules"] = parsed
    with ApiClient() as client:
        project = client.post("/projects", body)
    out.emit(
        project,
        lambda: out.console.print(
            f"Created project [bold]{escape(project['name'])}[/bold] ({project['id']})"
        ),
    )


@command(app, "list")
def list_projects(json_output: JsonOption = False) -> None:
    """All projects."""
    from cli.client import ApiClient

    out = Output(json_output)
    with ApiClient() as client:
        projects = client.get("/projects")

    def render() -> None:
        from rich.table import Table

        if not projects:
            out.console.print("No projects yet: `orchestrator project create --name NAME`.")
            return
        # IDs are never cut: people copy them into the next command.
        table = Table()
        table.add_column("name", no_wrap=True, min_width=12)
        table.add_column("id", no_wrap=True, min_width=32)
        table.add_column("status", no_wrap=True)
        table.add_column("modules", min_width=7)
        table.add_column("repository", overflow="ellipsis", no_wrap=True)
        for project in projects:
            table.add_row(
                escape(project["name"]),
                project["id"],
                project["status"],
                ", ".join(project.get("modules") or []),
                escape(project.get("repo_full_name") or ""),
            )
        out.console.print(table)

    out.emit(projects, render)


@command(app, "show")
def show(
    project: Annotated[str, typer.Argument(help="Project ID or name.")],
    json_output: JsonOption = False,
) -> None:
    """One project."""
    from cli.client import ApiClient

    out = Output(json_output)
    with ApiClient() as client:
        found = client.project(project)
    out.emit(found, lambda: render_project(out, found))


@command(app, "update")
def update(
    project: Annotated[str, typer.Argument(help="Project ID or name.")],
    auto_deploy: Annotated[
        bool | None,
        typer.Option(
            "--auto-deploy/--no-auto-deploy",
            help="Deploy the default branch each time a pull request merges into it.",
        ),
    ] = None,
    daily_budget: Annotated[
        float | None,
        typer.Option(
            "--daily-budget",
            min=0,
            help="USD a UTC day of its model calls may cost before its chat is told (once "
            "that day; nothing is stopped).",
        ),
    ] = None,
    no_daily_budget: Annotated[
        bool, typer.Option("--no-daily-budget", help="No daily budget any more.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Change a project's settings."""
    from cli.client import ApiClient

    if daily_budget is not None and no_daily_budget:
        raise CliError(USAGE, "--daily-budget and --no-daily-budget contradict each other")
    changes: dict[str, Any] = {} if auto_deploy is None else {"auto_deploy": auto_deploy}
    if daily_budget is not None or no_daily_budget:
        changes["daily_budget_usd"] = daily_budget
    if not changes:
        raise CliError(
            USAGE,
            "nothing to change: give --auto-deploy or --no-auto-deploy, --daily-budget USD or "
            "--no-daily-budget",
        )
    out = Output(json_output)
    with ApiClient() as client:
        found = client.project(project)
        updated = client.request("PATCH", f"/projects/{found['id']}", changes)
    out.emit(updated, lambda: render_project(out, updated))
