"""``deploy:queue`` and ``ansible:deploy:queue``: deploy messages and their results."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from core.contracts.base import Envelope, JsonInput, Strict
from core.enums import DeployAction  # pydantic-free there: the CLI imports it cheaply

DEPLOY_QUEUE = "deploy:queue"
ANSIBLE_DEPLOY_QUEUE = "ansible:deploy:queue"
DEPLOY_RESULT_TTL_SECONDS = 3600
# Signal to a deploy workflow waiting for secrets: the project's secrets changed, look again.
DEPLOY_SECRETS_CHANGED = "secrets_changed"
# Signal from an Ansible run to the workflow its message names (``notify_workflow_id``): the run
# ended, with this AnsibleDeployResult. The deploy waits for it in workflow code.
ANSIBLE_DEPLOY_ENDED = "ansible_deploy_ended"
# What ``secrets_ref`` holds for "the project's stored secrets, as its environment".
PROJECT_SECRETS_PREFIX = "project-secrets:"


class EdgeSettings(Strict):
    """A server's edge (the reverse proxy in front of its apps: Caddy)."""

    http_port: int = Field(default=80, ge=1, le=65535, description="Plain HTTP and ACME")
    https_port: int = Field(default=443, ge=1, le=65535)
    admin_port: int = Field(
        default=2019, ge=1, le=65535, description="Caddy's admin API, on the server's loopback"
    )
    bind: str = Field(
        default="", max_length=255, pattern=r"^[0-9A-Fa-f.:]*$",
        description="The address the edge listens on; empty: every address",
    )  # fmt: skip
    tls: Literal["acme", "internal"] = Field(
        default="acme",
        description="acme: certificates from Let's Encrypt for names that resolve to the server; "
        "internal: from the edge's own CA (a private network, or no public name)",
    )

    def playbook_vars(self) -> dict[str, object]:
        return {
            "http_port": self.http_port,
            "https_port": self.https_port,
            "admin_port": self.admin_port,
            "bind": self.bind,
            "tls_internal": self.tls == "internal",
        }


class DatabaseSettings(Strict):
    """A server's PostgreSQL for its apps: a cluster the deploys run under the apps root (its
    data beside them, or under /var/lib/postgresql when the SSH user is root, as PostgreSQL
    does not run as root), listening on the server's loopback. A role and a database per app."""

    port: int = Field(default=5432, ge=1, le=65535, description="Its port on the server's loopback")


class DeployOptions(JsonInput):
    """What one deploy task does. Stored on the task (``Task.details["deploy"]``); the workflow
    reads it in an activity."""

    # Part of a request body (POST /tasks); unknown fields are refused, as by Strict.
    model_config = ConfigDict(extra="forbid")

    action: DeployAction = Field(default=DeployAction.create, strict=False)
    ref: str | None = Field(
        default=None,
        max_length=250,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$",
        description="The branch or commit to deploy (create / redeploy); None: main",
    )
    drop_data: bool = Field(
        default=False,
        description="undeploy only: drop the app's database too (else its data stays for a "
        "later deploy of the project)",
    )

    @model_validator(mode="after")
    def _drop_data_only_when_undeploying(self) -> DeployOptions:
        if self.drop_data and self.action is not DeployAction.undeploy:
            raise ValueError("drop_data goes with the undeploy action only")
        return self


class DeployMessage(Envelope):
    task_id: str
    project_id: str
    user_id: str
    action: DeployAction = DeployAction.create


class DeployResult(Strict):
    deployed_url: str | None = None
    server_ip: str | None = None
    port: int | None = None
    # Beyond the original contract's three: what a person wants to know about the release.
    project: str | None = Field(default=None, description="The project's name")
    runtime: str | None = Field(
        default=None, description="How it runs: process (a command) or container (an image)"
    )
    database: str | None = Field(
        default=None, description="Its own PostgreSQL database on the server, when it has one"
    )
    action: DeployAction = DeployAction.create
    server: str | None = Field(default=None, description="The server's handle")
    release: str | None = None
    previous_release: str | None = None
    commit_sha: str | None = None
    deployment_id: str | None = None
    playbook_s: float | None = Field(default=None, description="Time inside Ansible's playbook")
    bot: str | None = Field(
        default=None, description="An app serving no port: its bot's username, from getMe"
    )


