"""Every timeout and retry policy the workflows give their activities, in one place.

A retry policy says what waiting can fix: a database or Redis that is away for a while, a worker
that crashed (its heartbeat stops and the activity runs elsewhere). What no retry can fix is an
``ApplicationError(non_retryable=True)`` raised by the activity, or a failure type named in
``non_retryable_error_types`` below.

Changing a value here changes no history: Temporal replays activity types and order, not their
options.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio.common import RetryPolicy

# --- short activities: a database row, a Redis key, a look-up ---------------------------------

QUICK = timedelta(seconds=30)
# Short activities of anything but the database (Redis, Temporal, the gateway, a container).
QUICK_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=10), maximum_attempts=10)
# Database activities: a database that is away for minutes is waited for, not failed on.
DB_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=20,
)
# What must reach a person (a reply to the chat) waits out a Redis restart rather than drop.
PUBLISH_TIMEOUT = timedelta(hours=1)
PUBLISH_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=10))

# --- Workers (containers) and agent turns ------------------------------------------------------

# Making a container may build its image first (minutes on a fresh machine) and may wait for a
# Worker slot (ORCHESTRATOR_MAX_WORKERS) as long as other tasks hold them.
CREATE_WORKER_TIMEOUT = timedelta(hours=24)
CREATE_WORKER_HEARTBEAT = timedelta(minutes=2)
CREATE_WORKER_RETRY = RetryPolicy(
    maximum_attempts=3,
    non_retryable_error_types=["BadWorkerInput", "NoGateway", "NoDatabase"],
)
# Work inside a Worker (an agent turn, a test run, a file written) plays again after a worker
# crash (its heartbeat stops), not forever; input no retry can fix fails at once.
TURN_RETRY = RetryPolicy(
    maximum_attempts=3,
    non_retryable_error_types=["BadWorkerInput", "WorkerNotFound", "BadSpec", "TaskNotFound"],
)
TURN_HEARTBEAT = timedelta(seconds=10)
# The command's own timeout ends it inside the Worker; the activity's is the backstop.
TURN_MARGIN = timedelta(seconds=60)
NODE_MARGIN = timedelta(seconds=120)
PREPARE_SESSION_RETRY = RetryPolicy(
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=10,
    non_retryable_error_types=["BadSettings"],
)

# --- engineering --------------------------------------------------------------------------------

# Git work on the host: a clone, a commit and push, a pull request.
GIT_TIMEOUT = timedelta(minutes=5)
SCAFFOLD_TIMEOUT = timedelta(minutes=5)
# Short, so a killed worker's scaffold is retried elsewhere within seconds.
SCAFFOLD_HEARTBEAT = timedelta(seconds=10)
SCAFFOLD_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=5,
)
FIND_REPOSITORY_RETRY = RetryPolicy(maximum_attempts=5)
# The repository sync: a batch of pull requests read from the forge (a request each) and
# recorded; its heartbeats tell a dead worker from a slow forge. A merge: one git merge or one
# GitHub call, then the record.
FORGE_SYNC_TIMEOUT = timedelta(minutes=5)
FORGE_HEARTBEAT = timedelta(seconds=30)
MERGE_TIMEOUT = timedelta(minutes=2)
# Waiting for a run another task or the scaffolder queue started.
WAIT_FOR_RUN_TIMEOUT = timedelta(hours=1)
# A task waiting for the project's scaffold hears its end by signal; should that signal be lost
# (it asked in the very moment the run closed), it reads the run's result after this long.
SCAFFOLD_SIGNAL_WAIT = timedelta(minutes=15)
WAIT_FOR_RUN_HEARTBEAT = timedelta(seconds=10)
WAIT_FOR_RUN_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=10))

# --- deploys and servers ------------------------------------------------------------------------

# Waiting for the project's other deploy may take as long as that deploy waits for secrets.
DEPLOY_LOCK_TIMEOUT = timedelta(days=30)
DEPLOY_LOCK_HEARTBEAT = timedelta(seconds=30)
# A playbook: its heartbeats (one per Ansible task) tell a dead worker from a slow apt-get.
PLAYBOOK_HEARTBEAT = timedelta(seconds=10)
STOP_TIMEOUT = timedelta(minutes=15)
STOP_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=30), maximum_attempts=5)
PROVISION_TIMEOUT = timedelta(minutes=15)
# A few spaced attempts, for what only crashes and lost workers make fail: a failed provisioning
# playbook is a report, not an error; a failed reaper run is tried again by the next scheduled one.
FEW_RETRIES = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=3,
)
# A server's health check: its probe's own timeout (infra/server_probe.py) and the recording.
SERVER_CHECK_TIMEOUT = timedelta(minutes=2)
# A check beats every second or so: a lost worker's check is taken up again within seconds (the
# next tick would come within a minute anyway).
CHECK_HEARTBEAT = timedelta(seconds=5)
# An app's: its health answer, and when it is down a look on its server, a restart and the
# wait for it to answer again (app_restart_wait_s).
APP_CHECK_TIMEOUT = timedelta(minutes=5)
# Beyond the playbook's own timeout, so Ansible stops first and says so.
RELEASE_MARGIN = timedelta(seconds=300)
RELEASE_RETRY = RetryPolicy(
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=5,
    non_retryable_error_types=["ReleaseFailed", "ServerNotFound", "VaultError"],
)
# The DevOps graph's nodes: the playbook of a killed worker is played again, not forever.
DEVOPS_RETRY = RetryPolicy(
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=5,
    non_retryable_error_types=["DeployFailed", "TaskNotFound", "ProjectNotFound"],
)
ANALYZE_TIMEOUT = timedelta(minutes=5)
PLACE_TIMEOUT = timedelta(seconds=60)
# The deploy waits for its Ansible run's signal in workflow code. Now and then it asks Temporal how
# the run is, for one that ended without a word (terminated) or that no bridge started (down):
# a timer and one quick activity every few minutes, whatever the playbook's length.
ANSIBLE_CHECK_INTERVAL = timedelta(minutes=5)
# A run no bridge started within this fails the deploy: the message waits on ansible:deploy:queue.
ANSIBLE_START_DEADLINE = timedelta(minutes=30)
HEALTH_TIMEOUT = timedelta(minutes=5)
NODE_HEARTBEAT = timedelta(seconds=30)

# --- the reaper ---------------------------------------------------------------------------------

# One describe per container: minutes only with very many of them.
REAP_WORKERS_TIMEOUT = timedelta(minutes=5)
# Removing big checkouts (node_modules) takes a while; the activity heartbeats meanwhile.
CLEAN_TIMEOUT = timedelta(minutes=30)
CLEAN_HEARTBEAT = timedelta(minutes=1)


# --- the LangGraph graphs' nodes (temporalio-langgraph metadata) -------------------------------

IN_WORKFLOW: dict[str, Any] = {"execute_in": "workflow"}


def in_activity(
    summary: str,
    timeout: timedelta,
    *,
    retry: RetryPolicy = QUICK_RETRY,
    heartbeat: timedelta | None = None,
    task_queue: str | None = None,
) -> dict[str, Any]:
    """A node the plugin runs as an activity, with its timeout, retries and heartbeat, on
    ``task_queue`` (a capability's queue: core/task_queues.py) or else the workflow's own."""
    metadata: dict[str, Any] = {
        "execute_in": "activity",
        "start_to_close_timeout": timeout,
        "retry_policy": retry,
        "summary": summary,
    }
    if heartbeat is not None:
        metadata["heartbeat_timeout"] = heartbeat
    if task_queue is not None:
        metadata["task_queue"] = task_queue
    return metadata
