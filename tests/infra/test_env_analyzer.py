"""EnvAnalyzer: how a repository runs, from its manifest, Procfile, compose file or Dockerfile."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from infra.env_analyzer import (
    Allocation,
    AnalysisError,
    AppSpec,
    ContainerBuild,
    GeneratedSecret,
    LiteralValue,
    TestSpec,
    UserSecret,
    analyze,
    read_manifest,
    read_test_spec,
)
from tests.activities.test_app_template import render as render_app
from tests.activities.test_template import render


def repo(tmp_path: Path, files: dict[str, str]) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


async def test_a_scaffolded_backend_runs_as_its_manifest_says(tmp_path: Path) -> None:
    spec = analyze(await render(tmp_path, ["backend"]))
    assert spec.source == "manifest" and spec.runtime == "process"
    assert spec.command == "python3 -m app"
    assert spec.port_env == "PORT" and spec.port is not None
    assert spec.health_path == "/health"
    assert spec.required_env == [] and "LOG_LEVEL" in spec.optional_env


async def test_a_scaffolded_bot_needs_its_token_and_has_no_port(tmp_path: Path) -> None:
    spec = analyze(await render(tmp_path, ["tg_bot"]))
    assert spec.command == "python3 -m app.bot"
    assert spec.port is None and spec.port_env is None and not spec.serves_port
    assert spec.required_env == ["TELEGRAM_BOT_TOKEN"]


async def test_the_app_templates_bot_names_its_token_for_getme(tmp_path: Path) -> None:
    """The deploy asks the Bot API's getMe with the variable the manifest names."""
    spec = analyze(await render_app(tmp_path, ["tg_bot"]))
    assert (spec.service, spec.command) == ("tg_bot", "python -m app.bot")
    assert not spec.serves_port and spec.bot_token_env == "TELEGRAM_BOT_TOKEN"
    backend = analyze(await render_app(tmp_path / "backend", ["backend", "tg_bot"]))
    assert backend.serves_port and backend.bot_token_env is None


def test_a_procfile_web_process_takes_its_port_from_port(tmp_path: Path) -> None:
    procfile = (
        "# the app\nworker: python worker.py\n"
        "web: gunicorn app:wsgi --bind 0.0.0.0:$PORT --key ${SIGNING_KEY}\n"
    )
    spec = analyze(repo(tmp_path, {"Procfile": procfile}))
    assert spec == AppSpec(
        source="procfile",
        runtime="process",
        service="web",
        command="gunicorn app:wsgi --bind 0.0.0.0:$PORT --key ${SIGNING_KEY}",
        port_env="PORT",
        required_env=["SIGNING_KEY"],
    )


def test_a_compose_service_with_a_port_and_its_environment(tmp_path: Path) -> None:
    compose = """
services:
  db:
    image: postgres:16
  api:
    build: .
    command: ["uvicorn", "app:api", "--port", "8000"]
    ports: ["127.0.0.1:8080:8000/tcp"]
    environment:
      DATABASE_URL: postgresql://app:${DB_PASSWORD:-app}@db:5432/app
      LOG_LEVEL: ${LOG_LEVEL:-info}
      STRIPE_KEY:
      MODE: production
"""
    spec = analyze(repo(tmp_path, {"docker-compose.yml": compose}))
    assert spec.source == "compose" and spec.runtime == "container"
    assert spec.service == "api" and spec.port == 8000
    assert spec.command == "uvicorn app:api --port 8000"
    assert spec.build == ContainerBuild(context=".") and spec.image is None
    # The URL naming the file's PostgreSQL is the deploy's to fill with the app's own database.
    assert (spec.database_env, spec.backing_services) == ("DATABASE_URL", ["postgresql"])
    assert spec.required_env == ["STRIPE_KEY"]
    assert spec.optional_env == ["DB_PASSWORD", "LOG_LEVEL", "MODE"]


