"""Errors are problem+json a client can act on; the docs work without the internet."""

from __future__ import annotations

import re
from typing import Any

import httpx

from api.app import create_app
from core.settings import Settings

PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = dict(response.json())
    assert body["status"] == status and body["type"] == "about:blank"
    assert body["title"] and body["detail"]
    assert body["instance"] == response.request.url.path
    return body


# path, body, and what the problem says about each field.
BAD_BODIES: list[tuple[str, dict[str, Any], dict[str, str]]] = [
    ("/projects", {}, {"name": "field required"}),
    ("/projects", {"name": "has space"}, {"name": "String should match pattern"}),
    ("/projects", {"name": "ok", "colour": "red"}, {"colour": "unknown field"}),
    ("/tasks", {"project_id": "p", "spec": "x", "action": "explode"}, {"action": "Input should"}),
    ("/users", {"name": ""}, {"name": "String should have at least 1 character"}),
    ("/api-keys", {"name": 7}, {"name": "Input should be a valid string"}),
]


async def test_bad_bodies_are_readable_422s(admin: httpx.AsyncClient) -> None:
    for path, body, fields in BAD_BODIES:
        problem = assert_problem(await admin.post(path, json=body), 422)
        by_field = {issue["field"]: issue for issue in problem["errors"]}
        for field, message in fields.items():
            assert by_field[field]["message"].startswith(message), problem
            assert by_field[field]["loc"] == ["body", field]
            assert f"{field}: {by_field[field]['message']}" in problem["detail"]


async def test_not_json_and_no_body(admin: httpx.AsyncClient) -> None:
    missing = assert_problem(await admin.post("/projects"), 422)
    assert missing["detail"] == "body: a request body is required"
    broken = await admin.post(
        "/projects", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert "JSON" in assert_problem(broken, 422)["detail"]


async def test_query_validation(admin: httpx.AsyncClient) -> None:
    problem = assert_problem(await admin.get("/tasks", params={"limit": 0, "status": "x"}), 422)
    assert {issue["field"] for issue in problem["errors"]} == {"query.limit", "query.status"}


async def test_unknown_things_are_404(admin: httpx.AsyncClient, project: dict[str, Any]) -> None:
    assert "nope" in assert_problem(await admin.get("/projects/nope"), 404)["detail"]
    unknown = await admin.post("/tasks", json={"project_id": "nope", "spec": "build it"})
    assert "project" in assert_problem(unknown, 404)["detail"]
    # Tasks take a project's id only, not its name.
    by_name = await admin.post("/tasks", json={"project_id": project["name"], "spec": "x"})
    assert_problem(by_name, 404)
    assert_problem(await admin.get("/tasks/nope"), 404)
    assert_problem(await admin.get("/no/such/route"), 404)
    assert_problem(await admin.put("/projects"), 405)


async def test_projects_unique_names(admin: httpx.AsyncClient, project: dict[str, Any]) -> None:
    assert project["modules"] == ["backend"] and project["status"] == "NEW"
    duplicate = await admin.post("/projects", json={"name": "SHOP"})
    assert "already exists" in assert_problem(duplicate, 409)["detail"]
    assert (await admin.get(f"/projects/{project['id']}")).json() == project
    assert (await admin.get("/projects/shop")).json() == project
    other = (await admin.post("/projects", json={"name": "blog", "modules": []})).json()
    listed = (await admin.get("/projects")).json()
    assert [p["id"] for p in listed] == [other["id"], project["id"]]  # newest first


async def test_a_project_names_its_template_or_takes_the_default(
    admin: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    assert project["template"] is None  # the deployment's default
    made = await admin.post("/projects", json={"name": "notes", "template": "app"})
    assert made.status_code == 201 and made.json()["template"] == "app"
    assert (await admin.get("/projects/notes")).json()["template"] == "app"
    unknown = await admin.post("/projects", json={"name": "x", "template": "django"})
    assert "template" in assert_problem(unknown, 422)["detail"]


async def test_a_task_that_does_not_fit_its_type_is_refused_readably(
    admin: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    no_spec = await admin.post("/tasks", json={"project_id": project["id"]})
    assert "an engineering task needs a spec" in assert_problem(no_spec, 422)["detail"]
    action = await admin.post(
        "/tasks", json={"type": "deploy", "project_id": project["id"], "action": "rollback"}
    )
    assert "action goes in deploy.action" in assert_problem(action, 422)["detail"]


async def test_docs_are_served_without_the_internet() -> None:
    app = create_app(Settings())  # docs need no lifespan: no database, no Redis
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://api"
    ) as client:
        for page in ("/docs", "/redoc"):
            html = (await client.get(page)).text
            urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", html)
            assert urls, page
            external = [u for u in re.findall(r"https?://[^\s'\"<>]+", html)]
            assert external == [], f"{page} loads {external}"
            for url in urls:
                assert not url.startswith("//"), url
                asset = await client.get(url)
                assert asset.status_code == 200, url
        schema = (await client.get("/openapi.json")).json()
    assert schema["info"]["title"] == "codegen-orchestrator"
    assert schema["info"]["version"] == "0.1.0" and "API key" in schema["info"]["description"]
    assert {"HTTPBearer", "APIKeyHeader"} <= set(schema["components"]["securitySchemes"])
    assert "/tasks/{task_id}/events" in schema["paths"]
    assert "HTTPValidationError" not in schema["components"]["schemas"]


async def test_unexpected_errors_are_problems_too() -> None:
    app = create_app(Settings())

    async def boom() -> None:
        raise RuntimeError("secret internals")

    app.add_api_route("/boom", boom)
    transport = httpx.ASGITransport(app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        response = await client.get("/boom")
    problem = assert_problem(response, 500)
    assert "secret" not in problem["detail"]
