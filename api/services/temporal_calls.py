"""Temporal's answers to the API's calls, as the problems a client reads."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from api.problems import Conflict, ServiceUnavailable

# The workflow is closed or was never started.
NOT_RUNNING = (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION)


def temporal_unavailable(exc: RPCError) -> ServiceUnavailable:
    return ServiceUnavailable(f"Temporal refused the request: {exc.message}")


@contextlib.asynccontextmanager
async def delivering(
    workflow: str, what: str, *, within_s: float, not_running: str | None = None
) -> AsyncIterator[None]:
    """Around an update sent to ``workflow`` (words for a person, e.g. "task 1f2e"):

    - its validator or handler refused it: 409 with the workflow's reason;
    - the workflow is not running: 409 ``not_running`` (when given; else a 503);
    - any other refusal of Temporal: 503;
    - no worker took it within ``within_s`` seconds: 503.
    """
    try:
        async with asyncio.timeout(within_s):
            yield
    except WorkflowUpdateFailedError as exc:
        reason = getattr(exc.cause, "message", None) or str(exc.cause)
        raise Conflict(f"{workflow} did not take {what}: {reason}") from None
    except RPCError as exc:
        if not_running is not None and exc.status in NOT_RUNNING:
            raise Conflict(not_running) from None
        raise temporal_unavailable(exc) from exc
    except TimeoutError:
        raise ServiceUnavailable(
            f"{workflow} did not take {what} within {within_s:g}s; is a worker running?"
        ) from None
