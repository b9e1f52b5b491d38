"""What a stand-in records of each request, and the script it follows."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request


@dataclass(frozen=True)
class FileWrite:
    """A file the scripted model asks the agent to create, relative to the agent's cwd."""

    path: str
    content: str


@dataclass
class ModelScript:
    """One tool round per command (in order: a shell command the agent runs, e.g. an install),
    then one per write, then a final text. Every reply reports the same usage, so a test can
    predict the totals: ``replies * input_tokens`` and ``replies * output_tokens``."""

    writes: list[FileWrite] = field(
        default_factory=lambda: [FileWrite("hello.txt", "hello from the stand-in\n")]
    )
    commands: list[str] = field(default_factory=list)
    final_text: str = "Created the file."
    input_tokens: int = 100
    output_tokens: int = 20
    # When set, every model call is refused with this HTTP status and message (a client error,
    # so the CLIs fail at once instead of retrying).
    error: tuple[int, str] | None = None


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any


class Recorder:
    """Thread-safe list of the requests a stand-in received (uvicorn runs in another thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []

    async def record(self, request: Request) -> RecordedRequest:
        raw = await request.body()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
        entry = RecordedRequest(
            method=request.method,
            path=request.url.path,
            query=request.url.query,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
        )
        with self._lock:
            self._requests.append(entry)
        return entry

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)


def strings(value: Any) -> Iterator[str]:
    """Every string inside a JSON value (to search prompts whatever their block layout)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"
