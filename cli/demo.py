"""``orchestrator demo``: the main job, end to end, on the embedded stack.

It brings the stack up if needed, creates a project from the ``app`` template (FastAPI on
PostgreSQL, a uv lockfile), starts an engineering task with a coding agent and follows it live
to its pull request: the agent installs a package and adds an endpoint that writes to the
database, with pytest tests, which the Tester runs in the Worker against the project's test
PostgreSQL; a failing test goes back to the agent by name. It shows where each run is in the
Temporal Web UI. ``--template service`` builds a feature of the dependency-free ``service``
template instead. Then the pull request's branch is deployed to a target on this machine
(``orchestrator server local``: an sshd of the stack's own, reached by Ansible): with its packages
and, for ``app``, its own PostgreSQL database there, on HTTPS at ``https://<project>.localhost``,
where the demo asks the new endpoint as a person would. The agent: Claude Code when
ANTHROPIC_API_KEY is set, else Codex when OPENAI_API_KEY is, else the deterministic ``scripted``
agent playing cli/demo_notes.py (``app``) or cli/demo_script.py (``service``). The stack is left
running.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.demo_notes import SPEC as NOTES_SPEC
from cli.demo_notes import notes_script
from cli.demo_script import DEMO_SPEC, demo_script
from cli.deploy import start_deploy
from cli.engineering import start_task
from cli.images import builder
from cli.output import JsonOption, Output, cli_name, escape
from cli.pr import test_summary
from cli.server import ensure_local_server
from cli.stack import ensure_up, print_summary, summary
from cli.task import exit_code_of, follow_with_progress, styled, timed_out
from core.enums import DeployAction, EngineeringAction, ProjectTemplate
from core.ids import scaffold_workflow_id

if TYPE_CHECKING:
    from cli.client import ApiClient
    from core.settings import Settings

# The model gateway reads either name (gateway/settings.py).
ANTHROPIC_KEYS = ("ANTHROPIC_API_KEY", "ORCHESTRATOR_ANTHROPIC_API_KEY")
OPENAI_KEYS = ("OPENAI_API_KEY", "ORCHESTRATOR_OPENAI_API_KEY")
SPEC_HELP = (
    "What the demo asks Engineering to build (the scripted agent plays its script whatever this "
    "says). Default: the template's demo feature."
)
TEMPLATE_HELP = (
    "app: notes in PostgreSQL with a package from PyPI, tested against a test PostgreSQL, "
    "deployed with a database of its own; service: GET /greet/<name> in a dependency-free "
    "service. Either is deployed on this machine at https://<project>.localhost."
)


@dataclass(frozen=True)
class DemoFeature:
    """What the demo builds on a template."""

    spec: str
    modules: list[str]
    words: str  # the feature, for people
    asks: list[tuple[str, str, dict[str, Any] | None]]  # what the demo asks the deployed app
    script: Callable[[str], dict[str, Any]]  # the scripted agent's, for the project's name


FEATURES = {
    ProjectTemplate.app: DemoFeature(
        NOTES_SPEC,
        ["backend"],
        "notes stored in PostgreSQL, with slugs from the python-slugify package it installs",
        asks=[
            ("POST", "notes", {"title": "Hello from the demo", "body": "Kept in its database."}),
            ("GET", "notes/hello-from-the-demo", None),
        ],
        script=notes_script,
    ),
    ProjectTemplate.service: DemoFeature(
        DEMO_SPEC,
        ["backend"],
        "GET /greet/<name>",
        asks=[("GET", "greet/demo", None)],
        script=lambda _: demo_script(),
    ),
}


@dataclass(frozen=True)
class DemoAgent:
    name: str
    engineering: dict[str, Any]  # TaskCreate.engineering, without the scripted agent's script
    note: str  # what people are told about it

    def options(self, template: ProjectTemplate, project_name: str) -> dict[str, Any]:
        """TaskCreate.engineering for a project: the scripted agent gets its script."""
        if self.name != "scripted":
            return self.engineering
        return {**self.engineering, "script": FEATURES[template].script(project_name)}


def choose_agent(
    env: Mapping[str, str], template: ProjectTemplate = ProjectTemplate.app
) -> DemoAgent:
    """Claude Code or Codex when their model key is set, else the scripted stand-in."""
    if any(env.get(key) for key in ANTHROPIC_KEYS):
        return DemoAgent(
            "claude",
            {"agent": "claude"},
            "Agent: Claude Code (claude), since ANTHROPIC_API_KEY is set. The key stays with "
            "the model gateway on this host; the Worker never sees it.",
        )
    if any(env.get(key) for key in OPENAI_KEYS):
        return DemoAgent(
            "codex",
            {"agent": "codex"},
            "Agent: Codex (codex), since OPENAI_API_KEY is set. The key stays with the model "
            "gateway on this host; the Worker never sees it.",
        )
    return DemoAgent(
        "scripted",
        {"agent": "scripted"},
        "Agent: scripted. No model API key is set, so a deterministic scripted agent stands in "
        f"for a real coding agent: it really writes a feature ({FEATURES[template].words}) and "
        "its tests, and the Tester really runs them. Set ANTHROPIC_API_KEY or OPENAI_API_KEY to "
        "use Claude Code or Codex instead.",
    )


# The image of the test PostgreSQL an ``app`` project's tests get beside their Worker.
POSTGRESQL_IMAGE = "service-postgresql"


def image_missing(settings: Settings, names: list[str]) -> bool | None:
    """Whether one of these images still has to be built here; None when we cannot tell."""
    if settings.api_url:
        return None  # a stack elsewhere builds its images on its own machine
    try:
        import docker.errors  # here: the CLI imports with its client dependencies only

        with builder(settings) as images:
            for name in names:
                try:
                    images.docker.images.get(images.reference(name))
                except docker.errors.ImageNotFound:
                    return True
            return False
    except Exception:  # no Docker API (or SDK) here, no apt sources, ...: say what may happen
        return None


def image_note(settings: Settings, agent: str, template: ProjectTemplate) -> str | None:
    with_database = template is ProjectTemplate.app
    names = [agent, POSTGRESQL_IMAGE] if with_database else [agent]
    missing = image_missing(settings, names)
    if missing is False:
        return None
    when = "This is" if missing else "If this is"
    database = (
        ", then the test PostgreSQL's image when the tests first run," if with_database else ","
    )
    return (
        f"{when} the first engineering run on this machine: after the scaffold stage the worker "
        f"builds the {agent} Worker image (a Debian base with debootstrap, then the agent)"
        f"{database} which takes a few minutes, once; later runs reuse them."
    )


def runs_of(project_id: str, task: dict[str, Any], events: list[dict[str, Any]]) -> list[str]:
    """The workflow IDs this task ran: its own, and the scaffold run when that stage ran."""
    stages = {e.get("stage") for e in events} | set((task.get("result") or {}).get("stages", []))
    runs = [task["workflow_id"]]
    if "scaffold" in stages:
        runs.append(scaffold_workflow_id(project_id))
    return runs


def pull_request_of(client: ApiClient, task_id: str) -> dict[str, Any] | None:
    found = client.get("/pull-requests", task_id=task_id)
    return found[0] if found else None


def demo(
    template: Annotated[ProjectTemplate, typer.Option(help=TEMPLATE_HELP)] = ProjectTemplate.app,
    spec: Annotated[str | None, typer.Option(help=SPEC_HELP)] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each task.")] = 900,
    deploy: Annotated[
        bool,
        typer.Option(
            "--deploy/--no-deploy",
            help="Deploy the pull request's branch to this machine and ask its new endpoint.",
        ),
    ] = True,
    json_output: JsonOption = False,
) -> None:
    """Run the main job: stack up, a project from a template, an engineering task followed to
    its pull request, then a deploy of that branch to a target on this machine, where its new
    endpoint answers at the app's HTTPS name."""
    import secrets

    from cli.client import ApiClient, WaitTimeout
    from core.settings import Settings

    out = Output(json_output)
    settings = Settings()
    feature = FEATURES[template]
    agent = choose_agent(os.environ, template)
    if settings.api_url:  # an API elsewhere: use it as it is
        current, started = {"api_url": settings.effective_api_url}, False
    else:
        current, started = ensure_up(out, settings, timeout=300)
    if started:
        out.say("[green]Started the embedded stack[/green] (it keeps running after the demo).")
        print_summary(out, summary(current))
    else:
        out.say(f"Using the running stack at {current.get('api_url')}.")
        if agent.name != "scripted":
            out.say(
                "(The running stack's worker holds the model key it was started with: if it was "
                f"started without one, `{cli_name()} down` and run the demo again.)"
            )
    out.say(escape(agent.note))
    with ApiClient(settings) as client:
        name = f"demo-{secrets.token_hex(2)}"
        body = {
            "name": name,
            "description": "orchestrator demo",
            "template": template.value,
            "modules": feature.modules,
        }
        project = client.post("/projects", body)
        out.say(f"Project [bold]{name}[/bold] ({project['id']}), from the {template} template")
        options = agent.options(template, name)
        run = start_task(
            client, project["id"], spec or feature.spec, EngineeringAction.create, options
        )
        scaffold_id = scaffold_workflow_id(project["id"])
        out.say(f"Task {run['task_id']}")
        out.say(f"Web UI  engineering run  {run['workflow_url']}")
        out.say(f"        scaffold run     {settings.workflow_url(scaffold_id)}")
        note = image_note(settings, agent.name, template)
        if note:
            out.say(f"[yellow]{escape(note)}[/yellow]")
        try:
            events = follow_with_progress(client, out, run["task_id"], timeout)
        except WaitTimeout:
            raise timed_out(client, run["task_id"], timeout) from None
        task = client.task(run["task_id"])
        pull = pull_request_of(client, task["id"]) if task["status"] == "COMPLETED" else None
        report = demo_report(settings, project, agent, task, events, pull)
        status = task["status"]
        if deploy and status == "COMPLETED":
            deployed = deploy_branch(client, out, project, report["branch"], feature, timeout)
            report["workflow_urls"].update(deployed.pop("workflow_urls"))
            report.update(deployed)
            status = report["deploy_status"]
            if status == "COMPLETED":
                report["watched"] = watched(client, out, project["name"])
    out.emit(report, lambda: render(out, report))
    out.say(f"The stack keeps running; `{cli_name()} down` stops it.")
    raise typer.Exit(exit_code_of(status))


