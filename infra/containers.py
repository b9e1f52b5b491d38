"""Workers: the containers agents run in, created and driven through the Docker API.

:class:`ContainerRuntime` is the one place that talks to containers. Every Worker is locked down
the same way (no network, no capabilities, no privilege gain, memory / CPU / process limits, a
non-root user) and labelled with its task and workflow, so a reaper can remove the Workers of
closed workflows. Creating is idempotent by name: a retried activity gets the same container.

A Worker may have **sidecars**: a backing service its tests use (a PostgreSQL), in a container
that joins the Worker's network namespace (``network_mode=container:<Worker>``), so the two
share the Worker's loopback and nothing else reaches the service. A sidecar is locked down like
its Worker and carries the Worker's labels plus ``orchestrator.service``: removing a Worker
removes its sidecars first, and the reaper judges a sidecar by its Worker's workflow even when
the Worker itself is already gone.

The docker SDK blocks, so each public method is async and runs it in a thread.
"""

from __future__ import annotations

import asyncio
import codecs
import io
import os
import re
import tarfile
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container
from pydantic import BaseModel, Field

from core.logging import get_logger
from core.settings import Settings

log = get_logger("infra.containers")

MANAGED = "orchestrator.managed"
WORKER_ID = "orchestrator.worker_id"
TASK_ID = "orchestrator.task_id"
WORKFLOW_ID = "orchestrator.workflow_id"
# The Temporal (address and namespace) whose workflows own the Worker: a reaper judges only its
# own stack's Workers when several stacks share one container service.
STACK = "orchestrator.stack"
# On a Worker's sidecar: the backing service it runs (its other labels are its Worker's).
SERVICE = "orchestrator.service"
# A sidecar's limits: a test database of small projects. Its data lives in a tmpfs of the size
# given here, which its memory limit also counts.
SIDECAR_MEMORY = "768m"
SIDECAR_TMPFS = "512m"
SIDECAR_PIDS = 128

# `timeout` (coreutils) ends a command that runs too long: the Docker API cannot kill an exec.
TIMED_OUT_CODES = (124, 137)
KILL_AFTER = 5  # seconds between SIGTERM and SIGKILL on a timeout
# The guard of an exclusive exec: `timeout` leads its own process group, so the pid file names a
# group; an earlier group still alive gets SIGTERM, up to 5 s, then SIGKILL. (dash: no `kill --`.)
_EXCLUSIVE = """f="$1"; shift
if [ -s "$f" ]; then
  old=$(cat "$f")
  if [ "$old" -gt 1 ] 2>/dev/null && kill -0 "$old" 2>/dev/null; then
    kill -TERM -"$old" 2>/dev/null
    i=0
    while kill -0 "$old" 2>/dev/null && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i+1)); done
    kill -KILL -"$old" 2>/dev/null
  fi
fi
echo $$ > "$f"
exec "$@"
"""

OnLine = Callable[[str, str], Any]  # (stream: "stdout" | "stderr", line without its newline)


def vanishing(exc: docker.errors.APIError) -> bool:
    """Podman's 500 about a container it is removing right now ("does not exist in database",
    "getting container from store ...: container not known"): as good as a 404."""
    text = str(exc)
    return "does not exist" in text or "container not known" in text


class Mount(BaseModel):
    """A host path seen inside the Worker (e.g. the directory of a Unix socket it talks to)."""

    source: Path
    target: str
    read_only: bool = True
    # The directory itself is given to the Worker's user (not what it holds: the Worker made
    # that), so a writable mount of a directory the host made is the Worker's to write.
    worker_owns: bool = False


class WorkerSpec(BaseModel):
    image: str
    worker_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    task_id: str
    workflow_id: str
    workspace: Path | None = Field(
        default=None, description="Host directory mounted read-write at /workspace"
    )
    mounts: list[Mount] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    # Keeps the container alive between execs; the agent runs in execs.
    command: list[str] = Field(default_factory=lambda: ["sleep", "infinity"])
    # None: the settings' worker_* limits.
    memory: str | None = None
    cpus: float | None = None
    pids: int | None = None
    user: str | None = None


