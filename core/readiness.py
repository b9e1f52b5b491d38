"""How a service tells its supervisor it is ready: a file ``<home>/run/<service>.ready``.

The file holds the PID, so a stale file from a dead process is not mistaken for readiness.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.settings import Settings


def ready_file(settings: Settings, service: str) -> Path:
    return settings.home_dir / "run" / f"{service}.ready"


def mark_ready(settings: Settings, service: str) -> None:
    path = ready_file(settings, service)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(os.getpid()))


def clear_ready(settings: Settings, service: str) -> None:
    ready_file(settings, service).unlink(missing_ok=True)


def is_ready(settings: Settings, service: str, pid: int) -> bool:
    try:
        return ready_file(settings, service).read_text().strip() == str(pid)
    except FileNotFoundError:
        return False
