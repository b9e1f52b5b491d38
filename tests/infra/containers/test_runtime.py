"""ContainerRuntime on a real container service: locked-down Workers, execs, files, the reaper."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import docker
import pytest
import pytest_asyncio

from core.settings import Settings
from infra.agents.base import AgentFile
from infra.containers import ContainerRuntime, Mount, WorkerNotFound, WorkerSpec, container_name
from infra.workers import run_tests, write_agent_files

MiB = 1024 * 1024
MakeWorker = Callable[..., Awaitable[WorkerSpec]]


@pytest.fixture
def runtime(docker_client: docker.DockerClient) -> ContainerRuntime:
    settings = Settings(
        worker_memory="256m", worker_cpus=0.5, worker_pids=64, worker_user="1000:1000"
    )
    return ContainerRuntime(docker_client, settings)


@pytest_asyncio.fixture
async def make_worker(
    runtime: ContainerRuntime, tiny: str, tmp_path: Path
) -> AsyncIterator[MakeWorker]:
    """Create Workers for one test; all of them are removed after it."""
    made: list[str] = []

    async def make(workflow_id: str | None = None, **fields: object) -> WorkerSpec:
        worker_id = uuid.uuid4().hex[:12]
        workspace = tmp_path / f"workspace-{worker_id}"
        workspace.mkdir()
        spec = WorkerSpec.model_validate(
            {
                "image": tiny,
                "worker_id": worker_id,
                "task_id": f"task-{worker_id}",
                "workflow_id": workflow_id or f"engineering-{worker_id}",
                "workspace": workspace,
                **fields,
            }
        )
        made.append(worker_id)
        await runtime.create_worker(spec)
        return spec

    yield make
    for worker_id in made:
        await runtime.remove(worker_id)


def status_fields(text: str) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


async def test_a_worker_is_locked_down(
    runtime: ContainerRuntime, make_worker: MakeWorker, docker_client: docker.DockerClient
) -> None:
    spec = await make_worker()
    attrs = docker_client.containers.get(container_name(spec.worker_id)).attrs
    host = attrs["HostConfig"]
    assert host["NetworkMode"] == "none"
    # Docker reports ["ALL"]; podman lists each capability it dropped from its defaults.
    dropped = {cap.removeprefix("CAP_") for cap in host["CapDrop"]}
    assert "ALL" in dropped or {"CHOWN", "DAC_OVERRIDE", "SETUID", "SETGID", "KILL"} <= dropped
    assert not host.get("CapAdd")
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["Memory"] == 256 * MiB
    assert host["PidsLimit"] == 64
    assert host["NanoCpus"] == 500_000_000
    assert attrs["Config"]["User"] == "1000:1000"
    assert attrs["Config"]["Labels"]["orchestrator.managed"] == "true"
    assert attrs["Config"]["Labels"]["orchestrator.task_id"] == spec.task_id
    assert attrs["Config"]["Labels"]["orchestrator.workflow_id"] == spec.workflow_id

    # What the process inside really gets, whatever the inspect output says.
    proc = await runtime.exec(spec.worker_id, ["cat", "/proc/self/status"])
    assert proc.exit_code == 0, proc.stderr
    status = status_fields(proc.stdout)
    assert status["Uid"].split()[0] == "1000"
    assert status["CapEff"] == status["CapPrm"] == status["CapBnd"] == "0000000000000000"
    assert status["NoNewPrivs"] == "1"
    devices = await runtime.exec(spec.worker_id, ["cat", "/proc/net/dev"])
    interfaces = [line.split(":")[0].strip() for line in devices.stdout.splitlines()[2:]]
    assert interfaces == ["lo"]


async def test_a_worker_cannot_reach_the_network_nor_pass_its_memory_limit(
    runtime: ContainerRuntime, make_worker: MakeWorker, scripted_image: str
) -> None:
    spec = await make_worker(image=scripted_image)  # python3 inside
    # Any address, even the host's loopback services: the Worker has only its own `lo`.
    probe = (
        "import socket\n"
        "for host, port in [('1.1.1.1', 443), ('10.0.2.2', 80), ('172.17.0.1', 80)]:\n"
        "    try:\n"
        "        socket.create_connection((host, port), timeout=3)\n"
        "        print('reached', host)\n"
        "    except OSError as exc:\n"
        "        print('unreachable', host, exc.errno)\n"
    )
    net = await runtime.exec(spec.worker_id, ["python3", "-c", probe], timeout=30)
    assert net.exit_code == 0, net.stderr
    assert "reached" not in net.stdout.split()
    assert net.stdout.count("unreachable") == 3
    # 256 MiB is the limit: holding 400 MiB gets the process killed (or refused), never granted.
    hog = (
        "b = bytearray(400 * 1024 * 1024)\n"
        "for i in range(0, len(b), 4096): b[i] = 1\n"
        "print('got it')"
    )
    memory = await runtime.exec(spec.worker_id, ["python3", "-c", hog], timeout=60)
    assert "got it" not in memory.stdout
    assert memory.exit_code != 0
    alive = await runtime.exec(spec.worker_id, ["true"], timeout=30)
    assert alive.exit_code == 0  # the Worker itself survives its process's excess


async def test_exec_returns_output_and_exit_code_and_streams_lines(
    runtime: ContainerRuntime, make_worker: MakeWorker
) -> None:
    spec = await make_worker()
    lines: list[tuple[str, str]] = []
    result = await runtime.exec(
        spec.worker_id,
        ["sh", "-c", 'echo one; echo two >&2; echo "$GREETING from $(pwd)"; printf tail; exit 3'],
        env={"GREETING": "hello"},
        on_line=lambda stream, line: lines.append((stream, line)),
    )
    assert result.exit_code == 3
    assert result.stdout == "one\nhello from /workspace\ntail"
    assert result.stderr == "two\n"
    assert not result.timed_out
    assert [line for line in lines if line[0] == "stdout"] == [
        ("stdout", "one"),
        ("stdout", "hello from /workspace"),
        ("stdout", "tail"),
    ]
    assert [line for line in lines if line[0] == "stderr"] == [("stderr", "two")]

    elsewhere = await runtime.exec(spec.worker_id, ["pwd"], workdir="/tmp")
    assert elsewhere.stdout == "/tmp\n"
    missing = await runtime.exec(spec.worker_id, ["sh", "-c", "exec no-such-command"])
    assert missing.exit_code == 127


async def test_a_command_past_its_timeout_is_killed_and_its_lines_came_while_it_ran(
    runtime: ContainerRuntime, make_worker: MakeWorker
) -> None:
    spec = await make_worker()
    seen: list[float] = []
    started = time.monotonic()
    result = await runtime.exec(
        spec.worker_id,
        ["sh", "-c", "echo started; sleep 60"],
        timeout=1,
        on_line=lambda _stream, _line: seen.append(time.monotonic()),
    )
    ended = time.monotonic()
    assert result.timed_out
    assert result.exit_code == 124
    assert result.stdout == "started\n"
    assert ended - started < 10
    assert len(seen) == 1 and seen[0] - started < 1  # streamed, not handed over at the end
    again = await runtime.exec(spec.worker_id, ["cat", "/proc/self/status"])
    assert again.exit_code == 0  # the Worker itself lives on


async def test_the_testers_command_past_its_limit_leaves_no_process_behind(
    runtime: ContainerRuntime, make_worker: MakeWorker
) -> None:
    """The test command runs as a child of the Tester's script, which reads its JUnit XML in the
    same exec: a timeout still ends it and what it started."""
    spec = await make_worker()
    assert spec.workspace is not None
    manifest = "test:\n  command: 'sleep 300 & sleep 301'\n  junit: report.xml\n"
    (spec.workspace / ".orchestrator.yml").write_text(manifest)
    started = time.monotonic()
    report = await run_tests(runtime, spec.worker_id, timeout_s=2)
    assert report.summary == "the tests ran past their 2 s limit"
    assert time.monotonic() - started < 15
    left = await runtime.exec(spec.worker_id, ["sh", "-c", "cat /proc/[0-9]*/cmdline"])
    assert "sleep\x00infinity" in left.stdout  # the Worker's main process: the list is whole
    assert "sleep\x00300" not in left.stdout and "sleep\x00301" not in left.stdout


async def test_an_exclusive_command_ends_the_earlier_one_still_running(
    runtime: ContainerRuntime, make_worker: MakeWorker
) -> None:
    """A turn whose caller died (its worker was killed) must not edit alongside the next one."""
    spec = await make_worker()
    started: asyncio.Event = asyncio.Event()
    orphan = asyncio.create_task(
        runtime.exec(
            spec.worker_id,
            ["sh", "-c", "echo running; sleep 60; echo finished"],
            timeout=120,
            exclusive="turn",
            on_line=lambda _stream, _line: started.set(),
        )
    )
    await asyncio.wait_for(started.wait(), 30)
    begun = time.monotonic()
    second = await runtime.exec(
        spec.worker_id, ["sh", "-c", "echo second"], timeout=30, exclusive="turn"
    )
    assert second.stdout == "second\n", (second.exit_code, second.stderr)
    first = await asyncio.wait_for(orphan, 30)
    assert time.monotonic() - begun < 10
    assert first.stdout == "running\n"  # ended before it could finish
    assert first.exit_code != 0
    # Another kind of command is left alone.
    other = await runtime.exec(
        spec.worker_id, ["sh", "-c", "echo tests"], timeout=30, exclusive="tests"
    )
    assert other.exit_code == 0


async def test_put_file_writes_into_the_worker(
    runtime: ContainerRuntime, make_worker: MakeWorker
) -> None:
    spec = await make_worker()
    assert spec.workspace is not None
    await runtime.put_file(spec.worker_id, "/tmp/run.sh", b"#!/bin/sh\necho ran $1\n", 0o755)
    ran = await runtime.exec(spec.worker_id, ["/tmp/run.sh", "it"])
    assert (ran.exit_code, ran.stdout) == (0, "ran it\n")
    await runtime.put_file(spec.worker_id, "notes.txt", b"relative to the workspace")
    assert (spec.workspace / "notes.txt").read_bytes() == b"relative to the workspace"
    appended = await runtime.exec(spec.worker_id, ["sh", "-c", "echo ! >> notes.txt"])
    assert appended.exit_code == 0, appended.stderr  # the file is the Worker user's


async def test_an_agents_files_go_in_one_archive_with_directories_its_user_can_write(
    runtime: ContainerRuntime, make_worker: MakeWorker
) -> None:
    spec = await make_worker()
    home = "/tmp/agent-home"
    files = [
        AgentFile(path=f"{home}/.tool/settings.json", content="{}", mode=0o600),
        AgentFile(path=f"{home}/run/deep/script.json", content="[1]"),
        AgentFile(path="notes/outside.txt", content="in the workspace"),
    ]
    await write_agent_files(runtime, spec.worker_id, files, home)
    # The agent (the Worker's user) writes in every directory made for it, its home included.
    wrote = await runtime.exec(
        spec.worker_id,
        [
            "sh",
            "-c",
            f"cat {home}/.tool/settings.json {home}/run/deep/script.json && "
            f"echo x > {home}/own && echo y > {home}/run/deep/own && echo z > {home}/.tool/own",
        ],
    )
    assert (wrote.exit_code, wrote.stdout) == (0, "{}[1]"), wrote.stderr
    assert spec.workspace is not None
    assert (spec.workspace / "notes" / "outside.txt").read_text() == "in the workspace"
    # Written again (the next round), what the agent added there stays.
    await write_agent_files(runtime, spec.worker_id, files[:1], home)
    kept = await runtime.exec(spec.worker_id, ["cat", f"{home}/own", f"{home}/.tool/own"])
    assert (kept.exit_code, kept.stdout) == (0, "x\nz\n"), kept.stderr


async def test_the_workspace_and_mounts_are_shared_with_the_host(
    runtime: ContainerRuntime, make_worker: MakeWorker, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "given.txt").write_text("from the host\n")
    spec = await make_worker(mounts=[Mount(source=shared, target="/run/shared")])
    assert spec.workspace is not None

    wrote = await runtime.exec(
        spec.worker_id, ["sh", "-c", "mkdir src && cat /run/shared/given.txt > src/copied.txt"]
    )
    assert wrote.exit_code == 0, wrote.stderr
    assert (spec.workspace / "src" / "copied.txt").read_text() == "from the host\n"
    # Extra mounts are read-only unless asked otherwise.
    denied = await runtime.exec(spec.worker_id, ["sh", "-c", "echo x > /run/shared/new.txt"])
    assert denied.exit_code != 0
    assert not (shared / "new.txt").exists()


async def test_creating_again_returns_the_same_worker_even_once_it_stopped(
    runtime: ContainerRuntime, make_worker: MakeWorker, docker_client: docker.DockerClient
) -> None:
    spec = await make_worker()
    first = await runtime.create_worker(spec)
    assert await runtime.create_worker(spec) == first
    mine = [w for w in await runtime.list_workers() if w.worker_id == spec.worker_id]
    assert len(mine) == 1
    assert (mine[0].task_id, mine[0].workflow_id, mine[0].status) == (
        spec.task_id,
        spec.workflow_id,
        "running",
    )

    # `orchestrator down` stops Workers; the next exec starts it again.
    docker_client.containers.get(first).stop(timeout=1)
    result = await runtime.exec(spec.worker_id, ["cat", "/proc/self/status"])
    assert result.exit_code == 0


async def test_remove_is_idempotent(runtime: ContainerRuntime, make_worker: MakeWorker) -> None:
    spec = await make_worker()
    assert await runtime.remove(spec.worker_id) is True
    assert await runtime.remove(spec.worker_id) is False
    assert spec.worker_id not in {w.worker_id for w in await runtime.list_workers()}
    with pytest.raises(WorkerNotFound):
        await runtime.exec(spec.worker_id, ["true"])


async def test_the_reaper_removes_only_workers_of_closed_workflows(
    runtime: ContainerRuntime, make_worker: MakeWorker
) -> None:
    closed_a = await make_worker(workflow_id=f"closed-{uuid.uuid4().hex[:8]}")
    closed_b = await make_worker(workflow_id=f"closed-{uuid.uuid4().hex[:8]}")
    still_open = await make_worker()
    closed = {closed_a.workflow_id, closed_b.workflow_id}
    asked: list[str] = []

    async def is_workflow_open(workflow_id: str) -> bool:
        asked.append(workflow_id)
        # Workers of other test sessions on the same service are not this test's to judge.
        return workflow_id not in closed

    removed = await runtime.reap(is_workflow_open)
    assert sorted(removed) == sorted([closed_a.worker_id, closed_b.worker_id])
    assert still_open.workflow_id in asked
    left = {w.worker_id for w in await runtime.list_workers()}
    assert still_open.worker_id in left
    assert not left & {closed_a.worker_id, closed_b.worker_id}
    assert await runtime.reap(is_workflow_open) == []


async def test_the_reaper_leaves_workers_of_another_stack_alone(
    docker_client: docker.DockerClient, make_worker: MakeWorker
) -> None:
    """Two stacks on one container service: each judges only the Workers of its own Temporal."""
    mine = await make_worker(workflow_id=f"closed-{uuid.uuid4().hex[:8]}")
    other_stack = ContainerRuntime(
        docker_client, Settings(temporal_address="127.0.0.1:1", worker_memory="256m")
    )

    async def nothing_is_open(_workflow_id: str) -> bool:
        return False

    assert mine.worker_id not in await other_stack.reap(nothing_is_open)
    assert mine.worker_id in {w.worker_id for w in await other_stack.list_workers()}


def test_worker_ids_are_container_name_safe() -> None:
    with pytest.raises(ValueError):
        WorkerSpec(image="x", worker_id="../etc", task_id="t", workflow_id="w")
    assert os.sep not in container_name("abc-1.2_3")
