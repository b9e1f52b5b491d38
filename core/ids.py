"""Deterministic workflow IDs: the API can name a run before any bridge has started it."""

from __future__ import annotations

import uuid


def new_id() -> str:
    return uuid.uuid4().hex


def engineering_workflow_id(task_id: str) -> str:
    return f"engineering-{task_id}"


def deploy_workflow_id(task_id: str) -> str:
    return f"deploy-{task_id}"


def scaffold_workflow_id(project_id: str) -> str:
    return f"scaffold-{project_id}"


def provision_workflow_id(server_handle: str) -> str:
    return f"provision-{server_handle}"


def ansible_deploy_workflow_id(request_id: str) -> str:
    return f"ansible-deploy-{request_id}"


def merge_workflow_id(pull_request_id: str) -> str:
    """The merge of one pull request: a second request while it runs joins it."""
    return f"merge-{pull_request_id}"


def turns_workflow_id(task_queue: str, pool: str) -> str:
    """A pool's run, on the task queue of the workers that share it (several orchestrators in
    one namespace keep their pools apart)."""
    return f"turns-{task_queue}-{pool}"


def worker_workflow_id(worker_id: str) -> str:
    return f"worker-{worker_id}"


def task_progress_stream(task_id: str) -> str:
    return f"task_progress:{task_id}"


def po_session_workflow_id(chat_id: int | str) -> str:
    return f"po-{chat_id}"


def chat_stream(chat_id: int | str) -> str:
    """The Redis stream of what goes to one Telegram chat: the PO's replies and notes, and the
    progress events of the tasks started from that chat (their ``callback_stream``)."""
    return f"telegram:chat:{chat_id}"


def chat_id_of_stream(stream: str) -> int | None:
    """The chat a :func:`chat_stream` name belongs to; None for any other stream."""
    prefix, _, rest = stream.rpartition(":")
    if prefix != "telegram:chat":
        return None
    try:
        return int(rest)
    except ValueError:
        return None