class ExecResult(BaseModel):
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool = False


class WorkerInfo(BaseModel):
    worker_id: str
    task_id: str
    workflow_id: str
    status: str
    container_id: str
    stack: str | None = None


class WorkerNotFound(Exception):
    def __init__(self, worker_id: str) -> None:
        super().__init__(f"no Worker {worker_id}")
        self.worker_id = worker_id


def container_name(worker_id: str) -> str:
    return f"worker-{worker_id}"


def sidecar_name(worker_id: str, service: str) -> str:
    return f"sidecar-{worker_id}-{service}"


class SidecarNotFound(Exception):
    def __init__(self, worker_id: str, service: str) -> None:
        super().__init__(f"no {service} sidecar of Worker {worker_id}")


class ContainerRuntime:
    def __init__(self, client: docker.DockerClient, settings: Settings | None = None) -> None:
        self.client = client
        self.settings = settings or Settings()

    @classmethod
    def from_settings(cls, settings: Settings) -> ContainerRuntime:
        """A runtime on the settings' Docker API (``up`` gives its children DOCKER_HOST)."""
        if settings.docker_host:
            client = docker.DockerClient(base_url=settings.docker_host, timeout=120)
        else:
            client = docker.from_env(timeout=120)
        return cls(client, settings)

    # --- the public, async API ------------------------------------------------------------------

    async def create_worker(self, spec: WorkerSpec) -> str:
        """Create and start the Worker, or return the one already made for this worker_id."""
        return await asyncio.to_thread(self._create, spec)

    async def exec(
        self,
        worker_id: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        workdir: str = "/workspace",
        # Enforced inside the Worker: cancelling the caller could not stop the process there.
        timeout: float | None = None,  # noqa: ASYNC109
        on_line: OnLine | None = None,
        exclusive: str | None = None,
    ) -> ExecResult:
        """Run ``argv`` in the Worker; ``on_line`` gets each output line, on the event loop.

        With ``timeout`` (seconds) the command is ended (SIGTERM, then SIGKILL) when it runs
        longer, and the result says ``timed_out``. The Worker is started first if it stopped.
        ``exclusive`` (with ``timeout``) names a kind of command of which one runs at a time: an
        earlier one still running (its caller died, e.g. a killed worker process) is ended first.
        """
        emit = None
        if on_line is not None:
            loop = asyncio.get_running_loop()
            callback = on_line

            def emit(stream: str, line: str) -> None:
                loop.call_soon_threadsafe(callback, stream, line)

        return await asyncio.to_thread(
            self._exec, worker_id, argv, env, workdir, timeout, emit, exclusive
        )

    async def put_file(self, worker_id: str, path: str, content: bytes, mode: int = 0o644) -> None:
        """Write a file into the Worker (a relative ``path`` is under /workspace).

        Its directory must exist; the file belongs to the Worker's user.
        """
        await asyncio.to_thread(self._put_file, worker_id, path, content, mode)

    async def put_tree(
        self, worker_id: str, root: str, files: dict[str, tuple[bytes, int]]
    ) -> None:
        """Write ``files`` (paths relative to the absolute directory ``root``: content and mode)
        into the Worker in one archive, with ``root`` and every directory they need made as they
        go, all the Worker user's. ``root``'s parent must exist. For directories only the
        orchestrator writes (an agent's home): one call where a ``mkdir -p`` exec per directory
        costs ~0.1 s each, and a directory already there is given the same owner and mode."""
        await asyncio.to_thread(self._put_tree, worker_id, root, files)

    async def remove(self, worker_id: str) -> bool:
        """Remove the Worker and its sidecars, running or not; False if there was none."""
        return await asyncio.to_thread(self._remove, worker_id)

    async def start_sidecar(
        self, worker_id: str, service: str, image: str, env: dict[str, str] | None = None
    ) -> str:
        """Create and start the Worker's ``service`` sidecar in its network namespace, or find
        the one already made (a retried activity); returns its container id. The Worker must
        exist (WorkerNotFound)."""
        return await asyncio.to_thread(self._start_sidecar, worker_id, service, image, env or {})

    async def exec_sidecar(
        self,
        worker_id: str,
        service: str,
        argv: list[str],
        *,
        timeout: float,  # noqa: ASYNC109 (enforced inside the sidecar, as for a Worker)
    ) -> ExecResult:
        """Run ``argv`` in the Worker's ``service`` sidecar (SidecarNotFound without one)."""

        def ended(container: Container) -> ExecResult:
            why = f"the {service} sidecar is {container.status}: its main process ended"
            return ExecResult(exit_code=-1, stdout="", stderr=why)

        def run() -> ExecResult:
            container = self._get_sidecar(worker_id, service)
            container.reload()
            if container.status != "running":  # an exec cannot start
                return ended(container)
            try:
                return self._exec_in(container, argv, None, "/", timeout)
            except docker.errors.APIError:
                container.reload()
                if container.status != "running":  # it ended while the exec started
                    return ended(container)
                raise

        return await asyncio.to_thread(run)

    async def sidecar_logs(self, worker_id: str, service: str, tail: int = 40) -> str:
        """The last ``tail`` lines the sidecar's main process wrote ("" without a sidecar)."""

        def read() -> str:
            try:
                container = self._get_sidecar(worker_id, service)
            except SidecarNotFound:
                return ""
            return bytes(container.logs(tail=tail)).decode(errors="replace")

        return await asyncio.to_thread(read)

    async def list_sidecars(self, worker_id: str) -> list[str]:
        """The services whose sidecars the Worker has (running or not)."""
        return await asyncio.to_thread(
            lambda: sorted(service for service, _ in self._sidecars(worker_id))
        )

    async def list_workers(self) -> list[WorkerInfo]:
        return await asyncio.to_thread(self._list)

    @property
    def stack(self) -> str:
        return f"{self.settings.effective_temporal_address}/{self.settings.temporal_namespace}"

    async def reap(self, is_workflow_open: Callable[[str], Awaitable[bool]]) -> list[str]:
        """Remove the Workers whose workflow is closed, with their sidecars (also a sidecar
        whose Worker is already gone); return their worker ids."""
        removed = []
        for worker in await asyncio.to_thread(self._list, True):
            if worker.worker_id in removed:
                continue  # a Worker and its sidecars are listed each; one removal takes all
            if worker.stack is not None and worker.stack != self.stack:
                continue  # another stack's: its own reaper knows whether its workflow runs
            if await is_workflow_open(worker.workflow_id):
                continue
            if await self.remove(worker.worker_id):
                removed.append(worker.worker_id)
                log.info(
                    "worker_reaped", worker_id=worker.worker_id, workflow_id=worker.workflow_id
                )
        return removed

    # --- blocking work, run in threads ----------------------------------------------------------

    def _find(self, worker_id: str) -> Container | None:
        try:
            return self.client.containers.get(container_name(worker_id))
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as exc:
            if vanishing(exc):
                return None
            raise

    def _get(self, worker_id: str) -> Container:
        container = self._find(worker_id)
        if container is None:
            raise WorkerNotFound(worker_id)
        return container

    def _find_named(self, name: str) -> Container | None:
        try:
            return self.client.containers.get(name)
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as exc:
            if vanishing(exc):
                return None
            raise

    def _get_sidecar(self, worker_id: str, service: str) -> Container:
        container = self._find_named(sidecar_name(worker_id, service))
        if container is None:
            raise SidecarNotFound(worker_id, service)
        return container

    def _start_sidecar(self, worker_id: str, service: str, image: str, env: dict[str, str]) -> str:
        worker = self._get(worker_id)
        self._ensure_running(worker)  # the sidecar joins its namespace: it must be up
        worker.reload()
        name = sidecar_name(worker_id, service)
        existing = self._find_named(name)
        if existing is not None and _started_at(existing) < _started_at(worker):
            # The Worker started again since (stopped by `orchestrator down`, say): it has a new
            # network namespace, and a sidecar joins one when it is created. A new sidecar (and
            # a fresh database: a throwaway) joins the Worker's new one.
            log.info("sidecar_renewed", worker_id=worker_id, service=service)
            self._remove_named(name)
            existing = None
        if existing is None:
            try:
                existing = self.client.containers.create(
                    **self._sidecar_args(worker, name, service, image, env)
                )
                log.info("sidecar_created", worker_id=worker_id, service=service)
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: a concurrent retry created it first
                    raise
                existing = self._get_sidecar(worker_id, service)
        self._ensure_running(existing)
        return str(existing.id)

    def _sidecar_args(
        self, worker: Container, name: str, service: str, image: str, env: dict[str, str]
    ) -> dict[str, Any]:
        labels = worker.labels or {}
        host = worker.attrs.get("HostConfig") or {}
        return {
            "image": image,
            "name": name,
            # The Worker's own labels: its removal and the reaper find the sidecar by them.
            "labels": {
                **{
                    key: labels[key]
                    for key in (WORKER_ID, TASK_ID, WORKFLOW_ID, STACK)
                    if key in labels
                },
                MANAGED: "true",
                SERVICE: service,
            },
            "environment": env,
            # The Worker's network namespace: loopback only, shared with that Worker alone.
            "network_mode": f"container:{worker.id}",
            "read_only": True,
            "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={SIDECAR_TMPFS},mode=1777"},
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "mem_limit": SIDECAR_MEMORY,
            "nano_cpus": int(host.get("NanoCpus") or self.settings.worker_cpus * 1e9),
            "pids_limit": SIDECAR_PIDS,
            "detach": True,
        }

    def _create(self, spec: WorkerSpec) -> str:
        existing = self._find(spec.worker_id)
        if existing is None:
            try:
                existing = self.client.containers.create(**self._create_args(spec))
                log.info("worker_created", worker_id=spec.worker_id, task_id=spec.task_id)
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: a concurrent retry created it first
                    raise
                existing = self._get(spec.worker_id)
        self._ensure_running(existing)
        return str(existing.id)

    def _create_args(self, spec: WorkerSpec) -> dict[str, Any]:
        settings = self.settings
        user = spec.user or settings.worker_user
        volumes: dict[str, dict[str, str]] = {}
        if spec.workspace is not None:
            _grant(spec.workspace, user)
            volumes[str(spec.workspace.resolve())] = {"bind": "/workspace", "mode": "rw"}
        for mount in spec.mounts:
            if mount.worker_owns:
                _grant_dir(mount.source, user)
            mode = "ro" if mount.read_only else "rw"
            volumes[str(mount.source.resolve())] = {"bind": mount.target, "mode": mode}
        return {
            "image": spec.image,
            "command": spec.command,
            "name": container_name(spec.worker_id),
            "labels": {
                MANAGED: "true",
                WORKER_ID: spec.worker_id,
                TASK_ID: spec.task_id,
                WORKFLOW_ID: spec.workflow_id,
                STACK: self.stack,
            },
            "environment": spec.env,
            "volumes": volumes,
            "working_dir": "/workspace" if spec.workspace is not None else "/",
            "user": user,
            # Never a bridge network: what a Worker reaches comes through mounted sockets.
            "network_mode": "none",
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "mem_limit": spec.memory or settings.worker_memory,
            "nano_cpus": int((spec.cpus or settings.worker_cpus) * 1e9),
            "pids_limit": spec.pids or settings.worker_pids,
            # The idle command holds no state: stopping it needs no grace period.
            "stop_signal": "SIGKILL",
            "detach": True,
        }

    def _ensure_running(self, container: Container) -> None:
        container.reload()
        if container.status != "running":
            container.start()

    def _exec(
        self,
        worker_id: str,
        argv: list[str],
        env: dict[str, str] | None,
        workdir: str,
        timeout: float | None,
        emit: Callable[[str, str], None] | None,
        exclusive: str | None = None,
    ) -> ExecResult:
        return self._exec_in(self._get(worker_id), argv, env, workdir, timeout, emit, exclusive)

    def _exec_in(
        self,
        container: Container,
        argv: list[str],
        env: dict[str, str] | None,
        workdir: str,
        timeout: float | None,
        emit: Callable[[str, str], None] | None = None,
        exclusive: str | None = None,
    ) -> ExecResult:
        command = list(argv)
        if timeout is not None:
            command = ["timeout", "-k", str(KILL_AFTER), f"{timeout:g}", *command]
            if exclusive is not None:
                command = ["sh", "-c", _EXCLUSIVE, "sh", f"/tmp/orchestrator-{exclusive}.pid"]
                command += ["timeout", "-k", str(KILL_AFTER), f"{timeout:g}", *argv]
        api = self.client.api
        try:
            exec_id = api.exec_create(
                container.id, command, environment=env or {}, workdir=workdir
            )["Id"]
        except docker.errors.APIError:
            # Docker answers 409 when the container is not running, podman 500: look.
            container.reload()
            if container.status == "running":
                raise
            self._ensure_running(container)  # e.g. stopped by `orchestrator down`
            exec_id = api.exec_create(
                container.id, command, environment=env or {}, workdir=workdir
            )["Id"]
        started = time.monotonic()
        collected = {"stdout": _Lines("stdout", emit), "stderr": _Lines("stderr", emit)}
        for out, err in api.exec_start(exec_id, stream=True, demux=True):
            if out:
                collected["stdout"].feed(out)
            if err:
                collected["stderr"].feed(err)
        for lines in collected.values():
            lines.close()
        code = api.exec_inspect(exec_id).get("ExitCode")
        exit_code = -1 if code is None else int(code)
        timed_out = (
            timeout is not None
            and exit_code in TIMED_OUT_CODES
            and time.monotonic() - started >= timeout
        )
        return ExecResult(
            exit_code=exit_code,
            stdout=collected["stdout"].text(),
            stderr=collected["stderr"].text(),
            timed_out=timed_out,
        )

    def _put_file(self, worker_id: str, path: str, content: bytes, mode: int) -> None:
        target = PurePosixPath(path)
        if not target.is_absolute():
            target = PurePosixPath("/workspace") / target
        self._put_archive(worker_id, target.parent, {target.name: (content, mode)}, ())

    def _put_tree(self, worker_id: str, root: str, files: dict[str, tuple[bytes, int]]) -> None:
        top = PurePosixPath(root)
        if not top.is_absolute() or top.parent == top:
            raise ValueError(f"not an absolute directory below /: {root}")
        named = {str(top.name / PurePosixPath(path)): entry for path, entry in files.items()}
        directories = {top.name} | {
            str(parent)
            for name in named
            for parent in PurePosixPath(name).parents
            if str(parent) != "."
        }
        self._put_archive(worker_id, top.parent, named, sorted(directories))

    def _put_archive(
        self,
        worker_id: str,
        at: PurePosixPath,
        files: dict[str, tuple[bytes, int]],
        directories: Iterable[str],
    ) -> None:
        container = self._get(worker_id)
        uid, gid = _ids(container.attrs["Config"].get("User") or self.settings.worker_user)
        now = int(time.time())

        def entry(name: str, mode: int) -> tarfile.TarInfo:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = mode, now
            info.uid, info.gid = uid or 0, gid or 0
            return info

        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name in directories:  # parents first: sorted
                info = entry(name, 0o755)
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            for name, (content, mode) in files.items():
                info = entry(name, mode)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        if not container.put_archive(str(at), buffer.getvalue()):
            raise RuntimeError(f"could not write {', '.join(files)} under {at} in {worker_id}")

    def _remove(self, worker_id: str) -> bool:
        # The sidecars first: a container whose network namespace another one uses is not
        # removed before that one is.
        removed = False
        for service, name in self._sidecars(worker_id):
            if self._remove_named(name):
                removed = True
                log.info("sidecar_removed", worker_id=worker_id, service=service)
        if self._remove_named(container_name(worker_id)):
            removed = True
            log.info("worker_removed", worker_id=worker_id)
        return removed

    def _remove_named(self, name: str) -> bool:
        # By name, with no inspect first: podman may answer an inspect with a 500 "does not
        # exist" for a container that is still there; only a real 404 means there is none.
        try:
            self.client.api.remove_container(name, force=True)
        except docker.errors.NotFound:
            return False
        return True

    def _sidecars(self, worker_id: str) -> list[tuple[str, str]]:
        """(service, container name) of the Worker's sidecars, from the list alone (no
        inspect: podman may answer one with a 500 for a container it is removing)."""
        found = self.client.api.containers(
            all=True, filters={"label": [f"{WORKER_ID}={worker_id}", f"{MANAGED}=true"]}
        )
        sidecars = []
        for entry in found:
            service = (entry.get("Labels") or {}).get(SERVICE)
            names = [str(n).lstrip("/") for n in entry.get("Names") or []]
            if service and names:
                sidecars.append((service, names[0]))
        return sidecars

    def _list(self, with_sidecars: bool = False) -> list[WorkerInfo]:
        """The managed Workers; ``with_sidecars``: their sidecars too (each by its Worker's
        ids, the reaper's view)."""
        found = self.client.containers.list(all=True, filters={"label": f"{MANAGED}=true"})
        if not with_sidecars:
            found = [c for c in found if SERVICE not in (c.labels or {})]
        return [
            WorkerInfo(
                worker_id=c.labels.get(WORKER_ID, ""),
                task_id=c.labels.get(TASK_ID, ""),
                workflow_id=c.labels.get(WORKFLOW_ID, ""),
                status=c.status,
                container_id=c.id,
                stack=c.labels.get(STACK),
            )
            for c in found
        ]


