"""``python -m api``: the API under uvicorn, one process, JSON logs, ready file once listening.

The same app listens on TCP (``settings.host:settings.api_port``) and on the Unix socket
``settings.api_socket`` (``<home>/run/api/api.sock``), which PO Workers reach through a mount.
Workers run as another uid, so the socket's directory is 0755 and the socket 0666; the API key is
what guards it, as on the TCP port. The ready file is written once both listen.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import stat
import sys
from pathlib import Path
from types import FrameType

import uvicorn

from api.app import create_app
from core.logging import configure_logging, get_logger
from core.readiness import clear_ready, mark_ready
from core.settings import Settings

log = get_logger("api")


class _Server(uvicorn.Server):
    """Marks the service ready only once the socket listens, not when the app has started."""

    def __init__(self, config: uvicorn.Config, settings: Settings) -> None:
        super().__init__(config)
        self.settings = settings

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            mark_ready(self.settings, "api")


# sun_path holds 108 bytes with the terminating NUL.
UNIX_PATH_MAX = 107


class SocketPathError(Exception):
    pass


def bind_unix(path: Path) -> socket.socket:
    """A Unix stream socket bound at ``path`` (a stale socket file there is removed first)."""
    size = len(os.fsencode(path))
    if size > UNIX_PATH_MAX:
        raise SocketPathError(
            f"the API socket path {path} is {size} bytes, over the {UNIX_PATH_MAX} a Unix socket "
            "allows: set ORCHESTRATOR_HOME to a shorter directory"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o755)  # Workers (another uid) must reach the socket inside
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        path.chmod(0o666)
    except OSError:
        sock.close()
        raise
    return sock


def _remove_stale(path: Path) -> None:
    """Remove a socket file no process serves (one left by a killed API); refuse a live one."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketPathError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
    else:
        raise SocketPathError(f"another process serves {path}: is another API running?")
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _unlink_if_ours(path: Path, inode: int) -> None:
    """Remove the socket file unless another process has bound the path since."""
    with contextlib.suppress(OSError):
        if path.lstat().st_ino == inode:
            path.unlink()


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    # uvicorn re-raises the signal it stopped on once it has shut down; the default action
    # would end the process with -SIGTERM. A finished graceful stop is a clean exit.
    raise SystemExit(0)


def main() -> None:
    settings = Settings()
    configure_logging("api", settings.log_level, settings.logs_dir)
    clear_ready(settings, "api")
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.api_port,
        # Logging is ours (JSON lines); the access log comes from the app's middleware.
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    # Both bound here, before uvicorn serves them; bind_socket exits 1 when the port is taken.
    tcp = config.bind_socket()
    try:
        unix = bind_unix(settings.api_socket)
    except (SocketPathError, OSError) as exc:
        tcp.close()
        log.error("cannot serve the API socket", error=str(exc))
        print(f"api: cannot serve on {settings.api_socket}: {exc}", file=sys.stderr)
        sys.exit(1)
    inode = settings.api_socket.lstat().st_ino
    server = _Server(config, settings)
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        # uvicorn handles SIGTERM and SIGINT: stop accepting, drain, shut down
        server.run(sockets=[tcp, unix])
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        clear_ready(settings, "api")
        _unlink_if_ours(settings.api_socket, inode)
        log.info("api stopped")


if __name__ == "__main__":
    main()
