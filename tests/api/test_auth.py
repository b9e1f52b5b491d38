"""Who may call what: keys, revocation, admins, and no route left open by accident."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import httpx
from fastapi import FastAPI, routing
from sqlmodel import select

from db.engine import Database
from db.tables import ApiKey, utcnow
from db.users import generate_key
from tests.api.conftest import MakeClient, auth

# Routes that answer without a key: liveness and the documentation.
PUBLIC = {"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}


def all_routes(app: FastAPI) -> list[Any]:
    """Every route, included routers flattened (FastAPI >= 0.16x keeps them nested)."""
    walk = getattr(routing, "iter_route_contexts", None)
    return list(walk(app.routes)) if walk is not None else list(app.routes)


def protected_requests(app: FastAPI) -> list[tuple[str, str]]:
    """Every method and path of every route but the public ones, path parameters filled."""
    found = []
    for route in all_routes(app):
        methods = getattr(route, "methods", None)
        if methods and route.path not in PUBLIC:
            path = re.sub(r"\{[^}]+\}", "0123456789abcdef0123456789abcdef", route.path)
            found.extend((method, path) for method in sorted(methods) if method != "HEAD")
    return found


def assert_unauthorized(response: httpx.Response) -> None:
    request = f"{response.request.method} {response.request.url.path}"
    assert response.status_code == 401, f"{request} answered {response.status_code}"
    assert response.headers["content-type"] == "application/problem+json", request
    assert response.headers["www-authenticate"] == "Bearer", request
    body = response.json()
    assert body["status"] == 401 and body["title"] == "Unauthorized" and body["detail"], request


async def test_every_route_needs_a_valid_key(
    app: FastAPI, make_client: MakeClient, admin: httpx.AsyncClient
) -> None:
    requests = protected_requests(app)
    # The listing must see the routes: a broken walk would make this test pass vacuously.
    assert ("POST", "/tasks") in requests and ("GET", "/users/me") in requests
    assert len(requests) >= 15
    created = (await admin.post("/api-keys", json={"name": "doomed"})).json()
    assert (await admin.delete(f"/api-keys/{created['id']}")).status_code == 204

    anonymous = await make_client()
    wrong = await make_client(generate_key().plaintext)
    garbage = await make_client(headers={"Authorization": "Bearer not-a-key"})
    revoked = await make_client(created["key"])
    for method, path in requests:
        for client in (anonymous, wrong, garbage, revoked):
            assert_unauthorized(await client.request(method, path, json={}))


async def test_health_needs_no_key(make_client: MakeClient) -> None:
    response = await (await make_client()).get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_bearer_and_x_api_key(make_client: MakeClient, admin_key: str) -> None:
    client = await make_client()
    by_bearer = await client.get("/users/me", headers=auth(admin_key))
    by_header = await client.get("/users/me", headers={"X-API-Key": admin_key})
    assert by_bearer.status_code == by_header.status_code == 200
    assert by_bearer.json() == by_header.json()
    assert by_bearer.json()["is_admin"] is True and by_bearer.json()["name"] == "admin"


async def test_last_used_at_is_written_at_most_once_a_minute(
    admin: httpx.AsyncClient, database: Database
) -> None:
    async def last_used() -> str:
        return str((await admin.get("/api-keys")).json()[0]["last_used_at"])

    first = await last_used()
    assert first != "None"
    assert await last_used() == first  # used again within the minute: not written
    async with database.session() as session:
        key = (await session.exec(select(ApiKey))).one()
        key.last_used_at = utcnow() - timedelta(minutes=2)
        session.add(key)
        await session.commit()
    assert await last_used() > first


async def test_admin_only_routes_refuse_other_users(
    make_client: MakeClient, user_key: str, admin: httpx.AsyncClient
) -> None:
    user = await make_client(user_key)
    me = (await user.get("/users/me")).json()
    assert me["is_admin"] is False and me["name"] == "dev"
    for response in (
        await user.post("/users", json={"name": "eve"}),
        await user.get("/users"),
        await user.get(f"/users/{(await admin.get('/users/me')).json()['id']}"),
        await user.post("/api-keys", json={"name": "x", "user_id": "someone-else"}),
    ):
        assert response.status_code == 403, response.request.url
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"]
    assert (await user.get(f"/users/{me['id']}")).json() == me
    listed = await admin.get("/users")
    assert {u["name"] for u in listed.json()} == {"admin", "dev"}


async def test_users_admin_creates_and_reads(admin: httpx.AsyncClient) -> None:
    created = await admin.post("/users", json={"name": "po", "telegram_id": 12345})
    assert created.status_code == 201
    body = created.json()
    assert body["telegram_id"] == 12345 and body["is_admin"] is False
    assert (await admin.get(f"/users/{body['id']}")).json() == body
    duplicate = await admin.post("/users", json={"name": "po2", "telegram_id": 12345})
    assert duplicate.status_code == 409
    missing = await admin.get("/users/nobody")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


async def test_users_found_by_telegram_id(
    make_client: MakeClient, user_key: str, admin: httpx.AsyncClient
) -> None:
    created = (await admin.post("/users", json={"name": "tg", "telegram_id": 777})).json()
    found = await admin.get("/users", params={"telegram_id": 777})
    assert found.status_code == 200 and found.json() == [created]
    assert (await admin.get("/users", params={"telegram_id": 778})).json() == []
    # Only admins may look people up.
    user = await make_client(user_key)
    assert (await user.get("/users", params={"telegram_id": 777})).status_code == 403


async def test_api_keys_create_list_revoke(make_client: MakeClient, user_key: str) -> None:
    user = await make_client(user_key)
    created = await user.post("/api-keys", json={"name": "laptop"})
    assert created.status_code == 201
    body = created.json()
    assert body["key"].startswith(f"orch_{body['prefix']}_") and body["revoked_at"] is None

    laptop = await make_client(body["key"])
    assert (await laptop.get("/users/me")).json()["name"] == "dev"
    listed = (await user.get("/api-keys")).json()
    assert {k["name"] for k in listed} == {"dev", "laptop"}
    assert all("key" not in k and "key_hash" not in k for k in listed)

    assert (await user.delete(f"/api-keys/{body['id']}")).status_code == 204
    assert (await user.delete(f"/api-keys/{body['id']}")).status_code == 204  # idempotent
    assert_unauthorized(await laptop.get("/users/me"))
    revoked = next(k for k in (await user.get("/api-keys")).json() if k["id"] == body["id"])
    assert revoked["revoked_at"] is not None
    assert (await user.get("/users/me")).status_code == 200  # the other key still works


async def test_keys_of_others(
    make_client: MakeClient, user_key: str, admin: httpx.AsyncClient
) -> None:
    user = await make_client(user_key)
    admin_keys = (await admin.get("/api-keys")).json()
    assert [k["name"] for k in admin_keys] == ["bootstrap"]
    # A user cannot revoke (or even see) an admin's key; an admin can revoke anyone's.
    assert (await user.delete(f"/api-keys/{admin_keys[0]['id']}")).status_code == 404
    assert (
        await user.get("/api-keys", params={"user_id": admin_keys[0]["user_id"]})
    ).status_code == 403
    user_id = (await user.get("/users/me")).json()["id"]
    theirs = (await admin.get("/api-keys", params={"user_id": user_id})).json()
    assert [k["name"] for k in theirs] == ["dev"]
    assert (await admin.delete(f"/api-keys/{theirs[0]['id']}")).status_code == 204
    assert_unauthorized(await user.get("/users/me"))
    unknown = await admin.post("/api-keys", json={"name": "x", "user_id": "nobody"})
    assert unknown.status_code == 404
