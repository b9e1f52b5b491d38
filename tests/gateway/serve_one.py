"""A process that serves one task's gateway until killed: ``python -m tests.gateway.serve_one
DB_URL UPSTREAM_URL TASK_ID SOCKET MAX_TOKENS``. Prints ``ready`` once the socket is served."""

from __future__ import annotations

import asyncio
import sys

from core.contracts.agents import Budget
from db.engine import Database
from tests.gateway.conftest import make_gateway


async def main(db_url: str, upstream_url: str, task_id: str, socket: str, max_tokens: str) -> None:
    db = Database(db_url)
    async with make_gateway(db, upstream_url) as gateway:
        await gateway.open(task_id, socket, Budget(max_tokens=int(max_tokens)))
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
