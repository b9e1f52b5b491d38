"""How a long-running service process starts and stops (``python -m bridges``, the worker).

Logging goes to the home's log folder as JSON, SIGTERM and SIGINT ask ``serve`` to stop through
an event, and the process leaves with ``os._exit``: the Temporal core runtime can abort at
interpreter exit (sdk-python #300), which would turn a clean stop into a crash report.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import NoReturn

from core.logging import configure_logging, get_logger
from core.settings import Settings

Serve = Callable[[Settings, asyncio.Event], Awaitable[None]]


def run_service(name: str, serve: Serve) -> NoReturn:
    settings = Settings()
    configure_logging(name, settings.log_level, settings.logs_dir)
    log = get_logger(name)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(settings, stop)

    status = 0
    try:
        asyncio.run(main())
    except Exception:
        log.exception(f"{name} failed")
        status = 1
    logging.shutdown()
    os._exit(status)
