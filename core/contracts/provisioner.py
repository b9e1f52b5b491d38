"""``provisioner:queue``: bootstrap a server; the result lands on a Redis key for an hour."""

from __future__ import annotations

from core.contracts.base import Envelope, Strict

PROVISIONER_QUEUE = "provisioner:queue"
PROVISIONER_RESULT_TTL_SECONDS = 3600


class ProvisionerMessage(Envelope):
    server_handle: str
    force_reinstall: bool = False
    is_recovery: bool = False


class ProvisionerResult(Strict):
    request_id: str
    server_handle: str
    success: bool
    status: str
    error: str | None = None


def provisioner_result_key(request_id: str) -> str:
    return f"provisioner:result:{request_id}"
