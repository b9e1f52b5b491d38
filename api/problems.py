"""Errors as RFC 9457 problem details (``application/problem+json``), for every failure.

Routes raise ``NotFound`` / ``Conflict`` / ... (or FastAPI's ``HTTPException``), the database
layer its domain errors (db/errors.py); the handlers installed here turn them all, and request
validation errors, into one JSON shape clients can rely on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from core.logging import get_logger
from db import errors as domain

log = get_logger(__name__)

PROBLEM_JSON = "application/problem+json"
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")


class ValidationIssue(BaseModel):
    loc: list[str | int] = Field(description="Where the problem is, e.g. ['body', 'name']")
    field: str = Field(description="The same place, dotted and without 'body'")
    message: str
    type: str


class ProblemDetails(BaseModel):
    """What every error response holds."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[ValidationIssue] | None = Field(
        default=None, description="Each invalid input, on 422"
    )


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting problem+json errors.

    FastAPI files the model's schema under ``application/json``; ``install`` moves it to
    ``application/problem+json``, the one type errors are sent as."""
    return {
        status: {
            "model": ProblemDetails,
            "content": {PROBLEM_JSON: {}},
            "description": _phrase(status),
        }
        for status in statuses
    }


class Problem(Exception):
    """An error a client can act on; subclasses fix the status."""

    status: int = 500

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        self.headers = dict(headers or {})


class NotFound(Problem):
    status = 404


class Conflict(Problem):
    status = 409


class Forbidden(Problem):
    status = 403


class Unauthorized(Problem):
    status = 401

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class Unprocessable(Problem):
    status = 422


class ServiceUnavailable(Problem):
    status = 503


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_response(
    request: Request,
    status: int,
    detail: str | None,
    *,
    headers: Mapping[str, str] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": _phrase(status),
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def _issue(error: Mapping[str, Any]) -> dict[str, Any]:
    loc = [part if isinstance(part, int) else str(part) for part in error.get("loc", ())]
    path = loc[1:] if loc and loc[0] == "body" else loc
    field = ".".join(str(part) for part in path) or "body"
    kind = str(error.get("type", "invalid"))
    if kind == "missing":
        message = "field required" if path else "a request body is required"
    elif kind == "extra_forbidden":
        message = "unknown field"
    else:
        message = str(error.get("msg", "invalid value"))
    return {"loc": loc, "field": field, "message": message, "type": kind}


def describe_issues(issues: Sequence[Mapping[str, Any]]) -> str:
    return "; ".join(f"{issue['field']}: {issue['message']}" for issue in issues)


async def _on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return problem_response(request, exc.status, exc.detail, headers=exc.headers)


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if _unreadable_body(exc):
        return _invalid_json(request)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # RFC 9110 requires Allow on a 405; Starlette's names the methods of one route only.
        headers["Allow"] = ", ".join(allowed_methods(request)) or headers.get("Allow", "")
    return problem_response(request, exc.status_code, detail, headers=headers)


def allowed_methods(request: Request) -> list[str]:
    """Every method the request's path answers, across the routes that share the path.

    Asked of the routes themselves, method by method: routers included in the app are routes
    of their own (FastAPI), whose inner routes the app does not list."""
    routes = request.app.router.routes
    return [
        method
        for method in HTTP_METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]


def _unreadable_body(exc: StarletteHTTPException) -> bool:
    """FastAPI's 400 for a JSON body it could not decode otherwise than as malformed JSON (not
    UTF-8, nested too deep). It raises that 400 from the decoding error."""
    return exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError)


def _invalid_json(request: Request) -> JSONResponse:
    # The same answer as for malformed JSON: a body that cannot be read is invalid input (422).
    issue = {
        "loc": ["body"],
        "field": "body",
        "message": "not valid JSON: the body must be UTF-8 encoded JSON text",
        "type": "json_invalid",
    }
    return problem_response(request, 422, describe_issues([issue]), errors=[issue])


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    issues = [_issue(error) for error in exc.errors()]
    return problem_response(request, 422, describe_issues(issues), errors=issues)


# The status each domain error of the database layer answers with.
DOMAIN_STATUS: dict[type[domain.DomainError], int] = {
    domain.NotFound: 404,
    domain.Conflict: 409,
    domain.Invalid: 422,
}


async def _on_domain(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, domain.DomainError)
    status = next((code for kind, code in DOMAIN_STATUS.items() if isinstance(exc, kind)), 500)
    return problem_response(request, status, exc.detail)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error", exc_info=exc, path=request.url.path)
    return problem_response(request, 500, "internal error; see the API log")


def _problems_as_problem_json(
    make_schema: Callable[[], dict[str, Any]],
) -> Callable[[], dict[str, Any]]:
    def openapi() -> dict[str, Any]:
        schema = make_schema()  # FastAPI's, made once and kept
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                for response in operation.get("responses", {}).values():
                    content = response.get("content", {})
                    if PROBLEM_JSON in content and "application/json" in content:
                        content[PROBLEM_JSON] = content.pop("application/json")
        return schema

    return openapi


def install(app: FastAPI) -> None:
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(domain.DomainError, _on_domain)
    app.add_exception_handler(Exception, _on_unexpected)
    app.openapi = _problems_as_problem_json(app.openapi)  # type: ignore[method-assign]
