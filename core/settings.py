"""Settings for every process, read from ``ORCHESTRATOR_*`` variables.

The defaults describe the embedded stack: everything lives under ``ORCHESTRATOR_HOME`` and every
server binds to loopback on a port of its own. Pointing ``TEMPORAL_ADDRESS``, ``REDIS_URL`` or
``DATABASE_URL`` at existing servers makes ``orchestrator up`` use them instead of starting its own.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.secret_files import ensure_secret_file, new_password
from core.task_queues import CAPABILITIES, Capability

# The ACL user of the embedded Redis (its default user is disabled: see stack/services.py).
REDIS_USER = "orchestrator"


# Where Debian-like hosts (and the Worker image) keep the certificate authorities they trust.
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def _host_ca_bundle() -> Path | None:
    return SYSTEM_CA_BUNDLE if SYSTEM_CA_BUNDLE.is_file() else None


def _env(name: str) -> AliasChoices:
    """Accept both ``ORCHESTRATOR_NAME`` and the bare, conventional ``NAME``."""
    return AliasChoices(f"ORCHESTRATOR_{name}", name)


class Settings(BaseSettings):
    # Errors name the setting, never its value: some values are secrets.
    model_config = SettingsConfigDict(
        env_prefix="ORCHESTRATOR_", extra="ignore", hide_input_in_errors=True
    )

    home: Path = Field(default=Path("~/.orchestrator"), description="Where all state lives")
    host: str = "127.0.0.1"

    # Ports of the embedded stack.
    api_port: int = 8710
    temporal_port: int = 7233
    temporal_ui_port: int = 8233
    redis_port: int = 6479
    pypi_cache_port: int = Field(default=8712, description="The PyPI cache (proxpi)")
    npm_cache_port: int = Field(default=8713, description="The npm cache (verdaccio)")

    # Existing servers instead of the embedded ones.
    database_url: str | None = Field(default=None, validation_alias=_env("DATABASE_URL"))
    redis_url: str | None = Field(default=None, validation_alias=_env("REDIS_URL"))
    temporal_address: str | None = Field(default=None, validation_alias=_env("TEMPORAL_ADDRESS"))
    docker_host: str | None = Field(
        default=None,
        validation_alias=_env("DOCKER_HOST"),
        description="A Docker API for Workers; else the stack serves one with podman",
    )
    temporal_namespace: str = "default"
    temporal_task_queue: str = "orchestrator"
    temporal_api_key: SecretStr | None = None
    temporal_tls: bool = False
    temporal_tls_server_name: str | None = None
    temporal_tls_ca_cert: Path | None = None
    temporal_tls_client_cert: Path | None = None
    temporal_tls_client_key: Path | None = None
    temporal_ui_url: str | None = Field(
        default=None, description="Base URL of the Temporal Web UI, for links"
    )

    # The API as its clients see it.
    api_url: str | None = Field(default=None, validation_alias=_env("API_URL"))
    api_key: SecretStr | None = Field(default=None, validation_alias=_env("API_KEY"))

    # Bridges.
    bridge_claim_idle_ms: int = Field(
        default=30_000, description="Claim messages a dead consumer left pending this long"
    )
    bridge_batch: int = 100
    bridge_block_ms: int = 1000

    # Where new project repositories come from.
    template_dir: Path | None = Field(
        default=None, description="A copier template; the bundled service template by default"
    )

    # Where repositories live and pull requests are opened.
    forge: Literal["local", "github"] = Field(
        default="local", description="local: bare repositories under <home>/forge; github: GitHub"
    )
    github_owner: str | None = Field(
        default=None, description="The user or organisation new repositories belong to"
    )
    github_token_ref: str | None = Field(
        default=None,
        description="Where the GitHub token is: env:NAME or file:PATH (never the token itself)",
    )
    github_api_url: str = Field(
        default="https://api.github.com", description="GitHub Enterprise: https://HOST/api/v3"
    )
    github_template: str | None = Field(
        default=None,
        description="owner/name of a template repository new repositories are generated from; "
        "else the copier template is rendered into an empty repository",
    )
    github_private: bool = Field(default=True, description="New repositories are private")

    # Workers: the containers agents run in. Limits apply to each one.
    worker_memory: str = Field(default="1g", description="Memory limit, as Docker takes it")
    worker_cpus: float = Field(default=1.0, gt=0)
    worker_pids: int = Field(default=512, gt=0, description="Most processes in one Worker")
    worker_user: str = Field(default="1000:1000", description="uid:gid Workers run as")
    worker_ca_bundle: Path | None = Field(
        default_factory=_host_ca_bundle,
        description="The certificate authorities a Worker trusts for HTTPS through its egress "
        "proxy (mounted over the image's own bundle): the host's by default, so a TLS-inspecting "
        "proxy the host trusts is trusted there too",
    )
    max_workers: int = Field(default=4, gt=0, description="Most task Workers at a time")
    max_po_workers: int = Field(
        default=4, gt=0, description="Most PO session Workers at a time, apart from task Workers"
    )

    # The Temporal worker process: what its host can do (core/task_queues.py) and how much it
    # runs at once. Waiting tasks hold neither.
    worker_capabilities: Annotated[list[Capability], NoDecode] = Field(
        default_factory=lambda: list(CAPABILITIES),
        description="What this host's Temporal worker takes besides the rest: containers, ansible",
    )
    max_concurrent_activities: int = Field(
        default=16, gt=0, description="Activities at once, per task queue the process polls"
    )
    max_concurrent_workflow_tasks: int = Field(
        default=8, gt=0, description="Workflow tasks (a workflow's step of code) at once"
    )

    # The reaper (workflows/reaper.py), run by the Temporal Schedule `up` creates.
    reaper_interval_minutes: float = Field(default=5.0, gt=0, description="How often it runs")
    workspace_retention_hours: float = Field(
        default=24.0, ge=0, description="Keep a finished task's workspace this long"
    )
    stream_retention_hours: float = Field(
        default=72.0,
        ge=0,
        description="Keep every Redis stream entry this long; older ones go once every "
        "consumer group has acknowledged them",
    )

    # The scheduled checks (core/schedules.py), run by the Temporal Schedules `up` creates.
    server_health_interval_s: float = Field(
        default=60.0, gt=0, description="How often every server is checked over SSH"
    )
    incident_after_failures: int = Field(
        default=3, ge=1, description="Failed checks in a row that open an incident"
    )
    health_check_concurrency: int = Field(
        default=10, ge=1, description="Checks of one tick running at once"
    )
    server_disk_low_percent: float = Field(
        default=10.0, ge=0, le=100, description="A server with less free disk is DEGRADED"
    )
    server_memory_low_percent: float = Field(
        default=5.0, ge=0, le=100, description="A server with less available memory is DEGRADED"
    )
    app_health_interval_s: float = Field(
        default=60.0, gt=0, description="How often every serving app is checked"
    )
    app_health_timeout_s: float = Field(
        default=5.0, gt=0, description="How long one check waits for an app's health answer"
    )
    app_restart_before_incident: bool = Field(
        default=True,
        description="An app found down is started again once before its failures count",
    )
    app_restart_wait_s: float = Field(
        default=30.0, gt=0, description="How long an app started again has to answer"
    )
    certificate_expiry_days: float = Field(
        default=14.0, gt=0, description="A TLS certificate running out sooner opens an incident"
    )
    usage_interval_s: float = Field(
        default=600.0, gt=0, description="How often the projects' daily budgets are checked"
    )
    repo_sync_interval_s: float = Field(
        default=120.0, gt=0, description="How often open pull requests are read from the forge"
    )

    # Engineering tasks: the defaults of what a task does not set (EngineeringOptions).
    default_agent: str | None = Field(
        default=None,
        description="claude, codex, droid or scripted; None: claude with an Anthropic key, "
        "else codex with an OpenAI key",
    )
    task_max_rounds: int = Field(default=3, ge=1, description="Developer/tester rounds")
    task_max_minutes: float = Field(default=60.0, gt=0, description="Wall time of the loop")
    task_max_tokens: int | None = Field(default=None, gt=0, description="Model tokens per task")
    task_max_cost_usd: float | None = Field(default=None, gt=0, description="Model USD per task")

    # The Telegram bot (`python -m bot`); `up` starts it only when a token is set.
    telegram_token: SecretStr | None = None
    telegram_admins: Annotated[list[int], NoDecode] = Field(
        default_factory=list, description="Telegram user IDs allowed without an API user"
    )
    telegram_api_url: str = Field(
        default="https://api.telegram.org",
        description="The Bot API base: Telegram's, a local Bot API server or a stand-in",
    )
    telegram_webhook_url: str | None = Field(
        default=None, description="Receive updates on this public URL instead of long polling"
    )
    telegram_webhook_port: int = Field(
        default=8711, description="The local port the webhook server listens on"
    )

    # Product Owner sessions (one per chat, workflows/po_session.py).
    po_agent: str | None = Field(
        default=None,
        description="claude, codex, droid or scripted; None: as engineering's default agent",
    )
    po_model: str | None = None
    po_script: Path | None = Field(
        default=None, description="The scripted PO agent's script (JSON), for tests and demos"
    )
    po_idle_minutes: float = Field(
        default=30.0, gt=0, description="A chat quiet this long gives its Worker back"
    )
    po_turn_timeout_s: float = Field(default=600.0, gt=0, description="One PO turn at most")
    po_max_turns_per_run: int = Field(
        default=50, gt=0, description="Turns before a session continues as new"
    )
    po_allowed_commands: str = Field(
        default="PRODUCT_OWNER", description="ALLOWED_COMMANDS of the PO agent's CLI"
    )

    # Deploys (workflows/deploy.py): where releases go and how they are checked.
    deploy_ports: str = Field(
        default="20000-29999",
        pattern=r"^\d{1,5}-\d{1,5}$",
        description="The ports deploys take on a server, FIRST-LAST",
    )
    deploy_app_memory_mb: int = Field(
        default=256, gt=0, description="Memory set aside per app when judging a server's room"
    )
    local_target_port: int = Field(
        default=8722,
        description="SSH port of the deploy target on this machine (orchestrator server local)",
    )
    local_edge_https_port: int = Field(
        default=8723,
        description="The local target's edge: HTTPS for its apps' names (<project>.localhost)",
    )
    local_edge_http_port: int = Field(default=8724, description="The local target's edge: HTTP")
    local_edge_admin_port: int = Field(
        default=8725, description="The local target's edge: Caddy's admin API, on loopback"
    )
    local_database_port: int = Field(
        default=8726,
        description="The local target's PostgreSQL for its apps' databases, on loopback",
    )
    deploy_health_timeout_s: float = Field(
        default=60.0, gt=0, description="How long a new release has to answer its health check"
    )

    # The package caches Workers install through (stack/registries.py): their upstreams, and a
    # private index's token, which only the cache's own process holds.
    pypi_index_url: str = Field(
        default="https://pypi.org/simple/", description="The PyPI cache's upstream simple index"
    )
    pypi_index_username: str = Field(
        default="__token__", description="The user name sent with pypi_index_token"
    )
    pypi_index_token: SecretStr | None = Field(
        default=None, description="Password or token of a private upstream index (basic auth)"
    )
    npm_registry_url: str = Field(
        default="https://registry.npmjs.org/", description="The npm cache's upstream registry"
    )
    npm_registry_token: SecretStr | None = Field(
        default=None, description="Bearer token of a private upstream npm registry"
    )
    registry_metadata_ttl_s: int = Field(
        default=1800,
        gt=0,
        description="How long the caches trust a package's version list before asking upstream",
    )

    # Secrets at rest (core/crypto.py): a Fernet key; else the one in <home>/secret.key.
    secret_key: SecretStr | None = Field(
        default=None, description="Fernet key that encrypts stored secrets and SSH keys"
    )

    log_level: str = "INFO"

    @field_validator("worker_capabilities", mode="before")
    @classmethod
    def _split_capabilities(cls, value: Any) -> Any:
        # "containers,ansible" in an environment variable; "" for a host that takes the rest only.
        if isinstance(value, str):
            return list(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
        return value

    @field_validator("worker_ca_bundle", mode="before")
    @classmethod
    def _no_bundle_when_empty(cls, value: Any) -> Any:
        return None if value == "" else value  # ORCHESTRATOR_WORKER_CA_BUNDLE= keeps the image's

    @field_validator("worker_ca_bundle")
    @classmethod
    def _bundle_is_a_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.expanduser().is_file():
            raise ValueError("ORCHESTRATOR_WORKER_CA_BUNDLE names no file")
        return value.expanduser() if value is not None else None

    @field_validator("telegram_admins", mode="before")
    @classmethod
    def _split_admins(cls, value: Any) -> Any:
        # People write "123, 456" in an environment variable, not JSON.
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, int):
            return [value]
        return value

    @property
    def deploy_port_range(self) -> range:
        first, _, last = self.deploy_ports.partition("-")
        return range(int(first), int(last) + 1)

    @model_validator(mode="after")
    def _check_ports(self) -> Self:
        ports = self.deploy_port_range
        if not ports or ports.start < 1 or ports.stop > 65536:
            raise ValueError("ORCHESTRATOR_DEPLOY_PORTS must be FIRST-LAST within 1-65535")
        return self

    @model_validator(mode="after")
    def _check_forge(self) -> Self:
        if self.github_token_ref is not None:
            kind, _, target = self.github_token_ref.partition(":")
            if kind not in ("env", "file") or not target:
                # Said without the value: it may be the token itself, set by mistake.
                raise ValueError(
                    "ORCHESTRATOR_GITHUB_TOKEN_REF must say where the token is (env:NAME or "
                    "file:PATH), not hold the token"
                )
        if self.forge == "github":
            needed = {
                "ORCHESTRATOR_GITHUB_OWNER (the user or organisation of new repositories)": (
                    self.github_owner
                ),
                "ORCHESTRATOR_GITHUB_TOKEN_REF (where the token is: env:NAME or file:PATH)": (
                    self.github_token_ref
                ),
            }
            missing = [name for name, value in needed.items() if not value]
            if missing:
                raise ValueError(f"ORCHESTRATOR_FORGE=github needs {' and '.join(missing)}")
        return self

    @cached_property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def logs_dir(self) -> Path:
        return self.home_dir / "logs"

    @property
    def forge_dir(self) -> Path:
        return self.home_dir / "forge"

    @property
    def api_socket(self) -> Path:
        """The API's Unix socket, next to its TCP port: PO Workers reach the API through it."""
        return self.home_dir / "run" / "api" / "api.sock"

    @property
    def api_key_file(self) -> Path:
        return self.home_dir / "api_key"

    @property
    def secret_key_file(self) -> Path:
        """The key of stored secrets when ORCHESTRATOR_SECRET_KEY is not set (made on first use)."""
        return self.home_dir / "secret.key"

    @property
    def state_file(self) -> Path:
        return self.home_dir / "stack.json"

    @property
    def temporal_db_file(self) -> Path:
        return self.home_dir / "temporal.sqlite"

    @property
    def redis_dir(self) -> Path:
        return self.home_dir / "redis"

    @property
    def registries_dir(self) -> Path:
        """Where the package caches keep what they downloaded: ``pypi/`` and ``npm/``."""
        return self.home_dir / "registries"

    @property
    def pypi_cache_url(self) -> str:
        return f"http://{self.host}:{self.pypi_cache_port}"

    @property
    def npm_cache_url(self) -> str:
        return f"http://{self.host}:{self.npm_cache_port}"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.home_dir / 'orchestrator.db'}"

    @property
    def redis_password_file(self) -> Path:
        """The embedded Redis's password (made on first use, 0600); only its URL carries it."""
        return self.home_dir / "redis_password"

    @property
    def effective_redis_url(self) -> str:
        if self.redis_url:
            return self.redis_url
        password = ensure_secret_file(self.redis_password_file, new_password)
        return f"redis://{REDIS_USER}:{password}@{self.host}:{self.redis_port}/0"

    @property
    def effective_temporal_address(self) -> str:
        return self.temporal_address or f"{self.host}:{self.temporal_port}"

    @property
    def effective_api_url(self) -> str:
        return (self.api_url or f"http://{self.host}:{self.api_port}").rstrip("/")

    @property
    def effective_temporal_ui_url(self) -> str:
        return (self.temporal_ui_url or f"http://{self.host}:{self.temporal_ui_port}").rstrip("/")

    def workflow_url(self, workflow_id: str) -> str:
        """A link that opens the run's timeline in the Temporal Web UI."""
        return (
            f"{self.effective_temporal_ui_url}/namespaces/{self.temporal_namespace}"
            f"/workflows/{workflow_id}"
        )

    def read_api_key(self) -> str | None:
        """The key from the environment, else the bootstrap key ``up`` wrote into the home."""
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        try:
            return self.api_key_file.read_text().strip() or None
        except FileNotFoundError:
            return None


def get_settings() -> Settings:
    return Settings()
