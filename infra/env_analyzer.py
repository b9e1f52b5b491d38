"""EnvAnalyzer: what a repository needs to run, read from the repository itself.

The sources, in order of trust:

1. ``.orchestrator.yml``: our templates' own manifest (command, port variable, default port,
   health path, required and optional environment). Its ``test`` section says how the Tester
   tests the project (:class:`TestSpec`, read by :func:`read_test_spec`); ``backing_services``
   what it needs beside it (PostgreSQL: the Tester starts it beside the Worker,
   infra/backing_services.py); ``env`` its environment contract, each variable typed
   by who supplies its value (:data:`EnvVar`).
2. A compose file (``compose.yaml``, ``docker-compose.yml`` and their spellings): the first service
   publishing a port runs as a container, built from its ``build`` (or its ``image`` as it is);
   its ``environment`` without a default is required, except the variable naming the file's own
   PostgreSQL service (``...@db:5432/...``), which the deploy fills with a database of the app's
   own on the server (``database_env``).
3. ``Dockerfile``: a container built from it; ``EXPOSE``, ``CMD``/``ENTRYPOINT`` and ``ENV``.
4. ``Procfile``: its ``web`` process (else the first one); the port comes in ``$PORT``, as on the
   platforms that made Procfiles common.

A repository none of these describe cannot be deployed, and :class:`AnalysisError` says what was
looked for. Pure functions of the files: no I/O beyond reading them.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from infra.git import git, resolve_commit

MANIFEST = ".orchestrator.yml"
PROCFILE = "Procfile"
COMPOSE_FILES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
DOCKERFILE = "Dockerfile"
# ${VAR}, ${VAR:-default}, ${VAR-default}, $VAR
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?+][^}]*)?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


class AnalysisError(Exception):
    """The repository does not say how to run it; the message says what was looked for."""


# --- the environment contract ------------------------------------------------------------------

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# What a manifest's ``backing_services`` may name: each has an image recipe in
# deploy/images/services/<name>/ and its connection variables in infra/backing_services.py.
# (``services`` is taken: it lists the app's own processes, which a deploy starts.)
BackingService = Literal["postgresql"]
BACKING_SERVICES: tuple[str, ...] = get_args(BackingService)


class _EnvVarBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = ""


class UserSecret(_EnvVarBase):
    """A secret only a person can give (a bot token, a third party's API key)."""

    kind: Literal["user_secret"] = "user_secret"


class GeneratedSecret(_EnvVarBase):
    """A secret the deploy makes for the project once (a signing key)."""

    kind: Literal["generated_secret"] = "generated_secret"
    length: int = Field(default=32, ge=16, le=256, description="Random characters to make")


class Allocation(_EnvVarBase):
    """A value the deploy allocates: a port on the server, a database of the backing service."""

    kind: Literal["allocation"] = "allocation"
    resource: Literal["port", "postgresql"]


class LiteralValue(_EnvVarBase):
    """A plain setting: this value unless the deploy is told another."""

    kind: Literal["literal"] = "literal"
    value: str

    @field_validator("value", mode="before")
    @classmethod
    def _scalar_as_text(cls, value: Any) -> Any:
        # YAML reads `8081` and `true` as a number and a boolean; the environment holds text.
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value) if isinstance(value, int | float) else value


EnvVar = Annotated[
    UserSecret | GeneratedSecret | Allocation | LiteralValue, Field(discriminator="kind")
]


class ContainerBuild(BaseModel):
    """Where a container's image is built from, in the repository."""

    context: str = "."
    dockerfile: str = DOCKERFILE


