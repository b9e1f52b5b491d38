"""A thin client of the API: requests, the SSE event stream, and errors as exit codes.

Commands import it in their body, when they call the API: httpx and the settings are the bulk of
the CLI's start-up, which ``--help`` and argument errors do not pay.
"""

from __future__ import annotations

import json
import re
import ssl
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx

from cli.output import FAILED, NOT_FOUND, UNREACHABLE, USAGE, CliError
from core.enums import TERMINAL_EVENTS, TERMINAL_STATUSES
from core.settings import Settings

_EXIT_BY_STATUS = {400: USAGE, 401: FAILED, 403: FAILED, 404: NOT_FOUND, 409: FAILED, 422: USAGE}
_WORKFLOW_ID = re.compile(r"^(?:engineering|deploy)-([0-9a-f]{32})$")
# Reconnects of an event stream in a row before the API counts as gone.
STREAM_RETRIES = 20


def task_id_of(value: str) -> str:
    """Accept a task ID or its workflow ID (``engineering-<task id>``)."""
    match = _WORKFLOW_ID.match(value.strip())
    return match.group(1) if match else value.strip()


class WaitTimeout(Exception):
    pass


def tls(base_url: str) -> ssl.SSLContext | bool:
    """How the client checks the API's certificate: against the usual CA bundle. An http:// API
    (the embedded stack's) never asks for TLS, so its client gets a context that still verifies
    but trusts no CA, rather than loading the bundle at each start (~20 ms of a command's time).
    """
    if base_url.lower().startswith("http://"):
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    return True


class ApiClient:
    def __init__(self, settings: Settings | None = None, timeout: float = 30.0) -> None:
        self.settings = settings or Settings()
        self.base_url = self.settings.effective_api_url
        key = self.settings.read_api_key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, verify=tls(self.base_url)
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.http.close()

    # --- plain requests -------------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from None
        if response.is_error:
            raise api_error(response)
        if not response.content:
            return None
        return response.json()

    def get(self, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v is not None}
        return self.request("GET", path, params=clean)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("POST", path, json=body)

    def health(self) -> bool:
        try:
            return self.http.get("/health", timeout=2.0).status_code == 200
        except httpx.TransportError:
            return False

    def unreachable(self, exc: Exception) -> CliError:
        return CliError(
            UNREACHABLE,
            f"cannot reach the API at {self.base_url}",
            f"{type(exc).__name__}: {exc}. Is the stack up? Start it with `orchestrator up`, "
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
        timeout = httpx.Timeout(10.0, read=read_timeout)
        headers = {"Accept": "text/event-stream"}
        params = {"after": after}
        with self.http.stream(
            "GET", f"/tasks/{task_id}/events", params=params, headers=headers, timeout=timeout
        ) as response:
            if response.is_error:
                response.read()
                raise api_error(response)
            yield from parse_sse(response.iter_lines())

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
            except httpx.ReadTimeout:
                pass  # quiet for a while: check the task and the deadline, then listen again
            except httpx.TransportError as exc:
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


def api_error(response: httpx.Response) -> CliError:
    """The API's problem detail (RFC 9457) as a message and an exit code."""
    status = response.status_code
    try:
        problem = response.json()
    except ValueError:
        problem = {}
    if not isinstance(problem, dict):
        problem = {"detail": str(problem)}
    title = problem.get("title") or response.reason_phrase or "error"
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