def test_a_compose_service_runs_its_image_or_says_it_has_none(tmp_path: Path) -> None:
    compose = "services:\n  web:\n    image: nginx:1.27\n    ports: ['8080:80']\n"
    spec = analyze(repo(tmp_path / "image", {"compose.yaml": compose}))
    assert (spec.image, spec.build, spec.port, spec.database_env) == ("nginx:1.27", None, 80, None)
    built = "services:\n  web:\n    build: {context: ./api, dockerfile: Containerfile}\n"
    spec = analyze(repo(tmp_path / "built", {"compose.yaml": built + "    ports: [80]\n"}))
    assert spec.build == ContainerBuild(context="./api", dockerfile="Containerfile")
    with pytest.raises(AnalysisError, match="'web' has neither `build` nor `image`"):
        analyze(repo(tmp_path / "none", {"compose.yaml": "services:\n  web:\n    ports: [80]\n"}))


@pytest.mark.parametrize(
    ("healthcheck", "path", "any_status"),
    [
        ('{test: ["CMD", "curl", "-f", "http://localhost:8000/health"]}', "/health", False),
        ("{test: curl -fsS http://127.0.0.1/up || exit 1}", "/up", False),
        ('{test: ["CMD", "pg_isready"]}', "/", True),
        ("", "/", True),
    ],
    ids=["curl", "shell-form", "no-url", "none"],
)
def test_a_compose_healthcheck_names_the_health_path(
    tmp_path: Path, healthcheck: str, path: str, any_status: bool
) -> None:
    """A URL the service asks itself is its health path; without one, any HTTP answer below
    500 says it serves."""
    check = f"    healthcheck: {healthcheck}\n" if healthcheck else ""
    compose = "services:\n  web:\n    build: .\n    ports: [8000]\n" + check
    spec = analyze(repo(tmp_path, {"compose.yaml": compose}))
    assert (spec.health_path, spec.health_any_status) == (path, any_status)


def test_a_compose_list_environment(tmp_path: Path) -> None:
    compose = (
        "services:\n  web:\n    build: .\n    ports: [3000]\n"
        "    environment: [TOKEN, 'MODE=prod']\n"
    )
    spec = analyze(repo(tmp_path, {"compose.yaml": compose}))
    assert (spec.port, spec.required_env, spec.optional_env) == (3000, ["TOKEN"], ["MODE"])


def test_a_dockerfile_exposes_its_port_and_command(tmp_path: Path) -> None:
    dockerfile = (
        "FROM python:3.12-slim\n"
        "ENV APP_HOME=/app \\\n    WORKERS=2\n"
        "EXPOSE 5000/tcp\n"
        'ENTRYPOINT ["python", "-m"]\n'
        'CMD ["flask", "run"]\n'
    )
    spec = analyze(repo(tmp_path, {"Dockerfile": dockerfile}))
    assert spec.source == "dockerfile" and spec.runtime == "container"
    assert spec.port == 5000
    assert spec.command == "python -m flask run"
    assert spec.optional_env == ["APP_HOME", "WORKERS"]
    assert spec.build == ContainerBuild()


def test_a_compose_file_wins_over_a_procfile(tmp_path: Path) -> None:
    compose = "services:\n  web:\n    build: .\n    ports: [8000]\n"
    spec = analyze(repo(tmp_path, {"compose.yaml": compose, "Procfile": "web: ./serve\n"}))
    assert (spec.source, spec.runtime) == ("compose", "container")


def test_the_manifest_wins_over_the_others(tmp_path: Path) -> None:
    manifest = "services:\n  - name: api\n    command: ./serve\n    port_env: PORT\n"
    spec = analyze(repo(tmp_path, {".orchestrator.yml": manifest, "Procfile": "web: x"}))
    assert (spec.source, spec.command) == ("manifest", "./serve")


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "none of .orchestrator.yml, compose.yaml"),
        ({"compose.yaml": "services:\n  db:\n    image: x\n"}, "no service publishes a port"),
        ({"Dockerfile": "FROM x\nCMD run\n"}, "exposes no port"),
        ({".orchestrator.yml": "services: [\n"}, "not valid YAML"),
        ({"Procfile": "# nothing\n"}, "names no process"),
    ],
)
def test_what_cannot_be_told_is_said(tmp_path: Path, files: dict[str, str], message: str) -> None:
    with pytest.raises(AnalysisError, match=message):
        analyze(repo(tmp_path, files))


