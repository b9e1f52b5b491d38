"""Failures of the integrations, with what a retry can do about them.

Infrastructure code knows nothing of Temporal: it raises :class:`InfraError` (or a subclass) saying
whether trying again can help and when; the activity that called it turns that into the Temporal
failure (``activities.infra_failures``), so a workflow retries only what waiting can fix.
"""

from __future__ import annotations


class InfraError(Exception):
    """A failure reported by an integration.

    ``kind`` names it (the failure's type in Temporal, which workflows' retry policies match);
    ``retryable`` says whether a retry can succeed; ``retry_after`` how many seconds to wait first,
    when the other side said so.
    """

    retryable: bool = True

    def __init__(
        self,
        message: str,
        *,
        kind: str | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind or type(self).__name__
        if retryable is not None:
            self.retryable = retryable
        self.retry_after = retry_after


def refused(message: str, kind: str) -> InfraError:
    """A request that stays wrong however often it is retried."""
    return InfraError(message, kind=kind, retryable=False)
