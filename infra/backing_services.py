"""Backing services of a project's tests: what its manifest's ``backing_services`` names (a
PostgreSQL), each run beside the task's Worker in a sidecar that shares the Worker's network
namespace (infra/containers.py), so the tests reach it on 127.0.0.1 and nothing else does.

The test command learns where it is from its environment (``DATABASE_URL`` and
``TEST_DATABASE_URL`` for PostgreSQL). A sidecar is started once per Worker and found again by
later rounds (and by a retried activity); it goes when its Worker goes (ContainerRuntime.remove,
the reaper). Its image is built here from deploy/images/services/<name>/, never pulled.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from infra.containers import ContainerRuntime
from infra.errors import InfraError
from infra.images import TOOLS_DIR

# The service's image reference for a service name (built on first use, else a cache hit).
ImageFor = Callable[[str], Awaitable[str]]

# How long a sidecar may take from its start to accepting connections (initdb included).
READY_TIMEOUT_S = 60.0
LOG_TAIL_LINES = 40

# A literal password in the URL is fine: the database is a throwaway of one Worker's tests
# (made fresh in a tmpfs at each start, trust authentication on its loopback), reachable only
# from that Worker's network namespace; no secret of the user's is in it.
POSTGRES_USER = "test"
POSTGRES_PASSWORD = "test"
POSTGRES_DB = "test"
POSTGRES_URL = f"postgresql://{POSTGRES_USER}:{POSTGRES_PASSWORD}@127.0.0.1:5432/{POSTGRES_DB}"


@dataclass(frozen=True)
class ServiceSettings:
    """What a backing service's sidecar is given, and what the test command is told."""

    name: str
    sidecar_env: dict[str, str] = field(default_factory=dict)  # the sidecar's own settings
    test_env: dict[str, str] = field(default_factory=dict)  # what the test command is given


SERVICES = {
    "postgresql": ServiceSettings(
        name="postgresql",
        sidecar_env={
            "POSTGRES_USER": POSTGRES_USER,
            "POSTGRES_PASSWORD": POSTGRES_PASSWORD,
            "POSTGRES_DB": POSTGRES_DB,
        },
        test_env={"DATABASE_URL": POSTGRES_URL, "TEST_DATABASE_URL": POSTGRES_URL},
    ),
}


async def start_backing_services(
    runtime: ContainerRuntime, worker_id: str, services: Sequence[str], image_for: ImageFor
) -> dict[str, str]:
    """Start (or find) the Worker's sidecar of each service and wait until each is ready;
    returns the environment the test command gets. InfraError when one never becomes ready,
    with the end of its log."""
    env: dict[str, str] = {}
    for name in services:
        service = SERVICES[name]
        image = await image_for(name)
        await runtime.start_sidecar(worker_id, name, image, service.sidecar_env)
        await _wait_until_ready(runtime, worker_id, name)
        env.update(service.test_env)
    return env


async def _wait_until_ready(runtime: ContainerRuntime, worker_id: str, service: str) -> None:
    """The image's ``ready`` command waits, inside the sidecar, until the service accepts
    connections (bounded by READY_TIMEOUT_S)."""
    done = await runtime.exec_sidecar(
        worker_id,
        service,
        [f"{TOOLS_DIR}/ready", f"{READY_TIMEOUT_S:g}"],
        timeout=READY_TIMEOUT_S + 10,
    )
    if done.exit_code == 0:
        return
    said = (done.stdout + done.stderr).strip()[-500:]
    logs = (await runtime.sidecar_logs(worker_id, service, LOG_TAIL_LINES)).strip()
    raise InfraError(
        f"the test {service} of Worker {worker_id} is not ready (it has {READY_TIMEOUT_S:g} s "
        f"to accept connections): {said or f'exit {done.exit_code}'}; its log ends with:\n"
        f"{logs or '(nothing)'}",
        kind="BackingServiceNotReady",
    )