class ContainerSpec(Strict):
    """An app that runs as a container: its image built on the server from the release's files
    (a Dockerfile at ``dockerfile`` in ``context``), or ``image`` pulled as it is."""

    context: str = Field(default=".", max_length=500)
    dockerfile: str = Field(default="Dockerfile", max_length=500)
    image: str | None = Field(default=None, max_length=500, description="Run as it is: no build")
    port: int | None = Field(
        default=None, ge=1, le=65535, description="The port it listens on inside the container"
    )


def project_secrets_ref(project_id: str) -> str:
    return f"{PROJECT_SECRETS_PREFIX}{project_id}"


class AnsibleDeployMessage(Envelope):
    project_id: str
    project_name: str
    repo_full_name: str
    server_ip: str
    port: int
    modules: list[str] = []
    github_token_ref: str | None = Field(
        default=None, description="Where the forge's token is (env:/file:), never the token"
    )
    secrets_ref: str | None = Field(
        default=None,
        description="project-secrets:<project_id>: the project's stored secrets become the "
        "release's environment (decrypted only by the activity that writes them)",
    )
    # Optional fields beyond the original contract's (older producers still validate):
    server_handle: str | None = Field(default=None, description="Which server; else by IP")
    repository: str | None = Field(default=None, description="Clone URL; else the forge's")
    commit_sha: str | None = Field(default=None, description="What to deploy; else main's head")
    release: str | None = Field(default=None, description="The release id; else request_id")
    start_command: str | None = Field(default=None, description="Else the EnvAnalyzer's")
    port_env: str | None = None
    health_path: str | None = None
    serves_port: bool = Field(
        default=True,
        description="False for an app that serves no port (a bot, a background worker): it is "
        "healthy when it stays up, and does not get the port",
    )
    bot_token_env: str | None = Field(
        default=None,
        description="An app serving no port: the variable holding its Telegram bot token, "
        "checked with getMe on the server",
    )
    release_command: str | None = Field(
        default=None, description="Run once per release before it starts (its migrations)"
    )
    database_env: str | None = Field(
        default=None,
        description="The variable the app's own PostgreSQL database's URL goes in: the deploy "
        "makes the URL once (a project secret) and the server creates the role and database",
    )
    generated_secrets: dict[str, int] = Field(
        default_factory=dict,
        description="Secrets the deploy makes once for the project, by variable: their length",
    )
    container: ContainerSpec | None = Field(
        default=None, description="None: a process on the server; else a container built there"
    )
    health_any_status: bool = Field(
        default=False,
        description="No health path was declared: any HTTP answer below 500 says it serves",
    )
    env: dict[str, str] = Field(default_factory=dict, description="Non-secret variables")
    notify_workflow_id: str | None = Field(
        default=None,
        description=f"A workflow to signal {ANSIBLE_DEPLOY_ENDED!r} with the result when the "
        "run ends (the deploy that asked for it); the result is on deploy:result:{request_id} "
        "either way",
    )


class AnsibleDeployResult(Strict):
    request_id: str
    success: bool
    deployed_url: str | None = None
    error: str | None = None
    # Beyond the original contract's fields:
    release: str | None = None
    previous_release: str | None = None
    server_ip: str | None = None
    port: int | None = None
    commit_sha: str | None = None
    failed_task: str | None = None
    port_busy: bool = Field(
        default=False, description="The port was taken on the server by something else"
    )
    playbook_s: float | None = None
    release_steps: dict[str, float] = Field(
        default_factory=dict,
        description="The server's seconds per release step (unpack, dependencies or image, "
        "database, release_command, start_and_health, switch_and_drain, stop_previous)",
    )
    database: str | None = Field(
        default=None, description="The app's own database on the server, when it has one"
    )
    bot: str | None = Field(default=None, description="The bot's username, when getMe was asked")
    edge_ca: str | None = Field(
        default=None,
        description="The root certificate (PEM, public) of the server's edge CA, when its names "
        "use the edge's internal CA: what a client verifies the app's HTTPS name with",
    )


def deploy_result_key(request_id: str) -> str:
    return f"deploy:result:{request_id}"
