"""Serve an ASGI stand-in with uvicorn on a free loopback port, in a thread of the test process."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from testing.servers import free_port


@contextlib.contextmanager
def serve(app: Any, timeout: float = 10.0, host: str = "127.0.0.1") -> Iterator[str]:
    """Run ``app`` until the block ends; yields its base URL ``http://<host>:<port>``."""
    port = free_port()
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"standin-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the stand-in on port {port} did not start")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the stand-in on port {port} did not start within {timeout}s")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