# --- the manifest's test section -----------------------------------------------------------------


async def test_the_scaffolded_manifest_tests_with_make_test(tmp_path: Path) -> None:
    manifest = (await render(tmp_path, ["backend"])) / ".orchestrator.yml"
    assert read_test_spec(manifest.read_text()) == TestSpec(command="make test", junit=None)


@pytest.mark.parametrize(
    ("manifest", "command", "junit"),
    [
        (None, "make test", None),  # no manifest at all
        ("name: x\nservices: []\n", "make test", None),  # no test section
        ("test:\n", "make test", None),
        ("test: ./run-tests\n", "./run-tests", None),
        (
            "test:\n  command: pytest --junitxml=reports/junit.xml\n  junit: reports/junit.xml\n",
            "pytest --junitxml=reports/junit.xml",
            "reports/junit.xml",
        ),
        ("test:\n  junit: ./out//junit.xml\n", "make test", "out/junit.xml"),
    ],
)
def test_the_test_section_says_the_command_and_the_junit_report(
    manifest: str | None, command: str, junit: str | None
) -> None:
    assert read_test_spec(manifest) == TestSpec(command=command, junit=junit)


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("test: [\n", "not valid YAML"),
        ("- a list\n", "not a mapping"),
        ("test:\n  command: '  '\n", "test.command: .*the test command is empty"),
        ("test:\n  junit: /tmp/junit.xml\n", "test.junit: .*not a file path inside the repository"),
        ("test:\n  junit: ../junit.xml\n", "test.junit: .*not a file path inside the repository"),
        ("test:\n  comand: make check\n", "test.comand: Extra inputs are not permitted"),
        ("test: 3\n", "test: "),
    ],
)
def test_an_invalid_test_section_says_what_is_wrong(manifest: str, message: str) -> None:
    with pytest.raises(AnalysisError, match=f"^.orchestrator.yml .*{message}"):
        read_test_spec(manifest)


# --- the environment contract --------------------------------------------------------------------

CONTRACT_MANIFEST = """
backing_services: [postgresql]
services:
  - name: api
    command: python -m app
    port_env: PORT
    env: {required: [STRIPE_KEY], optional: [DATABASE_URL, SECRET_KEY, WORKERS, DEBUG]}
env:
  STRIPE_KEY: {kind: user_secret, description: From the Stripe dashboard}
  SECRET_KEY: {kind: generated_secret, length: 48}
  PORT: {kind: allocation, resource: port}
  DATABASE_URL: {kind: allocation, resource: postgresql}
  WORKERS: {kind: literal, value: 2}
  DEBUG: {kind: literal, value: false}
"""


def test_the_env_contract_types_each_variable(tmp_path: Path) -> None:
    spec = analyze(repo(tmp_path, {".orchestrator.yml": CONTRACT_MANIFEST}))
    assert spec.backing_services == ["postgresql"]
    assert spec.required_env == ["STRIPE_KEY"]
    assert spec.env_contract == {
        "STRIPE_KEY": UserSecret(description="From the Stripe dashboard"),
        "SECRET_KEY": GeneratedSecret(length=48),
        "PORT": Allocation(resource="port"),
        "DATABASE_URL": Allocation(resource="postgresql"),
        # The environment holds text: YAML's numbers and booleans are spelled as it would.
        "WORKERS": LiteralValue(value="2"),
        "DEBUG": LiteralValue(value="false"),
    }
    # It survives the trip through a workflow's history (JSON) unchanged.
    assert AppSpec.model_validate_json(spec.model_dump_json()) == spec
    # What the deploy makes for it: the database's URL, and the generated secret once.
    assert spec.database_env == "DATABASE_URL"
    assert spec.generated_secrets == {"SECRET_KEY": 48}


