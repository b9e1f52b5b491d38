"""The API's contract, exact: what the OpenAPI fuzz (test_openapi_contract.py) found, each case
pinned down by a plain test. The document says what the API does: every status a route answers
is among its responses, errors are problem+json, and what the code refuses the schema refuses."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.problems import PROBLEM_JSON
from core.settings import Settings
from tests.api.test_problems import assert_problem
from tests.api.test_servers import add
from tests.api.test_tasks import create_task

# What /openapi.json serves: made from the code, no server needed.
DOCUMENT: dict[str, Any] = create_app(Settings()).openapi()
SCHEMAS: dict[str, Any] = DOCUMENT["components"]["schemas"]
JSON = {"Content-Type": "application/json"}


def operation(method: str, path: str) -> dict[str, Any]:
    found: dict[str, Any] = DOCUMENT["paths"][path][method]
    return found


def parameter(method: str, path: str, name: str) -> dict[str, Any]:
    (found,) = [p for p in operation(method, path)["parameters"] if p["name"] == name]
    return dict(found)


def fields(problem: dict[str, Any]) -> list[str]:
    return [issue["field"] for issue in problem["errors"]]


# Out-of-range Telegram ids: a 500 from the 64-bit column before, a 422 the schema announces now.
@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 2**53])
async def test_a_telegram_id_out_of_range_is_a_documented_422(
    admin: httpx.AsyncClient, value: int
) -> None:
    message = {"message_id": 1, "text": "hi", "telegram_user_id": value}
    answers = {
        "telegram_user_id": await admin.post("/chats/42/messages", json=message),
        "path.chat_id": await admin.post(
            f"/chats/{value}/messages", json=message | {"telegram_user_id": 7}
        ),
        "query.telegram_id": await admin.get("/users", params={"telegram_id": value}),
        "telegram_id": await admin.post("/users", json={"name": "ann", "telegram_id": value}),
    }
    for field, response in answers.items():
        assert fields(assert_problem(response, 422)) == [field]
    responses = await admin.post(f"/chats/{value}/responses", json={"text": "hello"})
    assert fields(assert_problem(responses, 422)) == ["path.chat_id"]


async def test_the_largest_telegram_id_reaches_the_database(admin: httpx.AsyncClient) -> None:
    largest = 2**53 - 1
    message = {"message_id": 1, "text": "hi", "telegram_user_id": largest}
    stranger = await admin.post(f"/chats/{largest}/messages", json=message)
    assert "is not a user" in assert_problem(stranger, 403)["detail"]
    created = await admin.post("/users", json={"name": "ann", "telegram_id": largest})
    assert created.status_code == 201, created.text
    found = await admin.get("/users", params={"telegram_id": largest})
    assert [user["id"] for user in found.json()] == [created.json()["id"]]


def test_telegram_ids_are_bounded_in_the_document() -> None:
    bounds = {"minimum": -(2**53 - 1), "maximum": 2**53 - 1}
    chat_id = parameter("post", "/chats/{chat_id}/messages", "chat_id")["schema"]
    assert bounds.items() <= chat_id.items()
    assert bounds.items() <= SCHEMAS["ChatMessageIn"]["properties"]["telegram_user_id"].items()
    assert "422" in operation("post", "/chats/{chat_id}/messages")["responses"]


@pytest.mark.parametrize(
    ("path", "template", "params"),
    [
        ("/deployments", "/deployments", {"project": "nope"}),  # the filter names no project
        ("/projects/nope/secrets", "/projects/{project_id_or_name}/secrets", {}),
        ("/users/nope", "/users/{user_id}", {}),
    ],
)
async def test_what_does_not_exist_is_a_documented_404(
    admin: httpx.AsyncClient, path: str, template: str, params: dict[str, str]
) -> None:
    assert "nope" in assert_problem(await admin.get(path, params=params), 404)["detail"]
    assert "404" in operation("get", template)["responses"]


# Bodies FastAPI answered with an undocumented 400 ("There was an error parsing the body"): now
# the 422 of malformed JSON, which every route documents.
UNREADABLE = {
    "not UTF-8": b'{"text": "\xff\xfe"}',
    "nested past the parser's depth": b"[" * 100_000,
    "malformed JSON": b"{not json",
}


@pytest.mark.parametrize("content", UNREADABLE.values(), ids=UNREADABLE.keys())
async def test_a_body_that_cannot_be_read_as_json_is_a_422(
    admin: httpx.AsyncClient, project: dict[str, Any], content: bytes
) -> None:
    task = await create_task(admin, project)
    for path in ("/chats/42/responses", f"/tasks/{task['id']}/respond", "/projects"):
        problem = assert_problem(await admin.post(path, content=content, headers=JSON), 422)
        assert [issue["type"] for issue in problem["errors"]] == ["json_invalid"], path
        assert "JSON" in problem["detail"]


async def test_a_405_names_every_method_of_its_path_in_allow() -> None:
    app = create_app(Settings())  # routing needs no database
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        for template, operations in DOCUMENT["paths"].items():
            path = re.sub(r"\{[^}]+\}", "1", template)
            documented = {method.upper() for method in operations}
            undocumented = {"OPTIONS", "TRACE", "PATCH", "PUT", "DELETE", "POST"} - documented
            for method in sorted(undocumented):
                response = await client.request(method, path)
                assert response.status_code == 405, (method, path)
                assert response.headers["content-type"] == PROBLEM_JSON
                allowed = set(response.headers["allow"].split(", "))
                assert allowed == documented, (method, path)


def test_errors_are_documented_as_problem_json() -> None:
    problem = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}}
    for path, operations in DOCUMENT["paths"].items():
        for method, spec in operations.items():
            for status, response in spec["responses"].items():
                if status[0] in "45":
                    assert response["content"] == problem, (method, path, status)


# Bodies the schema took and the code refused: the schema now says what the code takes.
@pytest.mark.parametrize(
    "apps_root", ["", "relative", "/", "~/", "/srv/apps", "~/apps", "/sp ace", "~user"]
)
async def test_apps_root_is_taken_exactly_when_the_schema_takes_it(
    admin: httpx.AsyncClient, apps_root: str
) -> None:
    pattern = SCHEMAS["ServerCreate"]["properties"]["apps_root"]["pattern"]
    response = await add(admin, apps_root=apps_root)
    if re.search(pattern, apps_root):
        assert response.status_code == 201, response.text
    else:
        assert "apps_root must be" in assert_problem(response, 422)["detail"]


@pytest.mark.parametrize(
    "name", ["A", "_", "DATABASE_URL", "A1", "A" * 200, "lower", "1ST", "A-B", "A" * 201]
)
async def test_a_secret_name_is_taken_exactly_when_the_schema_takes_it(
    admin: httpx.AsyncClient, project: dict[str, Any], name: str
) -> None:
    schema = parameter("put", "/projects/{project_id_or_name}/secrets/{name}", "name")["schema"]
    valid = bool(re.search(schema["pattern"], name)) and len(name) <= schema["maxLength"]
    response = await admin.put(f"/projects/{project['name']}/secrets/{name}", json={"value": "v"})
    if valid:
        assert response.status_code == 201, response.text
    else:
        assert "environment variable names" in assert_problem(response, 422)["detail"]


async def test_a_task_fits_its_type_as_the_schema_says(
    admin: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    engineering, deploy = SCHEMAS["TaskCreate"]["anyOf"][1], SCHEMAS["TaskCreate"]["anyOf"][0]
    # An engineering task (the default type) needs a spec that is not blank...
    assert engineering["required"] == ["spec"]
    assert engineering["properties"]["spec"] == {"pattern": r"\S"}
    for spec in ("", "   ", "\t\n"):
        for body in ({"spec": spec}, {"spec": spec, "type": "engineering"}):
            refused = await admin.post("/tasks", json={"project_id": project["id"], **body})
            assert "needs a spec" in assert_problem(refused, 422)["detail"]
    await create_task(admin, project, spec=" x ")
    # ...a deploy task none, and takes its action in deploy.action only.
    assert deploy["properties"]["type"] == {"const": "deploy"}
    assert deploy["not"] == {"required": ["action"]}
    await create_task(admin, project, type="deploy", spec="")
    action = await admin.post(
        "/tasks", json={"project_id": project["id"], "type": "deploy", "action": "feature"}
    )
    assert "deploy.action" in assert_problem(action, 422)["detail"]


# Values of another JSON type that lax validation converted, so invalid data was accepted.
WRONG_TYPES: list[tuple[str, dict[str, Any], str]] = [
    ("/users", {"name": "ann", "is_admin": 0}, "is_admin"),
    ("/users", {"name": "ann", "telegram_id": "5"}, "telegram_id"),
    ("/users", {"name": "ann", "telegram_id": True}, "telegram_id"),
    (
        "/chats/42/messages",
        {"message_id": 1, "text": "x", "telegram_user_id": False},
        "telegram_user_id",
    ),
    ("/servers/web-1/provision", {"force_reinstall": 0}, "force_reinstall"),
    (
        "/tasks",
        {"project_id": "p", "spec": "x", "engineering": {"max_rounds": "3"}},
        "engineering.max_rounds",
    ),
]


@pytest.mark.parametrize(("path", "body", "field"), WRONG_TYPES)
async def test_a_value_of_another_json_type_is_refused(
    admin: httpx.AsyncClient, path: str, body: dict[str, Any], field: str
) -> None:
    assert fields(assert_problem(await admin.post(path, json=body), 422)) == [field]


async def test_a_number_without_a_fraction_is_an_integer(admin: httpx.AsyncClient) -> None:
    # JSON Schema's integer: 5.0 is one.
    created = await admin.post("/users", json={"name": "ann", "telegram_id": 5.0})
    assert created.status_code == 201, created.text
    assert created.json()["telegram_id"] == 5
    fraction = await admin.post("/users", json={"name": "bob", "telegram_id": 5.5})
    assert fields(assert_problem(fraction, 422)) == ["telegram_id"]


# Event numbers past the 32-bit column: a 500 on PostgreSQL (and past 64 bits on SQLite) before.
async def test_event_numbers_past_the_column_are_a_documented_422(
    admin: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    events = f"/tasks/{(await create_task(admin, project))['id']}/events"
    assert (await admin.get(events, params={"after": 2**31 - 1})).json() == []
    for too_far in (2**31, 2**63):
        after = await admin.get(events, params={"after": too_far})
        assert fields(assert_problem(after, 422)) == ["query.after"]
        header = await admin.get(events, headers={"Last-Event-ID": str(too_far)})
        assert fields(assert_problem(header, 422)) == ["header.last-event-id"]
    # A header has no null: the schema offers none (the fuzz sent "null" for it).
    last_event_id = parameter("get", "/tasks/{task_id}/events", "last-event-id")["schema"]
    assert last_event_id["type"] == "integer" and last_event_id["maximum"] == 2**31 - 1


# NUL in text: a 500 on PostgreSQL before (it cannot store or look it up), taken on SQLite.
async def test_nul_is_refused_in_bodies_paths_and_queries(
    admin: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    answers = {
        "description": await admin.post("/projects", json={"name": "a", "description": "a\x00"}),
        "modules": await admin.post("/projects", json={"name": "b", "modules": ["\x00"]}),
        "path": await admin.get("/projects/sh%00p"),
        "query.project": await admin.get("/deployments", params={"project": "sh\x00p"}),
    }
    for field, response in answers.items():
        problem = assert_problem(response, 422)
        assert fields(problem) == [field] and "NUL" in problem["detail"], field
    assert "NUL" in DOCUMENT["info"]["description"]
    assert (await admin.get("/projects")).json() == [project]


# A query parameter given twice: its schema takes one value, so the request is refused instead
# of the last value silently winning (found in CI by the fuzz's invalid data).
async def test_a_query_parameter_given_twice_is_a_422(admin: httpx.AsyncClient) -> None:
    twice = await admin.get("/pull-requests", params=[("project_id", "a"), ("project_id", "b")])
    problem = assert_problem(twice, 422)
    assert fields(problem) == ["query.project_id"]
    assert "more than once" in problem["detail"]
    once = await admin.get("/pull-requests", params={"project_id": "a"})
    assert once.status_code == 200 and once.json() == []