def deploy_branch(
    client: ApiClient,
    out: Output,
    project: dict[str, Any],
    branch: str | None,
    feature: DemoFeature,
    timeout: float,
) -> dict[str, Any]:
    """Deploy ``branch`` to the local target, follow it, and ask the app's new endpoint at its
    URL."""
    from cli.client import WaitTimeout

    out.say("\n[bold]Deploy[/bold]: the pull request's branch, to a target on this machine")
    server = ensure_local_server(client, out, client.settings)
    run = start_deploy(client, project["id"], DeployAction.create, ref=branch)
    out.say(f"Deploy task {run['task_id']}")
    out.say(f"Web UI  deploy run  {run['workflow_url']}")
    try:
        follow_with_progress(client, out, run["task_id"], timeout)
    except WaitTimeout:
        raise timed_out(client, run["task_id"], timeout) from None
    task = client.task(run["task_id"])
    result = task.get("result") or {}
    url = result.get("deployed_url")
    asks = feature.asks
    server = client.get(f"/servers/{server['id']}")  # with its edge's CA, learned by the deploy
    return {
        "deploy_task_id": task["id"],
        "deploy_workflow_id": task["workflow_id"],
        "deploy_status": task["status"],
        "deploy_error": task.get("error"),
        "deployed_url": url,
        "release": result.get("release"),
        "project": result.get("project"),
        "runtime": result.get("runtime"),
        "database": result.get("database"),
        "health": answer_at(f"{url}health", server) if url else None,
        "answers": [answer_at(f"{url}{path}", server, method, body) for method, path, body in asks]
        if url
        else [],
        "workflow_urls": {task["workflow_id"]: run["workflow_url"]},
    }