async def test_the_app_templates_backend_asks_for_its_database_and_migrates_first(
    tmp_path: Path,
) -> None:
    spec = analyze(await render_app(tmp_path, ["backend"]))
    assert (spec.service, spec.command) == ("backend", "python -m app")
    assert spec.release_command == "alembic upgrade head"
    assert spec.database_env == "DATABASE_URL"
    assert spec.generated_secrets == {"SECRET_KEY": 32}
    bot = analyze(await render_app(tmp_path / "bot", ["tg_bot"]))
    assert (bot.release_command, bot.database_env) == (None, None)


def test_a_manifest_without_a_contract_reads_as_before(tmp_path: Path) -> None:
    manifest = "services:\n  - name: api\n    command: ./serve\n    env: {required: [TOKEN]}\n"
    spec = analyze(repo(tmp_path, {".orchestrator.yml": manifest}))
    assert spec.required_env == ["TOKEN"]
    assert spec.env_contract == {} and spec.backing_services == []
    assert read_manifest(manifest).env == {}


@pytest.mark.parametrize(
    ("contract", "message"),
    [
        ("env:\n  A: {kind: secret}\n", "env.A: Input tag 'secret' found using 'kind'"),
        ("env:\n  A: {value: x}\n", "env.A: Unable to extract tag using discriminator 'kind'"),
        ("env:\n  A: {kind: allocation}\n", "env.A.allocation.resource: Field required"),
        ("env:\n  A: {kind: allocation, resource: mysql}\n", "env.A.allocation.resource: "),
        ("env:\n  A: {kind: literal}\n", "env.A.literal.value: Field required"),
        ("env:\n  A: {kind: generated_secret, length: 4}\n", "length: Input should be greater"),
        ("env:\n  A: {kind: user_secret, secret: x}\n", "secret: Extra inputs are not permitted"),
        (
            "env:\n  1A: {kind: user_secret}\n",
            "env: Value error, not environment variable names: 1A",
        ),
        (
            "backing_services: [mongodb]\n",
            "backing_services: Value error, unknown backing service 'mongodb': known are "
            "postgresql",
        ),
        (
            "services:\n  - {name: api, command: x, env: {required: [TOKEN]}}\n"
            "env:\n  PORT: {kind: allocation, resource: port}\n",
            "service 'api' names TOKEN, which the env contract does not type",
        ),
    ],
)
def test_an_invalid_contract_says_what_is_wrong(
    tmp_path: Path, contract: str, message: str
) -> None:
    manifest = contract if "services" in contract else contract + "services: [{command: x}]\n"
    with pytest.raises(
        AnalysisError, match=f"^.orchestrator.yml is invalid: .*{re.escape(message)}"
    ):
        analyze(repo(tmp_path, {".orchestrator.yml": manifest}))
    with pytest.raises(AnalysisError, match=re.escape(message)):
        read_test_spec(manifest)  # the Tester refuses it too, rather than half-reading it


# --- the manifest's backing services -------------------------------------------------------------


@pytest.mark.parametrize(
    ("manifest", "services"),
    [
        (None, []),
        ("test: make test\n", []),
        ("backing_services:\n", []),
        ("backing_services: [postgresql]\n", ["postgresql"]),
        ("backing_services: PostgreSQL\n", ["postgresql"]),
        ("backing_services: [postgresql, postgresql]\n", ["postgresql"]),
    ],
)
def test_the_manifest_names_the_backing_services_its_tests_need(
    manifest: str | None, services: list[str]
) -> None:
    assert read_manifest(manifest).backing_services == services


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (
            "backing_services: [postgresql, mysql]\n",
            "backing_services: .*unknown backing service 'mysql': known are postgresql",
        ),
        ("backing_services: {db: postgresql}\n", "backing_services: .*a list of service names"),
    ],
)
def test_an_unknown_backing_service_is_refused_naming_the_known_ones(
    manifest: str, message: str
) -> None:
    with pytest.raises(AnalysisError, match=f"^.orchestrator.yml is invalid: {message}"):
        read_manifest(manifest)
