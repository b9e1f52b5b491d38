"""``orchestrator up``: start the embedded stack as child processes, keep them alive, stop them.

Order: Temporal dev server, Redis, then a one-shot ``stack.prepare`` (migrations, admin key,
search attributes), then the API, the Temporal worker and the bridges. Each must pass its health
probe before the next starts. A child that crashes later is restarted with a backoff. SIGINT or
SIGTERM stops them all in reverse order. Children die with the supervisor even on ``kill -9``
(PR_SET_PDEATHSIG), and each runs in its own process group so a Ctrl-C in the terminal reaches the
supervisor only, which then stops them in order.

Run it in the foreground with ``orchestrator up`` or detached with ``orchestrator up --detach``
(which starts ``python -m stack.supervisor`` in a new session and waits until it is ready).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

from core.logging import configure_logging, get_logger
from core.secret_files import private_dir
from core.settings import Settings
from stack import local_target, podman, registries, services, state
from stack.services import External, Service

log = get_logger("stack.supervisor")

STOP_TIMEOUT = 10.0  # per child, between SIGTERM and SIGKILL
PREPARE_TIMEOUT = 180.0
TICK = 0.1
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0  # a child that ran this long before crashing starts its backoff afresh

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


class StartupFailed(Exception):
    pass


class Interrupted(Exception):
    pass


class StackError(Exception):
    """Something the CLI reports as it is: the message names the service and its log."""


def _die_with(parent: int) -> Callable[[], None]:
    """Runs in the child between fork and exec: SIGTERM it when the supervisor dies."""

    def preexec() -> None:
        if _libc is not None:
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the supervisor died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


@dataclass
class Child:
    service: Service
    proc: subprocess.Popen[bytes] | None = None
    create_time: float | None = None
    started_at: str | None = None
    spawned: float = 0.0
    restarts: int = 0
    crashes_in_row: int = 0
    restart_at: float | None = None
    healthy: bool = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def to_dict(self, settings: Settings) -> dict[str, Any]:
        svc = self.service
        return {
            "name": svc.name,
            "external": False,
            "pid": self.pid,
            "create_time": self.create_time,
            "address": svc.address,
            "log": svc.log_files(settings)[0],
            "logs": svc.log_files(settings),
            "probe": asdict(svc.probe),
            "healthy": self.healthy,
            "restarts": self.restarts,
            "started_at": self.started_at,
        }


class Supervisor:
    def __init__(self, settings: Settings, echo: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.echo = echo or (lambda _message: None)
        self.children: list[Child] = []
        self.externals: list[External] = services.externals(settings)
        self.phase = state.STARTING
        self.error: str | None = None
        self.started_at = state.now_iso()
        self._stopping = False
        self._force = False
        self._lock: IO[str] | None = None
        self._env = services.child_env(settings)

    # --- the whole life -------------------------------------------------------------------------

    def run(self, on_ready: Callable[[Supervisor], None] | None = None) -> int:
        """Start, supervise until told to stop, stop. Returns the exit status."""
        settings = self.settings
        make_private_home(settings)
        configure_logging("supervisor", settings.log_level, settings.logs_dir)
        if not self._acquire_lock():
            self.echo(f"The stack in {settings.home_dir} is already managed by another supervisor.")
            return 0
        self._install_signal_handlers()
        self._reap_stale()
        try:
            self._start_all()
        except StartupFailed as exc:
            self.error = str(exc)
            self.phase = state.FAILED
            log.error("stack_failed", error=self.error)
            self.echo(f"[red]error:[/red] {self.error}")
            self._stop_all()
            self._write()
            return 1
        except Interrupted:
            self._shutdown()
            return 0
        self.phase = state.READY
        self._write()
        log.info("stack_ready", services=[c.service.name for c in self.children])
        if on_ready is not None:
            on_ready(self)
        self._supervise()
        self._shutdown()
        return 0

    def _shutdown(self) -> None:
        self.echo("Stopping the stack ...")
        self.phase = state.STOPPING
        self._write()
        self._stop_all()
        state.remove_state(self.settings)
        log.info("stack_stopped")
        self.echo("Stopped.")

    def _acquire_lock(self) -> bool:
        path = self.settings.home_dir / "run" / "supervisor.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "w")  # held open for the whole life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._lock = handle
        return True

    def _install_signal_handlers(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._stopping:
            self._force = True  # a second Ctrl-C: do not wait for graceful exits
        self._stopping = True
        log.info("stop_requested", signal=signal.Signals(signum).name)

    def _reap_stale(self) -> None:
        """Children left by a supervisor that died without stopping them (we hold the lock now)."""
        old = state.read_state(self.settings)
        if old is None:
            return
        left = [p for p in state.owned_processes(old) if state.alive(p[0], p[1])]
        if left:
            log.warning("reaping_stale_children", pids=[p[0] for p in left])
            state.kill_leftovers(left, STOP_TIMEOUT)
        stop_workers(self.settings, old)
        state.remove_state(self.settings)

    # --- starting -------------------------------------------------------------------------------

    def _start_all(self) -> None:
        self._write()
        for service in services.infrastructure(self.settings):
            self._start(service)
        self._prepare()
        for service in services.applications(self.settings):
            self._start(service)

    def _start(self, service: Service) -> None:
        for port in service.ports:
            if not _port_free(self.settings.host, port):
                raise StartupFailed(
                    f"{service.name} cannot start: port {port} on {self.settings.host} is in use "
                    f"(another stack? set {_port_setting(self.settings, port)} to another port)"
                )
        child = Child(service)
        self.children.append(child)
        self._spawn(child)
        self.echo(f"  starting {service.name} ...")
        self._wait_healthy(child)
        self.echo(f"  [green]✓[/green] {service.name} {service.address}".rstrip())

    def _spawn(self, child: Child) -> None:
        service = child.service
        if service.ready_file:
            Path(service.ready_file).unlink(missing_ok=True)
        if service.name == services.REDIS:
            services.write_redis_config(self.settings)
        if service.name == registries.NPM_CACHE:
            registries.write_verdaccio_config(self.settings)
        if service.cwd is not None:
            service.cwd.mkdir(parents=True, exist_ok=True)  # a cache's directory, at first start
        if service.name == services.CONTAINERS:
            podman.write_config(services.podman_root(self.settings))
            # A socket file left by a killed service would make the new one fail to bind.
            services.docker_socket(self.settings).unlink(missing_ok=True)
        out = self._open_out(service.out_file(self.settings), service.name)
        try:
            child.proc = subprocess.Popen(
                service.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**self._env, **service.env},
                cwd=service.cwd,
                umask=-1 if service.umask is None else service.umask,
                process_group=0,
                preexec_fn=_die_with(os.getpid()),
            )
        except OSError as exc:
            raise StartupFailed(f"{service.name} cannot start: {exc}") from exc
        finally:
            out.close()
        child.create_time = state.create_time(child.proc.pid)
        child.started_at = state.now_iso()
        child.spawned = time.monotonic()
        child.healthy = False
        child.restart_at = None
        log.info("service_started", service=service.name, pid=child.proc.pid, argv=service.argv)
        self._write()

    def _open_out(self, path: Path, name: str) -> IO[bytes]:
        out = open(path, "ab")  # handed to the child, closed after
        out.write(f"--- {state.now_iso()} supervisor starts {name}\n".encode())
        out.flush()
        return out

    def _wait_healthy(self, child: Child) -> None:
        service = child.service
        assert child.proc is not None
        deadline = time.monotonic() + service.start_timeout
        while True:
            if self._stopping:
                raise Interrupted
            code = child.proc.poll()
            if code is not None:
                raise StartupFailed(
                    self._failure(service, f"exited with code {code} while starting")
                )
            if service.probe.check(child.proc.pid):
                child.healthy = True
                self._write()
                return
            if time.monotonic() > deadline:
                raise StartupFailed(
                    self._failure(service, f"is not healthy after {service.start_timeout:.0f}s")
                )
            time.sleep(TICK)

    def _failure(self, service: Service, what: str) -> str:
        files = service.log_files(self.settings)
        message = f"{service.name} {what}; see {' and '.join(files)}"
        last = state.tail(files[-1]) or state.tail(files[0])
        return f"{message}\n{last}" if last else message

    def _prepare(self) -> None:
        """Migrations, the admin key and the search attributes, in a short-lived child."""
        self.echo("  preparing the database and Temporal ...")
        out_path = self.settings.logs_dir / "prepare.out"
        out = self._open_out(out_path, "prepare")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "stack.prepare"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env,
                umask=0o077,  # it makes the database
                process_group=0,
                preexec_fn=_die_with(os.getpid()),
            )
        finally:
            out.close()
        deadline = time.monotonic() + PREPARE_TIMEOUT
        while proc.poll() is None:
            if self._stopping or time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                if self._stopping:
                    raise Interrupted
                raise StartupFailed(f"prepare did not finish in {PREPARE_TIMEOUT:.0f}s")
            time.sleep(TICK)
        if proc.returncode != 0:
            raise StartupFailed(
                f"prepare (migrations, admin key, search attributes) failed; see {out_path}\n"
                f"{state.tail(out_path)}"
            )
        log.info("stack_prepared", database=services._redact(self.settings.effective_database_url))
        self.echo("  [green]✓[/green] database migrated, admin key ready")

    # --- supervising ----------------------------------------------------------------------------

    def _supervise(self) -> None:
        while not self._stopping:
            now = time.monotonic()
            for child in self.children:
                self._tend(child, now)
            time.sleep(TICK)

    def _tend(self, child: Child, now: float) -> None:
        name = child.service.name
        if child.proc is not None and child.proc.poll() is not None:
            code = child.proc.returncode
            ran = now - child.spawned
            child.crashes_in_row = 0 if ran > STABLE_AFTER else child.crashes_in_row + 1
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, child.crashes_in_row - 1))
            child.proc = None
            child.create_time = None
            child.healthy = False
            child.restart_at = now + delay
            log.warning(
                "service_exited", service=name, code=code, ran_s=round(ran, 1), restart_in_s=delay
            )
            self.echo(
                f"[yellow]{name} exited with code {code}; restarting in {delay:.0f}s[/yellow]"
            )
            self._write()
        elif child.proc is None and child.restart_at is not None and now >= child.restart_at:
            child.restarts += 1
            try:
                self._spawn(child)
            except StartupFailed as exc:
                child.restart_at = now + BACKOFF_MAX
                log.error("service_restart_failed", service=name, error=str(exc))
                return
            log.warning("service_restarted", service=name, pid=child.pid, restarts=child.restarts)
        elif child.proc is not None and not child.healthy and child.service.probe.check(child.pid):
            child.healthy = True
            log.info("service_healthy", service=name, pid=child.pid)
            self.echo(f"[green]{name} is back (pid {child.pid})[/green]")
            self._write()

    # --- stopping -------------------------------------------------------------------------------

    def _stop_all(self) -> None:
        for child in reversed(self.children):
            self._stop(child)
            self._write()

    def _stop(self, child: Child) -> None:
        proc = child.proc
        child.restart_at = None
        if proc is None:
            return
        name = child.service.name
        if name == services.CONTAINERS:
            # Its containers (and their conmon monitors) outlive the service: stop them first.
            try:
                podman.stop_containers(services.podman_root(self.settings))
            except (OSError, subprocess.SubprocessError) as exc:
                log.warning("containers_not_stopped", error=str(exc))
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while proc.poll() is None and time.monotonic() < deadline and not self._force:
                time.sleep(0.02)
            if proc.poll() is None:
                log.warning("service_killed", service=name, pid=proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Anything the child left in its process group goes with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        log.info("service_stopped", service=name, pid=proc.pid, code=proc.returncode)
        child.proc = None
        child.healthy = False

    # --- the state file -------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        settings = self.settings
        external = any(e.name == services.TEMPORAL for e in self.externals)
        return {
            "version": 1,
            "supervisor_pid": os.getpid(),
            "supervisor_create_time": state.create_time(os.getpid()),
            "phase": self.phase,
            "error": self.error,
            "started_at": self.started_at,
            "home": str(settings.home_dir),
            "logs_dir": str(settings.logs_dir),
            "api_url": settings.effective_api_url,
            "api_key_file": str(settings.api_key_file),
            "temporal_address": settings.effective_temporal_address,
            "temporal_ui_url": (
                settings.temporal_ui_url if external else settings.effective_temporal_ui_url
            ),
            "services": [
                *[{**e.to_dict(), "external": True, "pid": None} for e in self.externals],
                *[c.to_dict(settings) for c in self.children],
            ],
        }

    def _write(self) -> None:
        state.write_state(self.settings, self.state())


def make_private_home(settings: Settings) -> None:
    """The home and its logs readable by their owner only: the databases, the keys, the queues'
    file and what the services log are in there."""
    private_dir(settings.home_dir)
    private_dir(settings.logs_dir)


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        # As the servers themselves bind: a port in TIME_WAIT is free to them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _port_setting(settings: Settings, port: int) -> str:
    names = ("api_port", "temporal_port", "temporal_ui_port", "redis_port")
    for name in (*names, "pypi_cache_port", "npm_cache_port"):
        if getattr(settings, name) == port:
            return f"ORCHESTRATOR_{name.upper()}"
    return "the port settings"


# --- control from the CLI: up --detach, down, status ---------------------------------------------


def start_detached(settings: Settings, timeout: float = 300.0) -> tuple[dict[str, Any], bool]:
    """Start a supervisor in a new session and wait until the stack is ready.

    Returns (state, started): ``started`` is False when a stack was already running.
    """
    current = state.read_state(settings)
    if state.is_up(current):
        assert current is not None
        return wait_ready(settings, current["supervisor_pid"], None, timeout), False
    make_private_home(settings)
    out_path = settings.logs_dir / "supervisor.out"
    with open(out_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stack.supervisor"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        return wait_ready(settings, proc.pid, proc, timeout), True
    except (StackError, KeyboardInterrupt):
        if proc.poll() is None:  # stuck, or the user gave up: leave nothing half-started
            stop(settings)
        if proc.poll() is None:  # it had not written its state yet
            proc.terminate()
            proc.wait(STOP_TIMEOUT * 6)
        raise


def wait_ready(
    settings: Settings, pid: int, proc: subprocess.Popen[bytes] | None, timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    out_path = settings.logs_dir / "supervisor.out"
    while True:
        current = state.read_state(settings)
        ours = current is not None and current.get("supervisor_pid") == pid
        if ours and current is not None:
            if current.get("phase") == state.READY and state.supervisor_alive(current):
                return current
            if current.get("phase") == state.FAILED:
                raise StackError(current.get("error") or "the stack failed to start")
        exited = proc.poll() if proc is not None else (None if state.alive(pid) else -1)
        if exited is not None:
            if state.is_up(current) and current is not None:  # another `up` won the race
                return wait_ready(settings, current["supervisor_pid"], None, timeout)
            raise StackError(
                f"the supervisor exited with code {exited} before the stack was ready; "
                f"see {out_path} and {settings.logs_dir / 'supervisor.log'}\n{state.tail(out_path)}"
            )
        if time.monotonic() > deadline:
            raise StackError(
                f"the stack was not ready after {timeout:.0f}s; see the logs in {settings.logs_dir}"
            )
        time.sleep(TICK)


def stop(settings: Settings, timeout: float = 90.0) -> dict[str, Any]:
    """Stop the supervisor and every child; SIGKILL what is left at the deadline. The local
    deploy target (`orchestrator server local`) stops too."""
    target = local_target.stop(settings)
    current = state.read_state(settings)
    if current is None:
        return {"was_running": False, "stopped": [], "killed": [], "local_target": target}
    procs = state.owned_processes(current)
    running = [p for p in procs if state.alive(p[0], p[1])]
    if state.supervisor_alive(current):
        # The supervisor stops its children in order; only then are they ours to kill.
        state.signal_process(
            current["supervisor_pid"], current.get("supervisor_create_time"), signal.SIGTERM, False
        )
        left = state.wait_gone(procs, timeout)
        killed = state.kill_leftovers([p for p in procs if p[0] in left], 1.0) if left else []
    else:
        killed = state.kill_leftovers(running, STOP_TIMEOUT)
        stop_workers(settings, current)  # the supervisor could not stop them itself
    state.remove_state(settings)
    return {
        "was_running": bool(running),
        "stopped": [p[0] for p in running],
        "killed": killed,
        "local_target": target,
    }


def stop_workers(settings: Settings, current: dict[str, Any]) -> None:
    """Stop the containers of a container service the stack ran (not of a DOCKER_HOST given)."""
    ran = any(
        s.get("name") == services.CONTAINERS and not s.get("external")
        for s in current.get("services", [])
    )
    if ran:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            podman.stop_containers(services.podman_root(settings))


def service_states(current: dict[str, Any] | None, settings: Settings) -> list[dict[str, Any]]:
    """Each service: running / unhealthy / stopped (external / unreachable for given servers)."""
    if current is None:
        planned = [*services.infrastructure(settings), *services.applications(settings)]
        rows = [
            {"name": e.name, "state": "external", "address": e.address, "pid": None}
            for e in services.externals(settings)
        ]
        return rows + [
            {
                "name": s.name,
                "state": "stopped",
                "address": s.address,
                "pid": None,
                "log": s.log_files(settings)[0],
            }
            for s in planned
        ]
    rows = []
    for svc in current.get("services", []):
        probe = services.Probe(**svc.get("probe", {"kind": "none"}))
        if svc.get("external"):
            status = "external" if probe.check() else "unreachable"
            pid = None
        else:
            pid = svc.get("pid")
            if not state.alive(pid, svc.get("create_time")):
                status, pid = "stopped", None
            else:
                status = "running" if probe.check(pid) else "unhealthy"
        rows.append(
            {
                "name": svc["name"],
                "state": status,
                "address": svc.get("address", ""),
                "pid": pid,
                "log": svc.get("log"),
                "restarts": svc.get("restarts", 0),
            }
        )
    return rows


def status(settings: Settings) -> dict[str, Any]:
    current = state.read_state(settings)
    up = state.is_up(current)
    return {
        "running": up,
        "phase": (current or {}).get("phase") if up else "stopped",
        "error": (current or {}).get("error"),
        "supervisor_pid": (current or {}).get("supervisor_pid") if up else None,
        "home": str(settings.home_dir),
        "logs_dir": str(settings.logs_dir),
        "api_url": (current or {}).get("api_url", settings.effective_api_url),
        "temporal_ui_url": (current or {}).get(
            "temporal_ui_url", settings.effective_temporal_ui_url
        ),
        # A dead supervisor's file still names its services: stopped, unless a PID lives on.
        "services": service_states(current, settings),
    }


def main() -> None:
    """Entry of the detached supervisor (``python -m stack.supervisor``)."""
    from rich.text import Text

    def echo(message: str) -> None:
        print(Text.from_markup(message).plain, flush=True)

    code = Supervisor(Settings(), echo=echo).run()
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
