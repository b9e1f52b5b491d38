"""One-shot setup before the services start: migrate, make the admin key, register attributes.

The supervisor runs this as a child (``python -m stack.prepare``) rather than in its own process:
the Temporal client leaves runtime threads behind, and a supervisor that forks children must not
have those (nor abort at exit with them, sdk-python #300).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from api.bootstrap import ensure_admin_key
from api.db import Database
from api.migrate import upgrade
from core.settings import Settings

TEMPORAL_DEADLINE = 60.0


async def register_search_attributes(settings: Settings) -> None:
    # Imported here: only this step needs the Temporal SDK.
    from core.temporal import connect, ensure_search_attributes

    deadline = time.monotonic() + TEMPORAL_DEADLINE
    while True:
        try:
            client = await connect(settings)
            await ensure_search_attributes(client, settings.temporal_namespace)
            return
        except Exception as exc:
            if _not_ours_to_change(exc):
                # Temporal Cloud registers attributes in its own console, not through this API.
                print(f"warning: search attributes not registered: {exc}", file=sys.stderr)
                return
            # A dev server that just opened its port may not serve yet; a real outage persists.
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"cannot register search attributes on Temporal at "
                    f"{settings.effective_temporal_address}: {exc}"
                ) from exc
            await asyncio.sleep(0.2)


def _not_ours_to_change(exc: Exception) -> bool:
    from temporalio.service import RPCError, RPCStatusCode

    return isinstance(exc, RPCError) and exc.status in (
        RPCStatusCode.PERMISSION_DENIED,
        RPCStatusCode.UNIMPLEMENTED,
    )


async def prepare(settings: Settings) -> None:
    settings.home_dir.mkdir(parents=True, exist_ok=True)
    # Alembic's env.py runs its own event loop, so keep it off this one.
    await asyncio.to_thread(upgrade, settings.effective_database_url)
    db = Database(settings.effective_database_url)
    try:
        await ensure_admin_key(db, settings.api_key_file)
    finally:
        await db.dispose()
    await register_search_attributes(settings)


def main() -> None:
    status = 0
    try:
        asyncio.run(prepare(Settings()))
    except Exception as exc:
        print(f"prepare failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
