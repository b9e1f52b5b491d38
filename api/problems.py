"""Errors as RFC 9457 problem details (``application/problem+json``), for every failure.

Routes raise ``NotFound`` / ``Conflict`` / ... (or FastAPI's ``HTTPException``); the handlers
installed here turn them, and request validation errors, into one JSON shape clients can rely on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.services.tasks import TaskNotFound
from core.logging import get_logger

log = get_logger(__name__)

PROBLEM_JSON = "application/problem+json"


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
    """OpenAPI ``responses`` entries documenting problem+json errors."""
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
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return problem_response(request, exc.status_code, detail, headers=exc.headers)


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    issues = [_issue(error) for error in exc.errors()]
    return problem_response(request, 422, describe_issues(issues), errors=issues)


async def _on_task_not_found(request: Request, exc: Exception) -> JSONResponse:
    return problem_response(request, 404, f"task {exc} not found")


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error", exc_info=exc, path=request.url.path)
    return problem_response(request, 500, "internal error; see the API log")


def install(app: FastAPI) -> None:
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(TaskNotFound, _on_task_not_found)
    app.add_exception_handler(Exception, _on_unexpected)
