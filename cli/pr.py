"""``orchestrator pr``: the pull requests engineering tasks opened."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer

from cli.output import JsonOption, Output, command, escape

app = typer.Typer(help="Pull requests: list, show, merge.", no_args_is_help=True)

# The API waits up to a minute for the merge; this waits a little longer for the API.
MERGE_TIMEOUT = 90.0


def diff_summary(stat: dict[str, Any]) -> str:
    files = stat.get("files_changed", 0)
    return (
        f"{files} file{'' if files == 1 else 's'} changed, "
        f"+{stat.get('insertions', 0)} -{stat.get('deletions', 0)}"
    )


def test_summary(outcome: dict[str, Any] | None) -> str:
    if not outcome:
        return "not recorded"
    counts = f"{outcome.get('passed', 0)} passed, {outcome.get('failed', 0)} failed"
    summary = outcome.get("summary")
    return f"{counts} ({summary})" if summary else counts


def render_pull_request(out: Output, pr: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    failed = (pr.get("test_outcome") or {}).get("failed", 0)
    tests_style = "red" if failed else "green"
    rows = [
        (
            "pull request",
            f"{escape(pr['repo_full_name'])} #{pr['number']}  [bold]{escape(pr['title'])}[/bold]",
        ),
        ("id", pr["id"]),
        ("state", pr["state"]),
        ("branch", f"{escape(pr['branch'])} -> {escape(pr['base'])}"),
        ("commit", pr.get("head_sha") or ""),
        ("merge commit", pr.get("merge_commit_sha") or ""),
        ("merged", str(pr.get("merged_at") or "")),
        ("deploy", pr.get("deploy_task_id") or ""),
        ("changes", diff_summary(pr.get("diff_stat") or {})),
        ("tests", f"[{tests_style}]{escape(test_summary(pr.get('test_outcome')))}[/]"),
        ("url", escape(pr["url"])),
        ("task", pr.get("task_id") or ""),
        ("created", str(pr["created_at"])),
    ]
    for label, value in rows:
        if value:
            table.add_row(label, value)
    out.console.print(table)
    files = (pr.get("diff_stat") or {}).get("files") or []
    if files:
        changed = Table("file", "+", "-", box=None, padding=(0, 2))
        for item in files:
            added, deleted = item.get("insertions"), item.get("deletions")
            binary = added is None and deleted is None
            changed.add_row(
                escape(item["path"]),
                "bin" if binary else f"[green]{added}[/]",
                "" if binary else f"[red]{deleted}[/]",
            )
        out.console.print(changed)
    if pr.get("body"):
        out.console.print()
        out.console.print(escape(pr["body"]))
    if pr["url"].startswith("file:") and "#" in pr["url"]:
        repository, _, branch = pr["url"].partition("#")
        out.console.print(f"\n[dim]Fetch it: git fetch {escape(repository)} {escape(branch)}[/]")


@command(app, "list")
def list_pull_requests(
    project: Annotated[str | None, typer.Option(help="Project ID or name.")] = None,
    task: Annotated[str | None, typer.Option(help="Task ID (or its workflow ID).")] = None,
    json_output: JsonOption = False,
) -> None:
    """Pull requests, newest first."""
    from cli.client import ApiClient, task_id_of

    out = Output(json_output)
    with ApiClient() as client:
        project_id = client.project(project)["id"] if project else None
        task_id = task_id_of(task) if task else None
        found = client.get("/pull-requests", project_id=project_id, task_id=task_id)

    def render() -> None:
        from rich.table import Table

        if not found:
            out.console.print("No pull requests yet: engineering tasks open them when done.")
            return
        table = Table()
        table.add_column("id", no_wrap=True, min_width=32)
        table.add_column("repository", no_wrap=True)
        table.add_column("#", justify="right")
        table.add_column("title")
        table.add_column("branch", no_wrap=True)
        table.add_column("changes", no_wrap=True)
        table.add_column("state", no_wrap=True)
        for pr in found:
            table.add_row(
                pr["id"],
                escape(pr["repo_full_name"]),
                str(pr["number"]),
                escape(pr["title"]),
                escape(f"{pr['branch']} -> {pr['base']}"),
                diff_summary(pr.get("diff_stat") or {}),
                pr["state"],
            )
        out.console.print(table)

    out.emit(found, render)


@command(app, "show")
def show(
    pull_request: Annotated[str, typer.Argument(help="Pull request ID.")],
    json_output: JsonOption = False,
) -> None:
    """One pull request: branch, diff stat, test outcome and where to get it."""
    from cli.client import ApiClient

    out = Output(json_output)
    with ApiClient() as client:
        found = client.get(f"/pull-requests/{quote(pull_request.strip(), safe='')}")
    out.emit(found, lambda: render_pull_request(out, found))


@command(app, "merge")
def merge(
    pull_request: Annotated[str, typer.Argument(help="Pull request ID.")],
    json_output: JsonOption = False,
) -> None:
    """Merge a pull request on its forge (a merge commit into its base). A project with
    auto-deploy (`project update P --auto-deploy`) then deploys its default branch."""
    from cli.client import ApiClient

    out = Output(json_output)
    with ApiClient(timeout=MERGE_TIMEOUT) as client:
        merged = client.post(f"/pull-requests/{quote(pull_request.strip(), safe='')}/merge")

    def render() -> None:
        out.console.print(
            f"Merged {escape(merged['repo_full_name'])} #{merged['number']} "
            f"({escape(merged['branch'])} -> {escape(merged['base'])}): "
            f"[bold]{merged.get('merge_commit_sha') or ''}[/bold]"
        )
        if merged.get("deploy_task_id"):
            out.console.print(
                f"Deploying {escape(merged['base'])}: task {merged['deploy_task_id']} "
                f"(`orchestrator deploy status {merged['deploy_task_id']}`)"
            )

    out.emit(merged, render)
