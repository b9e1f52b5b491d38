"""``python -m api``: the API under uvicorn, one process, JSON logs, ready file once listening."""

from __future__ import annotations

import signal
import socket
import sys
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
    server = _Server(config, settings)
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        server.run()  # uvicorn handles SIGTERM and SIGINT: stop accepting, drain, shut down
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        clear_ready(settings, "api")
        log.info("api stopped")


if __name__ == "__main__":
    main()
