"""The gateway as a host process runs it: one Unix socket per task, one shared upstream client.

Lifecycle. A ``Gateway`` lives as long as the process that serves it (the Temporal worker):
create it at start-up, ``async with`` it (or ``aclose()``) at shut-down. ``open(task_id,
socket_path, budget)`` binds the task's socket and serves it from this process's event loop
until ``close(task_id)``; an activity calls it before the task's agent runs, and again before
each agent turn (it is idempotent and cheap when the socket is already served). Mount the
socket's *directory* into the Worker, not the socket file: a socket bound again after a restart
is a new file, which a file bind mount would not follow.

Beside the gateway's socket, ``open`` serves the task's egress proxy (``gateway.egress``) on
``egress.sock`` in the same directory, with the same lifecycle: opened, checked and bound again
with the gateway's, closed with it.

When the process dies, nothing serves the socket any more: the Worker's next model call fails
(the forwarder inside closes the connection) and the agent's CLI retries or gives up. The
activity that Temporal retries on another (or the restarted) worker calls ``open`` again, which
replaces the dead socket file, and reads the task's totals back from ``model_usage``, so the
budget still holds. Calls already written to the ledger are never lost; a call in flight when
the process died is not counted (its answer never reached the agent either).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx
import uvicorn

from core.contracts.agents import Budget, TaskUsage
from core.logging import get_logger
from db.engine import Database
from db.tables import ModelUsage
from db.usage import load_usage, save_call
from gateway import egress
from gateway.app import ForTask, Proxy, build_app
from gateway.prices import PriceTable
from gateway.settings import GatewaySettings

log = get_logger("gateway")

SOCKET_NAME = "gateway.sock"
# sockaddr_un holds 108 bytes with the terminating NUL.
MAX_SOCKET_PATH = 107


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server inside a process that owns its signals (the worker's stop event)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class _Served:
    socket_path: Path
    inode: int
    server: _EmbeddedServer
    task: asyncio.Task[None]
    budget: Budget
    usage: TaskUsage
    egress: egress.EgressProxy
    egress_path: Path
    egress_inode: int
    pending: set[asyncio.Task[None]] = field(default_factory=set)


def socket_path_for(run_dir: Path, task_id: str) -> Path:
    """The conventional place of a task's socket: ``<run_dir>/gateway/<task_id>/gateway.sock``."""
    return run_dir / "gateway" / task_id / SOCKET_NAME


