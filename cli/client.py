"""A thin client of the API: requests, the SSE event stream, and errors as exit codes.

Commands import it in their body, when they call the API: the settings are the bulk of the CLI's
start-up, which ``--help`` and argument errors do not pay. Requests go through the standard
library's ``urllib`` (proxies from the environment, TLS checked against the usual CA bundle): a
command makes one to three of them, and an HTTP library would cost more to import (httpx, with the
command line tool it loads, ~100 ms on a slow machine) than those requests take.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import quote, urlencode
from urllib.request import HTTPSHandler, OpenerDirector, Request, build_opener

from cli.output import FAILED, NOT_FOUND, UNREACHABLE, USAGE, CliError
from core.enums import TERMINAL_EVENTS, TERMINAL_STATUSES
from core.settings import Settings

_EXIT_BY_STATUS = {400: USAGE, 401: FAILED, 403: FAILED, 404: NOT_FOUND, 409: FAILED, 422: USAGE}
_WORKFLOW_ID = re.compile(r"^(?:engineering|deploy)-([0-9a-f]{32})$")
# Reconnects of an event stream in a row before the API counts as gone.
STREAM_RETRIES = 20
# What a request that never got an answer raises: no connection, a reset, a timeout (all OSErrors,
# urllib's URLError among them), a reply that is not HTTP. (HTTPError, an answer with an error
# status, is a URLError too: it is caught first.)
TRANSPORT_ERRORS = (OSError, http.client.HTTPException)


def task_id_of(value: str) -> str:
    """Accept a task ID or its workflow ID (``engineering-<task id>``)."""
    match = _WORKFLOW_ID.match(value.strip())
    return match.group(1) if match else value.strip()


class WaitTimeout(Exception):
    pass


@dataclass(frozen=True)
class Answer:
    """An HTTP response, read whole."""

    status: int
    reason: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def tls(base_url: str) -> ssl.SSLContext | None:
    """How the client checks the API's certificate: against the usual CA bundle. An http:// API
    (the embedded stack's) needs no TLS, and loading the bundle (~20 ms) is left to https.
    """
    if base_url.lower().startswith("https://"):
        return ssl.create_default_context()
    return None


def opener(base_url: str) -> OpenerDirector:
    """urllib's opener (proxies from the environment, redirects) with the API's TLS checks."""
    context = tls(base_url)
    return build_opener(HTTPSHandler(context=context)) if context else build_opener()


def describe(exc: BaseException) -> str:
    """What went wrong on the wire, without urllib's wrapping."""
    reason = exc.reason if isinstance(exc, URLError) else exc
    if isinstance(reason, BaseException):
        return f"{type(reason).__name__}: {reason}"
    return f"{type(exc).__name__}: {reason}"


class ApiClient:
    def __init__(self, settings: Settings | None = None, timeout: float = 30.0) -> None:
        self.settings = settings or Settings()
        self.base_url = self.settings.effective_api_url
        self.timeout = timeout
        key = self.settings.read_api_key()
        self.headers = {"Accept": "application/json", "User-Agent": "orchestrator-cli"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        self.opener = opener(self.base_url)

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_: object) -> None:
        pass  # every request closes its connection

    # --- plain requests -------------------------------------------------------------------------

    def open(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> http.client.HTTPResponse:
        """The response to one request, its body unread; an error status raises CliError."""
        url = f"{self.base_url}{path}"
        if params:
            url = f"{url}?{urlencode(params)}"
        all_headers = {**self.headers, **(headers or {})}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        request = Request(url, data=data, headers=all_headers, method=method)
        try:
            response: http.client.HTTPResponse = self.opener.open(
                request, timeout=timeout or self.timeout
            )
        except HTTPError as error:
            with error:
                raise api_error(Answer(error.code, error.reason, error.read())) from None
        return response

    def request(self, method: str, path: str, json: Any = None, **params: Any) -> Any:
        try:
            with self.open(method, path, body=json, params=params) as response:
                body = response.read()
        except TRANSPORT_ERRORS as exc:
            raise self.unreachable(exc) from None
        return _json(body) if body else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, **{k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("POST", path, json=body)

    def health(self) -> bool:
        try:
            with self.open("GET", "/health", timeout=2.0) as response:
                return response.status == 200
        except (CliError, *TRANSPORT_ERRORS):
            return False

    def unreachable(self, exc: BaseException) -> CliError:
        return CliError(
            UNREACHABLE,
            f"cannot reach the API at {self.base_url}",
            f"{describe(exc)}. Is the stack up? Start it with `orchestrator up`, "
            "or point ORCHESTRATOR_API_URL at a running API.",
        )

    # --- things the commands share --------------------------------------------------------------

    def project(self, id_or_name: str) -> dict[str, Any]:
        project: dict[str, Any] = self.get(f"/projects/{quote(id_or_name, safe='')}")
        return project

    def task(self, task_id: str) -> dict[str, Any]:
        task: dict[str, Any] = self.get(f"/tasks/{quote(task_id_of(task_id), safe='')}")
        return task

    # --- the event stream -----------------------------------------------------------------------

    def stream_events(
        self, task_id: str, after: int, read_timeout: float
    ) -> Iterator[dict[str, Any]]:
        """One connection to ``GET /tasks/{id}/events`` as Server-Sent Events."""
        with self.open(
            "GET",
            f"/tasks/{task_id}/events",
            params={"after": after},
            headers={"Accept": "text/event-stream"},
            timeout=read_timeout,
        ) as response:
            yield from parse_sse(line.decode().rstrip("\r\n") for line in response)

    def follow(self, task_id: str, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Every event of the task, from the first, until it ends; reconnects after drops.

        Raises WaitTimeout at the deadline (``timeout`` seconds), CliError if the API is gone.
        """
        task_id = task_id_of(task_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        after, failures = 0, 0
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            read_timeout = 30.0 if remaining is None else max(0.1, min(30.0, remaining))
            try:
                for event in self.stream_events(task_id, after, read_timeout):
                    failures = 0
                    after = max(after, int(event.get("seq", after)))
                    yield event
                    if event.get("type") in TERMINAL_EVENTS:
                        return
            except TimeoutError:
                pass  # quiet for a while: check the task and the deadline, then listen again
            except TRANSPORT_ERRORS as exc:
                failures += 1
                if failures > STREAM_RETRIES:
                    raise self.unreachable(exc) from None
                _check_deadline(deadline)
                time.sleep(0.5)
                continue
            # The stream closed or went quiet without a terminal event: has the task ended?
            if self.task(task_id)["status"] in TERMINAL_STATUSES:
                yield from self.get(f"/tasks/{task_id}/events", after=after)
                return
            _check_deadline(deadline)
            time.sleep(0.2)


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise WaitTimeout


def parse_sse(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The ``task_event`` events of an SSE stream, decoded."""
    kind, data = "message", list[str]()
    for line in lines:
        if not line:
            if data and kind in ("task_event", "message"):
                yield json.loads("\n".join(data))
            kind, data = "message", []
            continue
        if line.startswith(":"):
            continue  # a comment: the server's keep-alive ping
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            kind = value
        elif field == "data":
            data.append(value)
    if data and kind in ("task_event", "message"):
        yield json.loads("\n".join(data))


def _field(issue: dict[str, Any]) -> str:
    return str(issue.get("field") or ".".join(map(str, issue.get("loc", []))))


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise CliError(
            FAILED,
            "the API answered with something that is not JSON",
            body[:200].decode(errors="replace"),
        ) from None


def api_error(answer: Answer) -> CliError:
    """The API's problem detail (RFC 9457) as a message and an exit code."""
    status = answer.status
    try:
        problem = answer.json()
    except ValueError:
        problem = {}
    if not isinstance(problem, dict):
        problem = {"detail": str(problem)}
    title = problem.get("title") or answer.reason or "error"
    detail = problem.get("detail")
    if not isinstance(detail, str):
        detail = json.dumps(detail) if detail else None
    errors = [e for e in problem.get("errors") or [] if isinstance(e, dict)]
    if errors:
        # One line per issue; the detail says the same on one line, so it gives way.
        detail = "\n".join(f"{_field(e)}: {e.get('message') or e.get('msg')}" for e in errors)
    if status == 401:
        detail = (
            f"{detail or 'no valid API key'}. The CLI uses ORCHESTRATOR_API_KEY, else the key "
            "`orchestrator up` writes to <home>/api_key."
        )
    code = _EXIT_BY_STATUS.get(status, FAILED)
    return CliError(
        code, f"{title} ({status})", detail, status=status, extra={"problem": problem or None}
    )