class AppSpec(BaseModel):
    """How to run one app of a repository."""

    source: Literal["manifest", "procfile", "compose", "dockerfile"]
    runtime: Literal["process", "container"] = Field(
        description="process: a command on the server; container: an image built from the repo"
    )
    service: str = Field(description="The service's name in its source")
    command: str | None = Field(default=None, description="What starts it")
    port: int | None = Field(default=None, description="The port it listens on by default")
    port_env: str | None = Field(default=None, description="The variable that sets its port")
    health_path: str = "/"
    health_any_status: bool = Field(
        default=False,
        description="No health path was declared (a compose service without a healthcheck URL, "
        "a Dockerfile): any HTTP answer below 500 at / says it serves",
    )
    bot_token_env: str | None = Field(
        default=None,
        description="A service serving no port that is a Telegram bot: the variable holding "
        "its token, with which the deploy asks the Bot API's getMe (manifest only)",
    )
    required_env: list[str] = Field(default_factory=list)
    optional_env: list[str] = Field(default_factory=list)
    backing_services: list[BackingService] = Field(
        default_factory=list, description="What the app needs running beside it (manifest only)"
    )
    env_contract: dict[str, EnvVar] = Field(
        default_factory=dict,
        description="Every variable the app reads, by kind (manifest only; empty: not declared)",
    )
    release_command: str | None = Field(
        default=None,
        description="Run once per release before it starts, e.g. its migrations (manifest only)",
    )
    database_env: str | None = Field(
        default=None,
        description="The variable the deploy puts the URL of the app's own PostgreSQL database "
        "in: an allocation of postgresql in its contract, or the variable of a compose service "
        "that names the file's PostgreSQL service",
    )
    build: ContainerBuild | None = Field(
        default=None, description="A container: how its image is built from the repository"
    )
    image: str | None = Field(
        default=None, description="A container with no build: the image it runs (compose only)"
    )

    @property
    def generated_secrets(self) -> dict[str, int]:
        """The secrets the deploy makes once for the project: variable -> length."""
        return {
            name: var.length
            for name, var in self.env_contract.items()
            if isinstance(var, GeneratedSecret)
        }

    @property
    def serves_port(self) -> bool:
        """Whether it listens on a port the deploy gives it (else: a bot, a background worker)."""
        return bool(self.port_env or self.port)


def analyze(repository: Path) -> AppSpec:
    # The order of trust: our manifest, then a compose file, a Dockerfile, a Procfile.
    for reader in (_from_manifest, _from_compose, _from_dockerfile, _from_procfile):
        spec = reader(repository)
        if spec is not None:
            return spec
    looked_for = ", ".join([MANIFEST, *COMPOSE_FILES, DOCKERFILE, PROCFILE])
    raise AnalysisError(f"cannot tell how to run this repository: none of {looked_for} is there")


# --- the manifest ------------------------------------------------------------------------------

DEFAULT_TEST_COMMAND = "make test"


class TestSpec(BaseModel):
    """How the Tester tests a project: the manifest's ``test`` section.

    ``test: make test`` (a command alone, as the template writes it) or
    ``test: {command: ..., junit: reports/junit.xml}``."""

    __test__ = False  # not a pytest class
    model_config = ConfigDict(extra="forbid")

    command: str = Field(
        default=DEFAULT_TEST_COMMAND, description="A shell command, run at the repository's root"
    )
    junit: str | None = Field(
        default=None,
        description="Where the command writes JUnit XML, relative to the repository; "
        "without it the outcome is read from the command's output and exit code",
    )

    @field_validator("command")
    @classmethod
    def _some_command(cls, command: str) -> str:
        if not command.strip():
            raise ValueError("the test command is empty")
        return command.strip()

    @field_validator("junit")
    @classmethod
    def _inside_the_repository(cls, junit: str | None) -> str | None:
        if junit is None:
            return None
        path = posixpath.normpath(junit.strip())
        if not junit.strip() or path.startswith("/") or path == "." or path.split("/")[0] == "..":
            raise ValueError(f"{junit!r} is not a file path inside the repository")
        return path