def watched(client: ApiClient, out: Output, project_name: str) -> dict[str, Any]:
    """The app as the app-health Schedule sees it: one run now, and the jobs that watch it."""
    from cli.client import CliError

    out.say("\n[bold]Watched[/bold]: the app-health Schedule checks it now, as every minute")
    try:
        ran = client.post("/schedules/app-health/run", {"wait_s": 25})
    except CliError as exc:  # a run going on, or no Schedule: said, not fatal
        return {"app_health": None, "error": str(exc), "schedules": []}
    checked = [
        each
        for each in (ran.get("result") or {}).get("checked", [])
        if each.get("project") == project_name
    ]
    schedules = [
        {"name": each["name"], "interval_s": each["interval_s"], "paused": each["paused"]}
        for each in client.get("/schedules")
    ]
    return {
        "app_health": checked[0] if checked else None,
        "run": ran["workflow_id"],
        "schedules": schedules,
        "open_incidents": len(client.get("/incidents", open="true")),
    }


def answer_at(
    url: str, server: dict[str, Any], method: str = "GET", body: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What the deployed app answers to ``method`` ``url`` (with ``body`` as JSON: status and
    body), as a person would see it: an
    HTTPS name is asked at the server it went to (as curl's --resolve does: *.localhost names
    resolve to loopback in browsers and curl, not in Python) and verified with its edge's CA."""
    import http.client
    import json
    import socket
    import ssl
    from urllib.parse import urlsplit

    from cli.client import TRANSPORT_ERRORS, describe

    parts = urlsplit(url)
    context = ssl.create_default_context(cadata=server.get("edge_ca") or None)

    class AtServer(http.client.HTTPSConnection):
        def connect(self) -> None:
            sock = socket.create_connection((server["host"], self.port), self.timeout)
            self.sock = context.wrap_socket(sock, server_hostname=self.host)

    if parts.scheme == "https":
        connection: http.client.HTTPConnection = AtServer(
            parts.hostname or "", parts.port or 443, timeout=10
        )
    else:
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=10)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        connection.request(method, parts.path or "/", payload, headers)
        response = connection.getresponse()
        status, answer = response.status, response.read()
    except TRANSPORT_ERRORS as exc:
        return {"method": method, "url": url, "error": describe(exc)}
    finally:
        connection.close()
    return {
        "method": method,
        "url": url,
        "status": status,
        "body": answer.decode(errors="replace")[:500],
    }


