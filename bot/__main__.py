"""``python -m bot``: the Telegram bot, one process, JSON logs, ready file once updates flow."""

from __future__ import annotations

import asyncio
import signal
import sys

from bot.service import SERVICE, serve
from core.logging import configure_logging, get_logger
from core.readiness import clear_ready
from core.settings import Settings

log = get_logger("bot")


async def _run(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(settings, stop)


def main() -> None:
    settings = Settings()
    configure_logging(SERVICE, settings.log_level, settings.logs_dir)
    clear_ready(settings, SERVICE)
    if settings.telegram_token is None:
        log.error("bot_not_configured", reason="ORCHESTRATOR_TELEGRAM_TOKEN is not set")
        sys.exit(2)
    asyncio.run(_run(settings))
    log.info("bot stopped")


if __name__ == "__main__":
    main()
