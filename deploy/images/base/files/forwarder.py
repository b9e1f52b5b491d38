#!/usr/bin/env python3
"""Expose a Unix socket on a loopback TCP port, inside a Worker that has no network.

    python3 forwarder.py --listen 127.0.0.1:8788 --socket /run/orchestrator/gateway.sock

Each TCP connection gets its own connection to the socket and bytes flow both ways as they come
(no buffering beyond one read), so streamed (SSE) answers arrive as the gateway sends them. The
socket is dialled per connection: when the gateway behind it restarts and binds it again, the
next connection reaches the new one. SIGTERM or SIGINT stops listening, closes open connections
and exits 0. Standard library only: it runs on the image's python3.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

CHUNK = 64 * 1024


def log(message: str) -> None:
    print(f"forwarder: {message}", file=sys.stderr, flush=True)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then pass the EOF on (a half-close), so the peer sees the end too."""
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()  # back-pressure: never hold more than one chunk per direction
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


class Forwarder:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.connections: set[asyncio.Task[None]] = set()

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections.add(task)
        try:
            await self._forward(client_r, client_w)
        finally:
            self.connections.discard(task)

    async def _forward(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        try:
            upstream_r, upstream_w = await asyncio.open_unix_connection(self.socket_path)
        except OSError as exc:
            # The gateway is not there (yet, or any more): the client sees a closed connection.
            log(f"cannot reach {self.socket_path}: {exc}")
            await close(client_w)
            return
        try:
            await asyncio.gather(pipe(client_r, upstream_w), pipe(upstream_r, client_w))
        finally:
            await asyncio.gather(close(upstream_w), close(client_w))

    async def stop(self) -> None:
        for task in list(self.connections):
            task.cancel()
        if self.connections:
            await asyncio.wait(list(self.connections), timeout=5)


def parse_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


async def main(listen: tuple[str, int], socket_path: str) -> None:
    forwarder = Forwarder(socket_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    host, port = listen
    server = await asyncio.start_server(forwarder.handle, host, port, backlog=1024)
    log(f"listening on {host}:{port} -> {socket_path}")
    async with server:
        await stop.wait()
        server.close()
        await forwarder.stop()
    log("stopped")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 8788))
    parser.add_argument("--socket", required=True, help="the Unix socket to forward to")
    args = parser.parse_args()
    asyncio.run(main(args.listen, args.socket))


if __name__ == "__main__":
    cli()
