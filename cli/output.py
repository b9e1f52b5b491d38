"""Two audiences, one command: rich text for people, exactly one JSON document for agents.

Every command takes ``--json``. With it, stdout holds one JSON object (or array) and nothing else:
the result, or ``{"error": {...}}`` when the command failed. Without it, people get tables and
colours. Exit codes mean the same in both modes.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
from collections.abc import Callable
from typing import Annotated, Any, NoReturn, TypeVar

import typer

OK = 0
FAILED = 1  # a failed task, or something not allowed
USAGE = 2
NOT_FOUND = 3
UNREACHABLE = 4

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON object on stdout, for programs and agents.")
]

F = TypeVar("F", bound=Callable[..., Any])


class CliError(Exception):
    """A failure to report as it is, with the exit code it means."""

    def __init__(
        self,
        exit_code: int,
        message: str,
        detail: str | None = None,
        *,
        status: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message
        self.detail = detail
        self.status = status
        self.extra = extra or {}

    def to_json(self) -> dict[str, Any]:
        error = {"exit_code": self.exit_code, "message": self.message, "detail": self.detail}
        if self.status is not None:
            error["status"] = self.status
        return {"error": {**error, **self.extra}}


class Output:
    def __init__(self, json_mode: bool) -> None:
        # Here, not at the top: the CLI builds its command tree without importing rich.
        from rich.console import Console

        self.json = json_mode
        # soft_wrap: long lines (URLs, IDs) stay whole, to be copied, whatever the width.
        self.console = Console(highlight=False, soft_wrap=True)
        # Progress notes go to stderr under --json, so stdout stays one JSON document.
        self.notes = (
            Console(stderr=True, highlight=False, soft_wrap=True) if json_mode else self.console
        )
        self.errors = Console(stderr=True, highlight=False, soft_wrap=True)

    def emit(self, data: Any, render: Callable[[], None] | None = None) -> None:
        """The command's result: JSON under --json, else ``render()`` (or the JSON, pretty)."""
        if self.json:
            sys.stdout.write(json.dumps(data, default=str) + "\n")
            sys.stdout.flush()
        elif render is not None:
            render()
        else:
            self.console.print_json(data=data, default=str)

    def say(self, message: str) -> None:
        """A note for people (stderr under --json)."""
        self.notes.print(message)

    def print(self, *items: Any) -> None:
        """Rich output for people only; nothing under --json."""
        if not self.json:
            self.console.print(*items)

    def fail(self, error: CliError) -> NoReturn:
        if self.json:
            sys.stdout.write(json.dumps(error.to_json(), default=str) + "\n")
            sys.stdout.flush()
        else:
            self.errors.print(f"[bold red]error:[/bold red] {escape(error.message)}")
            if error.detail:
                self.errors.print(escape(error.detail))
        raise typer.Exit(error.exit_code)


def cli_name() -> str:
    """How to call this CLI again: ``orchestrator`` when PATH finds this one, else its path."""
    invoked = sys.argv[0] if sys.argv else ""
    if os.path.basename(invoked) != "orchestrator" or "/" not in invoked:
        return "orchestrator"
    if shutil.which("orchestrator") == os.path.abspath(invoked):
        return "orchestrator"
    relative = os.path.relpath(invoked)
    return os.path.abspath(invoked) if relative.startswith("..") else relative


def escape(text: str) -> str:
    """Rich markup's ``escape``, imported when something is printed rather than at start."""
    from rich.markup import escape as escape_markup

    return escape_markup(text)


def command(app: typer.Typer, name: str | None = None, **options: Any) -> Callable[[F], F]:
    """Register a command whose ``CliError`` becomes its message and exit code.

    The command's ``json_output`` parameter (the ``--json`` flag) picks how the error is shown.
    """

    def register(func: F) -> F:
        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except CliError as error:
                Output(bool(kwargs.get("json_output"))).fail(error)

        app.command(name, **options)(run)
        return func

    return register
