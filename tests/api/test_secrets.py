"""A project's secrets through the API: set, replace, list names, remove; values go in and
never come out: not in a response, a log line, the outbox or a Redis stream."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlmodel import select

from core.crypto import Vault
from core.settings import Settings
from db import secrets
from db.engine import Database
from db.tables import Secret
from tests.api.conftest import MakeClient
from tests.api.test_servers import everything_in

VALUE = "pa55-Wörd/with spaces & symbols=="
OTHER = "second-value-7f3a1c"


def path(project: dict[str, Any], name: str = "") -> str:
    base = f"/projects/{project['name']}/secrets"
    return f"{base}/{name}" if name else base


async def stored(database: Database, tmp_path: Path, project_id: str, name: str) -> str:
    vault = Vault.from_settings(Settings(home=tmp_path))
    async with database.session() as session:
        refs = await secrets.project_secret_refs(session, project_id)
        return await secrets.resolve_secret_ref(session, vault, refs[name])


async def test_set_replace_list_remove(
    admin: httpx.AsyncClient, project: dict[str, Any], database: Database, tmp_path: Path
) -> None:
    created = await admin.put(path(project, "DATABASE_URL"), json={"value": VALUE})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["name"] == "DATABASE_URL" and body["project_id"] == project["id"]
    assert body["kind"] == "env" and set(body) == {
        "id",
        "project_id",
        "name",
        "kind",
        "created_at",
        "updated_at",
    }
    assert await stored(database, tmp_path, project["id"], "DATABASE_URL") == VALUE

    replaced = await admin.put(path(project, "DATABASE_URL"), json={"value": OTHER})
    assert replaced.status_code == 204 and replaced.content == b""
    assert await stored(database, tmp_path, project["id"], "DATABASE_URL") == OTHER

    by_id = await admin.put(f"/projects/{project['id']}/secrets/_TOKEN_2", json={"value": "t"})
    assert by_id.status_code == 201
    listed = await admin.get(path(project))
    assert listed.status_code == 200
    assert [s["name"] for s in listed.json()] == ["DATABASE_URL", "_TOKEN_2"]
    first = listed.json()[0]
    assert first["id"] == body["id"] and first["updated_at"] > first["created_at"]

    assert (await admin.delete(path(project, "DATABASE_URL"))).status_code == 204
    assert [s["name"] for s in (await admin.get(path(project))).json()] == ["_TOKEN_2"]
    again = await admin.delete(path(project, "DATABASE_URL"))
    assert again.status_code == 404 and "DATABASE_URL" in again.json()["detail"]


async def test_secrets_belong_to_their_project(
    admin: httpx.AsyncClient, project: dict[str, Any], make_client: MakeClient, user_key: str
) -> None:
    other = (await admin.post("/projects", json={"name": "blog"})).json()
    user = await make_client(user_key)
    assert (await user.put(path(project, "KEY"), json={"value": "a"})).status_code == 201
    assert (await user.put(path(other, "KEY"), json={"value": "b"})).status_code == 201
    assert [s["name"] for s in (await user.get(path(other))).json()] == ["KEY"]
    assert (await user.delete(path(other, "KEY"))).status_code == 204
    assert [s["name"] for s in (await user.get(path(project))).json()] == ["KEY"]
    assert (await user.get("/projects/nope/secrets")).status_code == 404
    assert (await user.put("/projects/nope/secrets/KEY", json={"value": "a"})).status_code == 404
    anonymous = await make_client()
    assert (await anonymous.get(path(project))).status_code == 401


@pytest.mark.parametrize("name", ["lower", "1ST", "WITH-DASH", "DOT.TED", "SPA CE", "Ä"])
async def test_names_must_be_environment_variable_names(
    admin: httpx.AsyncClient, project: dict[str, Any], name: str
) -> None:
    response = await admin.put(path(project, name), json={"value": VALUE})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert "environment variable names" in response.json()["detail"]
    assert VALUE not in response.text


@pytest.mark.parametrize(
    ("body", "field"), [({"value": ""}, "value"), ({}, "value"), ({"value": "x", "v": 1}, "v")]
)
async def test_an_invalid_body_is_422(
    admin: httpx.AsyncClient, project: dict[str, Any], body: dict[str, Any], field: str
) -> None:
    response = await admin.put(path(project, "KEY"), json=body)
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == [field]


async def test_a_value_is_nowhere_but_encrypted_in_its_row(
    admin: httpx.AsyncClient,
    project: dict[str, Any],
    database: Database,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    responses = [
        await admin.put(path(project, "API_TOKEN"), json={"value": VALUE}),
        await admin.put(path(project, "API_TOKEN"), json={"value": VALUE}),
        await admin.get(path(project)),
        # A wrong name with a value: the 422 names the name, not the value.
        await admin.put(path(project, "bad-name"), json={"value": VALUE}),
        await admin.put(path(project, "API_TOKEN"), json={"value": VALUE, "extra": VALUE}),
    ]
    assert [r.status_code for r in responses] == [201, 204, 200, 422, 422]
    for response in responses:
        assert VALUE not in response.text and VALUE not in str(response.headers)

    captured = capsys.readouterr()
    logs = "\n".join(
        [caplog.text, *(repr(r.msg) for r in caplog.records), captured.out, captured.err]
    )
    # The logs were captured (the scan can fail) and name the secret, not its value.
    assert "API_TOKEN" in logs and "secret stored" in logs
    assert VALUE not in logs

    assert VALUE not in await everything_in(database, redis)
    async with database.session() as session:
        rows = (await session.exec(select(Secret))).all()
    assert len(rows) == 1 and VALUE not in rows[0].ciphertext
