"""``orchestrator usage``: model calls, tokens and cost, Worker minutes and deploys per project and
UTC day (``GET /usage``), then the totals."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli.output import JsonOption, Output, escape

# The columns after project and day, with how each shows a row's figures.
COLUMNS = ("calls", "tokens in", "tokens out", "cache read/write", "cost", "Worker min", "deploys")


def usage(
    project: Annotated[
        str | None, typer.Option("--project", "-p", help="Only this project (ID or name).")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="The first UTC day counted, YYYY-MM-DD (default: the last 7 days)."),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Model tokens and cost, Worker minutes and deploys per project and UTC day, then totals
    (yours: your projects'; an admin's: all)."""
    from cli.client import ApiClient

    out = Output(json_output)
    with ApiClient() as client:
        found = client.get("/usage", project=project, since=since)
    out.emit(found, lambda: render(out, found))


def render(out: Output, found: dict[str, Any]) -> None:
    from rich.table import Table

    period = f"{found['since']} to {found['until']} (UTC)"
    if not found["projects"]:
        out.console.print(f"Nothing used from {period}.")
        return
    table = Table(title=f"Usage from {period}")
    table.add_column("project")
    table.add_column("day", no_wrap=True)
    for name in COLUMNS:
        table.add_column(name, justify="right", no_wrap=True)
    for used in found["projects"]:
        budget = used.get("daily_budget_usd")
        name = escape(used["project"])
        if budget is not None:
            name += f"\n[dim]budget ${budget:.2f}/day[/dim]"
        for day in used["days"]:
            table.add_row(name, day["day"], *figures(day, over=day.get("over_budget", False)))
            name = ""
        table.add_row("", "[bold]total[/bold]", *figures(used), end_section=True)
    table.add_row("[bold]all projects[/bold]", "", *figures(found["total"]), style="bold")
    out.console.print(table)


def figures(row: dict[str, Any], *, over: bool = False) -> list[str]:
    calls = f"{row['calls']:,}"
    if row["refused_calls"]:
        calls += f" [yellow](+{row['refused_calls']:,} refused)[/yellow]"
    cost = f"${row['cost_usd']:,.4f}"
    if row["unpriced_calls"]:
        cost += f" [dim](+{row['unpriced_calls']} unpriced)[/dim]"
    deploys = str(row["deploys"])
    if row["deploys"]:
        deploys += f" ({row['deploys_succeeded']} ok, {row['deploys_failed']} failed)"
    return [
        calls,
        f"{row['tokens_in']:,}",
        f"{row['tokens_out']:,}",
        f"{row['cache_read_tokens']:,} / {row['cache_write_tokens']:,}",
        f"[red]{cost} over budget[/red]" if over else cost,
        f"{row['worker_minutes']:,.1f}",
        deploys,
    ]