class Manifest(BaseModel):
    """The parts of ``.orchestrator.yml`` read through a model (the services are read by
    :func:`_from_manifest`); unknown keys are the template's own (``version``, ``name``...)."""

    model_config = ConfigDict(extra="allow")

    test: TestSpec = Field(default_factory=TestSpec)
    backing_services: list[BackingService] = Field(default_factory=list)
    env: dict[str, EnvVar] = Field(
        default_factory=dict, description="The environment contract: each variable by kind"
    )

    @field_validator("backing_services", "env", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return [] if info.field_name == "backing_services" else {}
        return value

    @field_validator("env")
    @classmethod
    def _variable_names(cls, env: dict[str, Any]) -> dict[str, Any]:
        bad = [name for name in env if not _ENV_NAME.match(name)]
        if bad:
            raise ValueError(f"not environment variable names: {', '.join(bad)}")
        return env

    @model_validator(mode="after")
    def _services_name_typed_variables(self) -> Manifest:
        """With a contract, every variable a service names is typed in it."""
        if not self.env:
            return self
        services = (self.model_extra or {}).get("services") or []
        for service in services if isinstance(services, list) else []:
            env = service.get("env") if isinstance(service, dict) else None
            named = [*(env.get("required") or []), *(env.get("optional") or [])] if env else []
            untyped = [str(name) for name in named if name not in self.env]
            if untyped:
                raise ValueError(
                    f"service {service.get('name')!r} names {', '.join(untyped)}, "
                    "which the env contract does not type"
                )
        return self

    @field_validator("test", mode="before")
    @classmethod
    def _command_alone(cls, value: Any) -> Any:
        if value is None:
            return {}
        return {"command": value} if isinstance(value, str) else value

    @field_validator("backing_services", mode="before")
    @classmethod
    def _known_services(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ValueError(f"a list of service names ({', '.join(BACKING_SERVICES)})")
        names = [str(name).strip().lower() for name in value]
        unknown = [name for name in names if name not in BACKING_SERVICES]
        if unknown:
            raise ValueError(
                f"unknown backing service {', '.join(map(repr, unknown))}: "
                f"known are {', '.join(BACKING_SERVICES)}"
            )
        return list(dict.fromkeys(names))


def read_test_spec(manifest: str | None) -> TestSpec:
    """The test section of a manifest's text (None: the repository has no manifest: the
    default). AnalysisError saying what is wrong for a manifest that is present but invalid."""
    return read_manifest(manifest).test


def read_manifest(manifest: str | None) -> Manifest:
    """A manifest's text, validated (None: the repository has no manifest: the defaults);
    AnalysisError saying what is wrong when it is invalid."""
    if manifest is None:
        return Manifest()
    return _validated(_yaml_text(manifest, MANIFEST))


def _validated(data: dict[str, Any]) -> Manifest:
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}".lstrip(": ")
            for error in exc.errors()
        )
        raise AnalysisError(f"{MANIFEST} is invalid: {problems}") from None


def analyze_ref(repository: str, ref: str) -> tuple[str, AppSpec]:
    """The commit ``ref`` names in ``repository`` (a clone URL) and how the app runs there, read
    from a throwaway checkout of that commit. ValueError for a ref the repository lacks."""
    checkout = Path(tempfile.mkdtemp(prefix="analyze-"))
    try:
        git("clone", "--quiet", "--no-checkout", repository, str(checkout))
        commit = resolve_commit(checkout, ref)
        git("checkout", "--quiet", "--detach", commit, cwd=checkout)
        return commit, analyze(checkout)
    finally:
        shutil.rmtree(checkout, ignore_errors=True)


def _from_manifest(repository: Path) -> AppSpec | None:
    data = _yaml(repository / MANIFEST)
    if data is None:
        return None
    manifest = _validated(data)
    services = data.get("services") or []
    if not isinstance(services, list) or not services:
        raise AnalysisError(f"{MANIFEST} lists no services")
    # The one that serves HTTP is what gets a URL; a project of only a bot runs without one.
    chosen = next((s for s in services if s.get("port_env") or s.get("default_port")), services[0])
    if not chosen.get("command"):
        raise AnalysisError(f"{MANIFEST}: service {chosen.get('name')!r} has no command")
    env = chosen.get("env") or {}
    return AppSpec(
        source="manifest",
        runtime="process",
        service=str(chosen.get("name") or "app"),
        command=str(chosen["command"]),
        port=_int(chosen.get("default_port")),
        port_env=chosen.get("port_env"),
        health_path=str(chosen.get("health_path") or "/"),
        bot_token_env=chosen.get("bot_token_env") or None,
        required_env=[str(v) for v in env.get("required") or []],
        optional_env=[str(v) for v in env.get("optional") or []],
        backing_services=manifest.backing_services,
        env_contract=manifest.env,
        release_command=str(chosen.get("release_command") or "") or None,
        database_env=next(
            (
                name
                for name, var in manifest.env.items()
                if isinstance(var, Allocation) and var.resource == "postgresql"
            ),
            None,
        ),
    )