class Gateway:
    def __init__(
        self,
        db: Database,
        settings: GatewaySettings | None = None,
        *,
        prices: PriceTable | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.db = db
        self.settings = settings or GatewaySettings()
        self.prices = prices or PriceTable(self.settings.gateway_prices)
        self.http = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(
                self.settings.gateway_read_timeout,
                connect=self.settings.gateway_connect_timeout,
            ),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=20),
            follow_redirects=False,
            trust_env=False,  # the upstream is what the settings say, not a proxy variable
        )
        self.app = build_app(Proxy(self.settings, self.http, self.prices, self))
        self.egress_allowlist = egress.Allowlist(self.settings.egress_allowlist)
        self._served: dict[str, _Served] = {}
        self._lock = asyncio.Lock()
        self._draining: set[asyncio.Task[None]] = set()  # closed servers ending their requests

    async def __aenter__(self) -> Gateway:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- lifecycle ------------------------------------------------------------------------------

    async def open(
        self, task_id: str, socket_path: Path | str, budget: Budget | None = None
    ) -> None:
        """Serve the task's calls on ``socket_path``; idempotent, a new budget replaces the old."""
        path = Path(socket_path)
        budget = budget or Budget()
        async with self._lock:
            served = self._served.get(task_id)
            if served is not None and served.socket_path == path and self._alive(served):
                served.budget = budget
                return
            if served is not None:
                await self._stop(task_id, served)
            usage = await load_usage(self.db, task_id)
            self._served[task_id] = await self._serve(task_id, path, budget, usage)
        log.info(
            "gateway open",
            task_id=task_id,
            socket=str(path),
            egress_allowlist=len(self.settings.egress_allowlist),
            **budget.model_dump(),
        )

    async def close(self, task_id: str) -> None:
        """Stop serving the task; its socket file goes away. Closing twice is fine."""
        async with self._lock:
            served = self._served.get(task_id)
            if served is not None:
                await self._stop(task_id, served, drain=False)
                log.info("gateway closed", task_id=task_id)

    async def aclose(self) -> None:
        for task_id in list(self._served):
            await self.close(task_id)
        if self._draining:
            await asyncio.gather(*self._draining, return_exceptions=True)
        await self.http.aclose()

    def is_open(self, task_id: str) -> bool:
        served = self._served.get(task_id)
        return served is not None and self._alive(served)

    # --- what workflows ask ---------------------------------------------------------------------

    def usage(self, task_id: str) -> TaskUsage:
        """The task's totals as this process counts them (``load_usage`` reads the database)."""
        served = self._served.get(task_id)
        return served.usage.model_copy() if served else TaskUsage(task_id=task_id)

    def refused(self, task_id: str) -> str | None:
        """The message of the last call refused for the budget, or None."""
        served = self._served.get(task_id)
        return served.usage.last_refusal if served else None

    async def load_usage(self, task_id: str) -> TaskUsage:
        return await load_usage(self.db, task_id)

    # --- Accounts, for the proxy ----------------------------------------------------------------

    def serving(self, task_id: str) -> bool:
        return task_id in self._served

    def refusal(self, task_id: str) -> str | None:
        served = self._served.get(task_id)
        return served.budget.exhausted(served.usage) if served else None

    async def record(self, task_id: str, row: ModelUsage) -> None:
        # Fit the columns: PostgreSQL would refuse the whole row for one long string.
        row.model, row.endpoint = row.model[:200], row.endpoint[:100]
        row.error = row.error[:500] if row.error else row.error
        served = self._served.get(task_id)
        if served is not None:
            served.usage.add(row)  # in memory first: the next call's check must see it
        try:
            await save_call(self.db, row)
        except Exception:
            log.exception("model call not recorded", task_id=task_id, provider=row.provider)

    # --- sockets --------------------------------------------------------------------------------

    async def _serve(self, task_id: str, path: Path, budget: Budget, usage: TaskUsage) -> _Served:
        sock = _bind(path)
        inode = path.stat().st_ino
        config = uvicorn.Config(
            ForTask(self.app, task_id),
            lifespan="off",
            log_config=None,
            ws="none",
            timeout_graceful_shutdown=3,
        )
        server = _EmbeddedServer(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name=f"gateway:{task_id}")
        deadline = time.monotonic() + 10
        while not server.started:
            if task.done():
                sock.close()
                task.result()  # raises what stopped it
                raise RuntimeError(f"the gateway for task {task_id} stopped while starting")
            if time.monotonic() > deadline:
                task.cancel()
                sock.close()
                raise TimeoutError(f"the gateway for task {task_id} did not start")
            await asyncio.sleep(0.005)
        try:
            proxy, egress_path, egress_inode = await self._serve_egress(task_id, path)
        except BaseException:
            server.should_exit = True
            await asyncio.wait_for(task, timeout=10)
            raise
        return _Served(path, inode, server, task, budget, usage, proxy, egress_path, egress_inode)

    async def _serve_egress(
        self, task_id: str, gateway_path: Path
    ) -> tuple[egress.EgressProxy, Path, int]:
        path = gateway_path.with_name(egress.SOCKET_NAME)
        sock = _bind(path)
        proxy = egress.EgressProxy(
            task_id, self.egress_allowlist, self.settings.gateway_connect_timeout
        )
        try:
            await proxy.start(sock)
        except BaseException:
            sock.close()
            raise
        return proxy, path, path.stat().st_ino

    @staticmethod
    def _alive(served: _Served) -> bool:
        return (
            _same_file(served.socket_path, served.inode)
            and not served.task.done()
            and _same_file(served.egress_path, served.egress_inode)
            and served.egress.serving()
        )

    async def _stop(self, task_id: str, served: _Served, *, drain: bool = True) -> None:
        """Stop serving: the socket files go at once (unless someone bound those paths again
        since); the servers end after their open requests, awaited here, or with ``drain=False``
        in the background (``aclose`` waits for those), so a close costs no server tick."""
        self._served.pop(task_id, None)
        for path, inode in (
            (served.socket_path, served.inode),
            (served.egress_path, served.egress_inode),
        ):
            if _same_file(path, inode):
                with contextlib.suppress(OSError):
                    path.unlink()
        served.server.should_exit = True
        if drain:
            await self._drain(task_id, served)
            return
        draining = asyncio.create_task(self._drain(task_id, served))
        self._draining.add(draining)
        draining.add_done_callback(self._draining.discard)

    @staticmethod
    async def _drain(task_id: str, served: _Served) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(served.task), timeout=10)
        except TimeoutError:
            served.server.force_exit = True
            served.task.cancel()
        except Exception:
            log.exception("gateway server failed", task_id=task_id)
        await served.egress.stop()


def _same_file(path: Path, inode: int) -> bool:
    try:
        return path.stat().st_ino == inode
    except OSError:
        return False


def _bind_long(sock: socket.socket, path: Path) -> None:
    """Bind ``path``, also when it is longer than a socket address holds (a long home): then
    through this process's descriptor of its directory, ``/proc/self/fd/N/NAME``. Workers only
    ever connect through their mount of the directory, whose path is short."""
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        sock.bind(str(path))
        return
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        sock.bind(f"/proc/self/fd/{directory}/{path.name}")
    finally:
        os.close(directory)


def _bind(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left by a process that died: nothing serves it
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _bind_long(sock, path)
        # The Worker's user is not ours; the task's own directory is what limits who sees it.
        os.chmod(path, 0o666)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
