"""Structured logs: one JSON object a line, with task_id, workflow_id and correlation_id."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import structlog
from temporalio import activity as temporal_activity
from temporalio import workflow as temporal_workflow

bind_context = structlog.contextvars.bind_contextvars
clear_context = structlog.contextvars.clear_contextvars
bound_context = structlog.contextvars.bound_contextvars


def _lift_temporal_context(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """Temporal's loggers put workflow and activity details in ``extra``; name them plainly."""
    event.pop("color_message", None)  # uvicorn's copy of the message with terminal colours
    for key in ("temporal_workflow", "temporal_activity"):
        details = event.pop(key, None)
        if isinstance(details, dict):
            event.setdefault("workflow_id", details.get("workflow_id"))
            event.setdefault("run_id", details.get("run_id"))
            if key == "temporal_activity":
                event.setdefault("activity", details.get("activity_type"))
            else:
                event.setdefault("workflow_type", details.get("workflow_type"))
    return event


def configure_logging(service: str, level: str = "INFO", log_dir: Path | None = None) -> None:
    """Send structlog and stdlib logging (uvicorn, temporalio) as JSON lines to one place."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _lift_temporal_context,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            lambda _, __, event: {"service": service, **event},
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler: logging.Handler
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_dir / f"{service}.log")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Workflow and activity details go into their own JSON fields, not into the message text.
    temporal_workflow.logger.workflow_info_on_message = False
    temporal_activity.logger.activity_info_on_message = False
    for name in ("uvicorn", "uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # A line per outgoing request (app health checks hundreds a minute) says nothing an error
    # would not: httpx speaks from WARNING up.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
