"""The ``app`` template's backend through the whole deploy pipeline: its packages installed on
the server, its own PostgreSQL database there (the URL made once, a project secret), its
migrations run before the switch, live at its HTTPS name; redeploy, rollback and undeploy keep
its data, ``--drop-data`` drops it, and the database's password goes nowhere else."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from redis.asyncio import Redis

from core.crypto import Vault
from core.enums import ProjectTemplate
from db import secrets
from testing.deploy import (
    AppAtName,
    DeployStack,
    commit_files,
    give_base_domain,
    kept_by_orchestrator,
)
from testing.logs import logs_to

BASE_DOMAIN = "apps.example.internal"
# The first deploy installs FastAPI, SQLAlchemy, Alembic and psycopg from PyPI on the server.
FIRST_DEPLOY_S = 420.0


async def test_the_backend_template_goes_live_with_its_database_and_keeps_its_data(
    deploy_stack: DeployStack, redis: Redis, tmp_path: Path
) -> None:
    stack = deploy_stack
    await give_base_domain(stack, BASE_DOMAIN)
    project = await stack.project("ledger", ProjectTemplate.app)
    app = AppAtName(stack, f"{project['name']}.{BASE_DOMAIN}")

    with logs_to(tmp_path / "logs") as log_file:
        first = await _deployed(stack, project["id"], within=FIRST_DEPLOY_S)
        result = first["result"]
        assert (result["project"], result["runtime"], result["database"]) == (
            "ledger",
            "process",
            "app_ledger",
        )
        assert result["deployed_url"] == f"https://{app.name}:{app.port}/"
        await app.learn_ca(stack)
        made = await _project_secret(stack, project["id"], "DATABASE_URL")
        # The migration ran before the release took requests: the table is there at once.
        assert await app.items() == []
        added = await app.add("first")

        # A new commit, a new release: the data is the project's, not the release's.
        repository = Path(project_repository(await _project(stack, project["id"])))
        commit_files(repository, {"CHANGES.md": "A second release.\n"}, "A second release")
        second = await _deployed(stack, project["id"])
        assert second["result"]["previous_release"] == result["release"]
        assert await app.items() == [added]
        await app.add("second")
        rolled_back = await _deployed(stack, project["id"], "rollback")
        assert rolled_back["result"]["release"] == result["release"]
        names = [item["name"] for item in await app.items()]
        assert names == ["first", "second"]

        # An undeploy with --drop-data drops it (one without keeps it: on the server, tested in
        # tests/infra/ansible/test_database.py).
        dropped = await stack.run_deploy(project["id"], "undeploy", drop_data=True)
        assert dropped["status"] == "COMPLETED", dropped["error"]
        await _deployed(stack, project["id"])
        assert await app.items() == []

    # The URL was made once (the same password throughout) and is a project secret; its
    # password is nowhere but there (encrypted) and on the server.
    url = await _project_secret(stack, project["id"], "DATABASE_URL")
    assert url == made
    assert urlsplit(url).username == "app_ledger"
    password = urlsplit(url).password
    assert password and len(password) >= 24
    secret_key = await _project_secret(stack, project["id"], "SECRET_KEY")  # generated once too
    assert len(secret_key) == 32
    places = await _places(stack, redis, [first, second, rolled_back, dropped])
    places["worker log"] = log_file.read_text()
    assert "playbook finished" in places["worker log"]
    leaks = [place for place, text in places.items() if password in text or secret_key in text]
    assert leaks == []


def project_repository(project: dict[str, object]) -> str:
    return str(project["repository"]).removeprefix("file://")


async def _project(stack: DeployStack, project_id: str) -> dict[str, object]:
    return dict((await stack.api.get(f"/projects/{project_id}")).json())


async def _deployed(
    stack: DeployStack, project_id: str, action: str = "create", within: float = 180.0
) -> dict[str, object]:
    done = await stack.run_deploy(project_id, action, within)
    assert done["status"] == "COMPLETED", done["error"]
    return done


async def _project_secret(stack: DeployStack, project_id: str, name: str) -> str:
    async with stack.db.session() as session:
        env = await secrets.project_env(session, Vault.from_settings(stack.settings), project_id)
    return env[name]


async def _places(
    stack: DeployStack, redis: Redis, tasks: list[dict[str, object]]
) -> dict[str, str]:
    """What the orchestrator keeps: its runs' histories, database, Redis and home, and on the
    server what is not the release's own .env (the app's state, the cluster's log)."""
    places = await kept_by_orchestrator(stack, redis, [str(t["workflow_id"]) for t in tasks])
    assert "DATABASE_URL" in places["database"]  # the name is there, the value is not
    server_side = [*stack.apps_root.glob(".postgres/logs/*"), *stack.apps_root.glob("*/*.json")]
    server_side += list(stack.apps_root.glob("*/logs/*"))
    assert any(p.parent.name == "logs" for p in server_side)
    for path in (p for p in server_side if p.is_file()):
        places[f"server file {path}"] = path.read_bytes().decode(errors="replace")
    return places