# --- Procfile ----------------------------------------------------------------------------------


def _from_procfile(repository: Path) -> AppSpec | None:
    path = repository / PROCFILE
    if not path.is_file():
        return None
    processes: dict[str, str] = {}
    for line in path.read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() and not name.lstrip().startswith("#") and command.strip():
            processes[name.strip()] = command.strip()
    if not processes:
        raise AnalysisError(f"{PROCFILE} names no process")
    name = "web" if "web" in processes else next(iter(processes))
    command = processes[name]
    needed = [v for v in _variables(command) if v != "PORT"]
    return AppSpec(
        source="procfile",
        runtime="process",
        service=name,
        command=command,
        port_env="PORT" if name == "web" else None,
        required_env=needed,
    )


# --- compose -----------------------------------------------------------------------------------


def _from_compose(repository: Path) -> AppSpec | None:
    for name in COMPOSE_FILES:
        data = _yaml(repository / name)
        if data is None:
            continue
        services = data.get("services") or {}
        if not isinstance(services, dict) or not services:
            raise AnalysisError(f"{name} has no services")
        chosen = next((n for n, s in services.items() if (s or {}).get("ports")), None)
        if chosen is None:
            raise AnalysisError(
                f"{name}: no service publishes a port (give the app's service `ports:`)"
            )
        service = services[chosen] or {}
        required, optional = _compose_env(service.get("environment"))
        database_env = _database_variable(services, service)
        command = service.get("command")
        if isinstance(command, list):
            command = shlex.join(str(part) for part in command)
        build = _compose_build(name, chosen, service)
        health_path = _healthcheck_path(service.get("healthcheck"))
        return AppSpec(
            source="compose",
            runtime="container",
            service=str(chosen),
            command=command,
            port=_container_port(service["ports"][0]),
            health_path=health_path or "/",
            health_any_status=health_path is None,
            # The deploy gives the app a database of its own: its URL is not a person's to set.
            required_env=[v for v in required if v != database_env],
            optional_env=[v for v in optional if v != database_env],
            backing_services=["postgresql"] if database_env else [],
            database_env=database_env,
            build=build,
            image=None if build else str(service.get("image") or "") or None,
        )
    return None


_LOCAL_URL = re.compile(r"https?://(?:localhost|127\.0\.0\.1|0\.0\.0\.0)(?::\d+)?(/[^\s'\"]*)")


def _healthcheck_path(healthcheck: Any) -> str | None:
    """The path a compose healthcheck asks the app on itself (``curl -f
    http://localhost:8000/health``, a python one-liner, ...); None when it asks none."""
    if not isinstance(healthcheck, dict):
        return None
    test = healthcheck.get("test")
    text = " ".join(str(part) for part in test) if isinstance(test, list) else str(test or "")
    found = _LOCAL_URL.search(text)
    return found.group(1) if found else None


def _compose_build(file: str, name: str, service: dict[str, Any]) -> ContainerBuild | None:
    """The service's ``build`` (a context, or a context and a Dockerfile); None: it names an
    image to run as it is. A service with neither cannot run."""
    build = service.get("build")
    if isinstance(build, str):
        return ContainerBuild(context=build)
    if isinstance(build, dict):
        return ContainerBuild(
            context=str(build.get("context") or "."),
            dockerfile=str(build.get("dockerfile") or DOCKERFILE),
        )
    if not service.get("image"):
        raise AnalysisError(f"{file}: service {name!r} has neither `build` nor `image`")
    return None


_POSTGRES_IMAGE = re.compile(r"^(docker\.io/)?(library/)?postgres(:|@|$)")


