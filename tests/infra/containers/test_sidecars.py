"""A Worker's test PostgreSQL on a real container service: a sidecar in the Worker's network
namespace, reachable from that Worker alone, locked down, found again, removed with its Worker
and by the reaper. The image is the real one (deploy/images/services/postgresql), built here."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import docker
import pytest
import pytest_asyncio

from core.settings import Settings
from infra.backing_services import POSTGRES_URL, start_backing_services
from infra.containers import (
    SERVICE,
    WORKER_ID,
    WORKFLOW_ID,
    ContainerRuntime,
    WorkerNotFound,
    WorkerSpec,
    container_name,
    sidecar_name,
)
from infra.errors import InfraError
from testing.postgres_probe import PROBE

MakeWorker = Callable[..., Awaitable[WorkerSpec]]


@pytest.fixture
def runtime(docker_client: docker.DockerClient) -> ContainerRuntime:
    settings = Settings(worker_memory="256m", worker_cpus=1, worker_pids=128)
    return ContainerRuntime(docker_client, settings)


@pytest_asyncio.fixture
async def make_worker(
    runtime: ContainerRuntime, scripted_image: str, tmp_path: Path
) -> AsyncIterator[MakeWorker]:
    """Workers (of an image with python3) with the probe in their workspace; each removed,
    sidecars and all, after the test."""
    made: list[str] = []

    async def make(workflow_id: str | None = None) -> WorkerSpec:
        worker_id = uuid.uuid4().hex[:12]
        workspace = tmp_path / worker_id
        workspace.mkdir()
        (workspace / "probe.py").write_text(PROBE)
        spec = WorkerSpec(
            image=scripted_image,
            worker_id=worker_id,
            task_id=f"task-{worker_id}",
            workflow_id=workflow_id or f"engineering-{worker_id}",
            workspace=workspace,
        )
        made.append(worker_id)
        await runtime.create_worker(spec)
        return spec

    yield make
    for worker_id in made:
        await runtime.remove(worker_id)


def image_of(reference: str) -> Callable[[str], Awaitable[str]]:
    async def image_for(service: str) -> str:
        assert service == "postgresql"
        return reference

    return image_for


async def query(runtime: ContainerRuntime, worker_id: str, sql: str) -> tuple[int, str]:
    done = await runtime.exec(
        worker_id, ["python3", "probe.py", sql], env={"DATABASE_URL": POSTGRES_URL}, timeout=60
    )
    return done.exit_code, (done.stdout + done.stderr).strip()


def containers_of(docker_client: docker.DockerClient, worker_id: str) -> list[str]:
    found = docker_client.api.containers(all=True, filters={"label": f"{WORKER_ID}={worker_id}"})
    return sorted(name.lstrip("/") for entry in found for name in entry["Names"])


async def test_the_worker_reaches_its_postgresql_and_another_worker_does_not(
    runtime: ContainerRuntime,
    make_worker: MakeWorker,
    postgresql_image: str,
    docker_client: docker.DockerClient,
) -> None:
    spec, other = await make_worker(), await make_worker()
    env = await start_backing_services(
        runtime, spec.worker_id, ["postgresql"], image_of(postgresql_image)
    )
    assert env == {"DATABASE_URL": POSTGRES_URL, "TEST_DATABASE_URL": POSTGRES_URL}
    assert POSTGRES_URL.startswith("postgresql://test:test@127.0.0.1:5432/")

    code, out = await query(
        runtime,
        spec.worker_id,
        "CREATE TABLE notes (body text); INSERT INTO notes VALUES ('hello');"
        " SELECT current_user, current_database(), body FROM notes",
    )
    assert (code, out) == (0, "test|test|hello")
    # The other Worker's loopback has nothing on 5432: the database is its Worker's alone.
    code, out = await query(runtime, other.worker_id, "SELECT 1")
    assert code != 0 and "cannot connect to 127.0.0.1:5432" in out, out

    # A second start (the next round, a retried activity) finds the same database, data kept.
    first = docker_client.containers.get(sidecar_name(spec.worker_id, "postgresql")).id
    await start_backing_services(
        runtime, spec.worker_id, ["postgresql"], image_of(postgresql_image)
    )
    assert docker_client.containers.get(sidecar_name(spec.worker_id, "postgresql")).id == first
    assert await query(runtime, spec.worker_id, "SELECT count(*) FROM notes") == (0, "1")
    # The sidecar is no Worker of its own in the list, and it goes with its Worker.
    assert [w.worker_id for w in await runtime.list_workers()].count(spec.worker_id) == 1
    assert await runtime.list_sidecars(spec.worker_id) == ["postgresql"]
    assert await runtime.remove(spec.worker_id)
    assert containers_of(docker_client, spec.worker_id) == []
    assert await runtime.list_sidecars(spec.worker_id) == []


async def test_the_sidecar_is_locked_down_in_its_worker_s_namespace(
    runtime: ContainerRuntime,
    make_worker: MakeWorker,
    postgresql_image: str,
    docker_client: docker.DockerClient,
) -> None:
    spec = await make_worker()
    await start_backing_services(
        runtime, spec.worker_id, ["postgresql"], image_of(postgresql_image)
    )
    worker = docker_client.containers.get(container_name(spec.worker_id))
    sidecar = docker_client.containers.get(sidecar_name(spec.worker_id, "postgresql"))
    host = sidecar.attrs["HostConfig"]
    assert worker.attrs["HostConfig"]["NetworkMode"] == "none"
    assert host["NetworkMode"] == f"container:{worker.id}"
    assert host["ReadonlyRootfs"] is True
    dropped = {cap.removeprefix("CAP_") for cap in host["CapDrop"]}
    assert "ALL" in dropped or {"CHOWN", "DAC_OVERRIDE", "SETUID", "SETGID", "KILL"} <= dropped
    assert not host.get("CapAdd")
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["Memory"] > 0 and host["PidsLimit"] > 0
    assert sidecar.attrs["Config"]["User"] == "postgres"
    labels = sidecar.labels
    assert labels[WORKER_ID] == spec.worker_id and labels[WORKFLOW_ID] == spec.workflow_id
    assert labels[SERVICE] == "postgresql"
    # Its server listens on loopback alone: nothing but lo is there to listen on.
    interfaces = sidecar.exec_run(["cat", "/proc/net/dev"]).output.decode()
    names = {line.split(":")[0].strip() for line in interfaces.splitlines()[2:]}
    assert names == {"lo"}, interfaces


async def test_the_reaper_removes_sidecars_of_closed_workflows(
    runtime: ContainerRuntime,
    make_worker: MakeWorker,
    postgresql_image: str,
    docker_client: docker.DockerClient,
) -> None:
    closed, running = await make_worker(), await make_worker()
    for spec in (closed, running):
        await start_backing_services(
            runtime, spec.worker_id, ["postgresql"], image_of(postgresql_image)
        )

    async def is_open(workflow_id: str) -> bool:
        return workflow_id != closed.workflow_id and workflow_id.startswith("engineering-")

    removed = await runtime.reap(is_open)
    assert closed.worker_id in removed and running.worker_id not in removed
    assert containers_of(docker_client, closed.worker_id) == []
    assert containers_of(docker_client, running.worker_id) == sorted(
        [container_name(running.worker_id), sidecar_name(running.worker_id, "postgresql")]
    )


async def test_a_sidecar_that_never_gets_ready_says_why_with_its_log(
    runtime: ContainerRuntime,
    make_worker: MakeWorker,
    postgresql_image: str,
) -> None:
    spec = await make_worker()
    # A role name initdb refuses: the service's start fails before it listens.
    await runtime.start_sidecar(
        spec.worker_id, "postgresql", postgresql_image, {"POSTGRES_USER": "pg_test"}
    )
    with pytest.raises(
        InfraError, match=r"(?s)postgresql .* is not ready .*its log ends with"
    ) as e:
        await start_backing_services(
            runtime, spec.worker_id, ["postgresql"], image_of(postgresql_image)
        )
    assert e.value.kind == "BackingServiceNotReady"
    assert 'role names cannot begin with "pg_"' in str(e.value), str(e.value)


async def test_a_sidecar_needs_its_worker(runtime: ContainerRuntime, postgresql_image: str) -> None:
    with pytest.raises(WorkerNotFound):
        await runtime.start_sidecar("no-such-worker", "postgresql", postgresql_image)


async def test_a_worker_started_again_gets_a_sidecar_in_its_new_namespace(
    runtime: ContainerRuntime,
    make_worker: MakeWorker,
    postgresql_image: str,
    docker_client: docker.DockerClient,
) -> None:
    spec = await make_worker()
    await start_backing_services(
        runtime, spec.worker_id, ["postgresql"], image_of(postgresql_image)
    )
    # `orchestrator down` stops the Worker; its next use starts it with a new network namespace,
    # which the old sidecar (still running) is not in.
    docker_client.containers.get(container_name(spec.worker_id)).stop(timeout=1)
    await start_backing_services(
        runtime, spec.worker_id, ["postgresql"], image_of(postgresql_image)
    )
    assert await query(runtime, spec.worker_id, "SELECT 'reached'") == (0, "reached")