class _Lines:
    """Collects one output stream and hands each complete line to ``emit`` as it arrives."""

    def __init__(self, stream: str, emit: Callable[[str, str], None] | None) -> None:
        self.stream = stream
        self.emit = emit
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.parts: list[str] = []
        self.pending = ""

    def feed(self, data: bytes) -> None:
        self._add(self.decoder.decode(data))

    def close(self) -> None:
        self._add(self.decoder.decode(b"", final=True))
        if self.pending and self.emit is not None:
            self.emit(self.stream, self.pending)
        self.pending = ""

    def _add(self, text: str) -> None:
        if not text:
            return
        self.parts.append(text)
        *complete, self.pending = (self.pending + text).split("\n")
        if self.emit is not None:
            for line in complete:
                self.emit(self.stream, line)

    def text(self) -> str:
        return "".join(self.parts)


_TIMESTAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?")


def _started_at(container: Container) -> datetime:
    """When the container last started (the runtimes give nanoseconds; Python takes micro)."""
    raw = str((container.attrs.get("State") or {}).get("StartedAt") or "")
    match = _TIMESTAMP.match(raw)
    if match is None:
        return datetime.min.replace(tzinfo=UTC)
    seconds, fraction, zone = match.groups()
    zone = "+00:00" if zone in (None, "Z") else zone
    return datetime.fromisoformat(f"{seconds}.{(fraction or '0')[:6].ljust(6, '0')}{zone}")


def _ids(user: str) -> tuple[int | None, int | None]:
    """The numeric uid and gid of a ``uid:gid`` user, None where it is a name."""
    uid, _, gid = user.partition(":")
    return (
        int(uid) if uid.isdigit() else None,
        int(gid) if gid.isdigit() else (int(uid) if uid.isdigit() and not gid else None),
    )


def _grant_dir(path: Path, user: str) -> None:
    """Give the Worker's user one directory (as :func:`_grant`, not what is inside)."""
    uid, gid = _ids(user)
    if os.geteuid() == 0 and uid is not None:
        os.chown(path, uid, gid if gid is not None else uid)


def _grant(workspace: Path, user: str) -> None:
    """Give the Worker's user the workspace: without user namespaces its uid is the host's.

    Only when we are root (the embedded stack's podman is rootful); otherwise the files are
    already the invoking user's and the runtime maps them.
    """
    uid, gid = _ids(user)
    if os.geteuid() != 0 or uid is None:
        return
    gid = gid if gid is not None else uid
    for root, dirs, files in os.walk(workspace):
        os.chown(root, uid, gid)
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)
