"""The stack's state file, and telling our processes from strangers that reused their PIDs.

The supervisor writes ``<home>/stack.json`` atomically whenever a child starts or stops; ``status``
and ``down`` read it. Each PID is stored with its process's start time, so a PID the kernel has
since given to another program is never signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from core.settings import Settings

STARTING = "starting"
READY = "ready"
STOPPING = "stopping"
FAILED = "failed"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_state(settings: Settings) -> dict[str, Any] | None:
    try:
        data = json.loads(settings.state_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def write_state(settings: Settings, state: dict[str, Any]) -> None:
    """Replace the file (0600) in one rename, so a reader never sees half of it."""
    path = settings.state_file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # Its owner's only, like the rest of the home (it names every log and the API key's file).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)


def remove_state(settings: Settings) -> None:
    settings.state_file.unlink(missing_ok=True)


def create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def alive(pid: int | None, started: float | None = None) -> bool:
    """True if ``pid`` runs and is the process that started at ``started`` (not a zombie)."""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if started is not None and abs(proc.create_time() - started) > 0.01:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def supervisor_alive(state: dict[str, Any] | None) -> bool:
    if not state:
        return False
    return alive(state.get("supervisor_pid"), state.get("supervisor_create_time"))


def is_up(state: dict[str, Any] | None) -> bool:
    """A live supervisor that is starting or running the stack."""
    return state is not None and supervisor_alive(state) and state.get("phase") in (STARTING, READY)


def owned_processes(state: dict[str, Any]) -> list[tuple[int, float | None, bool]]:
    """(pid, start time, is a process group leader) of the supervisor and every child."""
    procs: list[tuple[int, float | None, bool]] = []
    if state.get("supervisor_pid"):
        procs.append((state["supervisor_pid"], state.get("supervisor_create_time"), False))
    for service in state.get("services", []):
        if service.get("pid"):
            procs.append((service["pid"], service.get("create_time"), True))
    return procs


def signal_process(pid: int, started: float | None, sig: int, group: bool) -> None:
    """Signal one of ours (its whole process group for a child), never a stranger."""
    if not alive(pid, started):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def wait_gone(procs: list[tuple[int, float | None, bool]], timeout: float) -> list[int]:
    """Wait until none of ``procs`` is alive; return the PIDs still alive at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        left = [pid for pid, started, _ in procs if alive(pid, started)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def kill_leftovers(procs: list[tuple[int, float | None, bool]], timeout: float) -> list[int]:
    """SIGTERM, wait, then SIGKILL whatever is left; return the PIDs that needed SIGKILL."""
    for pid, started, group in procs:
        signal_process(pid, started, signal.SIGTERM, group)
    left = wait_gone(procs, timeout)
    for pid, started, group in procs:
        if pid in left:
            signal_process(pid, started, signal.SIGKILL, group)
    wait_gone(procs, 5)
    return left


def tail(path: Path | str, lines: int = 15) -> str:
    """The last lines of a log file, for an error message."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 16_384))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