def demo_report(
    settings: Settings,
    project: dict[str, Any],
    agent: DemoAgent,
    task: dict[str, Any],
    events: list[dict[str, Any]],
    pull: dict[str, Any] | None,
) -> dict[str, Any]:
    result = task.get("result") or {}
    runs = runs_of(project["id"], task, events)
    return {
        "task_id": task["id"],
        "workflow_id": task["workflow_id"],
        "status": task["status"],
        "error": task.get("error"),
        "agent": result.get("agent") or agent.name,
        "pr_url": result.get("pr_url"),
        "pull_request_id": pull["id"] if pull else None,
        "branch": result.get("branch"),
        "commit_sha": result.get("commit_sha"),
        "files_changed": result.get("files_changed") or [],
        "test_outcome": pull.get("test_outcome") if pull else None,
        "rounds": result.get("rounds"),
        "project_id": project["id"],
        "project_name": project["name"],
        "template": project.get("template"),
        "repository": result.get("repository"),
        "result": task.get("result"),
        "workflow_url": settings.workflow_url(task["workflow_id"]),
        "workflow_urls": {wid: settings.workflow_url(wid) for wid in runs},
    }


def render(out: Output, report: dict[str, Any]) -> None:
    say = out.console.print
    say(f"\nTask {report['task_id']} {styled(report['status'])}  (agent {report['agent']})")
    if report["error"]:
        say(f"[red]{escape(report['error'])}[/red]")
    if report["pr_url"]:
        say(f"[bold]Pull request[/bold]  {escape(report['pr_url'])}")
        rows = [
            ("branch", report["branch"]),
            ("commit", report["commit_sha"]),
            ("files", ", ".join(report["files_changed"])),
            ("tests", test_summary(report["test_outcome"]) if report["pull_request_id"] else None),
            ("rounds", report["rounds"]),
        ]
        for label, value in rows:
            if value is not None and value != "":
                say(f"  {label:<8} {escape(str(value))}")
        if report["pull_request_id"]:
            say(f"  See it:  {cli_name()} pr show {report['pull_request_id']}")
    elif report["repository"]:
        say(f"repository  {escape(report['repository'])}")
    if report.get("deploy_task_id"):
        render_deploy(out, report)
    if report.get("watched"):
        render_watched(out, report["watched"])
    say("Runs in the Temporal Web UI:")
    for wid, url in report["workflow_urls"].items():
        say(f"  {wid}  {url}")


def render_deploy(out: Output, report: dict[str, Any]) -> None:
    say = out.console.print
    say(f"Deploy {report['deploy_task_id']} {styled(report['deploy_status'])}")
    if report["deploy_error"]:
        say(f"[red]{escape(report['deploy_error'])}[/red]")
    if report["deployed_url"]:
        say(
            f"[bold]Live at[/bold]  {escape(report['deployed_url'])}  (release {report['release']})"
        )
        if report.get("database"):
            say(f"  database {escape(report['database'])} (its own PostgreSQL on the server)")
        for asked in [report.get("health") or {}, *report.get("answers", [])]:
            answer = asked.get("body") or asked.get("error") or ""
            say(
                f"  {asked.get('method', 'GET')} {escape(asked.get('url', ''))} -> "
                f"{asked.get('status', '')} {escape(answer)}"
            )


def render_watched(out: Output, watched: dict[str, Any]) -> None:
    say = out.console.print
    health = watched.get("app_health")
    if health is None:
        say(f"[yellow]app-health did not check it: {escape(watched.get('error') or '')}[/yellow]")
        return
    state = "[green]up[/green]" if health.get("up") else f"[red]down[/red] {health.get('problem')}"
    say(f"app-health ({watched['run']}): {state}")
    jobs = ", ".join(
        f"{job['name']} every {job['interval_s']:g} s" + (" (paused)" if job["paused"] else "")
        for job in watched["schedules"]
    )
    say(f"  watched by: {escape(jobs)}")
    say(f"  open incidents: {watched['open_incidents']}  ({cli_name()} incident list --open)")
