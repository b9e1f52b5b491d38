"""A process's log lines as production writes them (JSON lines in a file), for part of a test."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog
from temporalio import activity as temporal_activity
from temporalio import workflow as temporal_workflow

from core.logging import configure_logging


@contextlib.contextmanager
def logs_to(log_dir: Path, service: str = "temporal-worker") -> Iterator[Path]:
    """Log as ``service`` does in production into ``<log_dir>/<service>.log`` until the block
    ends; yields the file. Afterwards logging is as the test session had it."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, structlog.get_config())
    saved_info = (
        temporal_workflow.logger.workflow_info_on_message,
        temporal_activity.logger.activity_info_on_message,
    )
    configure_logging(service, "DEBUG", log_dir)
    # No cached loggers: after the block, every logger goes back to the test session's set-up.
    structlog.configure(cache_logger_on_first_use=False)
    try:
        yield log_dir / f"{service}.log"
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], root.level = saved[0], saved[1]
        structlog.reset_defaults()
        structlog.configure(**saved[2])
        temporal_workflow.logger.workflow_info_on_message = saved_info[0]
        temporal_activity.logger.activity_info_on_message = saved_info[1]


def log_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines written so far (none when the file is not there yet)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
