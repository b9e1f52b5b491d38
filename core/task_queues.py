"""The task queues of one deployment: the base queue every Temporal worker polls, and one queue
per capability that only hosts with that capability poll.

A host without a container engine cannot run a Worker's activities; a host without Ansible (or
without SSH to the servers) cannot run a playbook. Workflows run on the base queue
(``ORCHESTRATOR_TEMPORAL_TASK_QUEUE``) and send those activities to the capability's queue,
derived from the queue they run on; a host says what it can in
``ORCHESTRATOR_WORKER_CAPABILITIES`` and polls those queues besides the base one.
"""

from __future__ import annotations

from typing import Final, Literal

# The Worker containers: create, exec in (agent turns, tests, commits in the mounted workspace),
# remove, reap; the task workspaces and the model gateway sockets the containers mount.
CONTAINERS: Final = "containers"
# Playbooks against the deploy targets over SSH.
ANSIBLE: Final = "ansible"

Capability = Literal["containers", "ansible"]
CAPABILITIES: tuple[Capability, ...] = (CONTAINERS, ANSIBLE)


def capability_queue(base: str, capability: Capability) -> str:
    """The queue of ``capability``'s activities, beside the base queue ``base``."""
    return f"{base}-{capability}"


def containers_queue(base: str) -> str:
    return capability_queue(base, CONTAINERS)


def ansible_queue(base: str) -> str:
    return capability_queue(base, ANSIBLE)