def _database_variable(services: dict[str, Any], app: dict[str, Any]) -> str | None:
    """The app's variable that names the compose file's own PostgreSQL service (``...@db:5432``
    in its value), which the deploy replaces by a database of the app's own on the server."""
    databases = [
        str(name)
        for name, service in services.items()
        if _POSTGRES_IMAGE.match(str((service or {}).get("image") or ""))
    ]
    if not databases:
        return None
    environment = app.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(str(e).partition("=")[::2] for e in environment)
    for key, value in environment.items():
        if any(f"@{db}:" in str(value) or f"@{db}/" in str(value) for db in databases):
            return str(key)
    return "DATABASE_URL" if "DATABASE_URL" in environment else None


def _compose_env(environment: Any) -> tuple[list[str], list[str]]:
    """Variables a compose service takes: those it must be given (no value, or ``${X}`` with no
    default) and those it may be given."""
    required: list[str] = []
    optional: list[str] = []
    items: list[tuple[str, Any]] = []
    if isinstance(environment, dict):
        items = list(environment.items())
    elif isinstance(environment, list):
        for entry in environment:
            key, sep, value = str(entry).partition("=")
            items.append((key, value if sep else None))
    for key, value in items:
        if value is None or value == "":
            required.append(key)
            continue
        text = str(value)
        for match in _VARIABLE.finditer(text):
            name = match.group(1) or match.group(3)
            has_default = bool(match.group(2)) and not match.group(2).lstrip(":").startswith("?")
            (optional if has_default else required).append(name)
        if not _VARIABLE.search(text):
            optional.append(key)
    return _unique(required), [v for v in _unique(optional) if v not in required]


def _container_port(entry: Any) -> int | None:
    """``"8080:8000"``, ``"127.0.0.1:8080:8000/tcp"``, ``8000`` or the long form: the
    container's side."""
    if isinstance(entry, dict):
        return _int(entry.get("target"))
    text = str(entry).split("/")[0]
    return _int(text.rsplit(":", 1)[-1])


# --- Dockerfile --------------------------------------------------------------------------------


def _from_dockerfile(repository: Path) -> AppSpec | None:
    path = repository / DOCKERFILE
    if not path.is_file():
        return None
    port: int | None = None
    command: str | None = None
    entrypoint: str | None = None
    optional: list[str] = []
    for instruction, argument in _instructions(path.read_text()):
        if instruction == "EXPOSE" and port is None:
            port = _int(argument.split()[0].split("/")[0]) if argument.split() else None
        elif instruction == "CMD":
            command = _exec_form(argument)
        elif instruction == "ENTRYPOINT":
            entrypoint = _exec_form(argument)
        elif instruction == "ENV":
            optional += _env_names(argument)
    if port is None:
        raise AnalysisError(f"{DOCKERFILE} exposes no port (add EXPOSE <port>)")
    start = " ".join(part for part in (entrypoint, command) if part) or None
    return AppSpec(
        source="dockerfile",
        runtime="container",
        service="app",
        command=start,
        port=port,
        optional_env=_unique(optional),
        build=ContainerBuild(),
        health_any_status=True,
    )


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, argument) pairs, with continued lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, argument = line.partition(" ")
        found.append((instruction.upper(), argument.strip()))
    return found


def _exec_form(argument: str) -> str:
    if argument.startswith("["):
        try:
            return shlex.join(str(part) for part in json.loads(argument))
        except (ValueError, TypeError):
            pass
    return argument


def _env_names(argument: str) -> list[str]:
    if "=" not in argument.split()[0]:  # legacy "ENV KEY value"
        return [argument.split()[0]]
    return [pair.split("=", 1)[0] for pair in shlex.split(argument) if "=" in pair]


# --- helpers -----------------------------------------------------------------------------------


def _yaml(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    return _yaml_text(path.read_text(), path.name)


def _yaml_text(text: str, name: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise AnalysisError(f"{name} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise AnalysisError(f"{name} is not a mapping")
    return data


def _variables(text: str) -> list[str]:
    return _unique(m.group(1) or m.group(3) for m in _VARIABLE.finditer(text))


def _unique(values: Any) -> list[str]:
    return list(dict.fromkeys(values))


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
