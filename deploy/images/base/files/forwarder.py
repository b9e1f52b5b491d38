#!/usr/bin/env python3
"""Expose Unix sockets on loopback TCP ports, inside a Worker that has no network.

    python3 forwarder.py --listen 127.0.0.1:8788 --socket /run/orchestrator/gateway.sock
    python3 forwarder.py --route 127.0.0.1:8788=/run/orchestrator/gateway.sock
                         --route 127.0.0.1:8789=/run/orchestrator-api/api.sock   (one command)

Each ``--route HOST:PORT=SOCKET`` is one listener (repeatable); ``--listen``/``--socket`` is one
more route (``--socket`` without ``--listen`` listens on 127.0.0.1:8788). A port that cannot be
bound ends the forwarder with status 1 before it serves anything.

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


Route = tuple[tuple[str, int], str]  # ((host, port), socket path)


def parse_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def parse_route(value: str) -> Route:
    listen, sep, socket_path = value.partition("=")
    if not sep or not socket_path:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT=SOCKET, got {value!r}")
    return parse_listen(listen), socket_path


async def main(routes: list[Route]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    forwarders: list[Forwarder] = []
    servers: list[asyncio.Server] = []
    try:
        for (host, port), socket_path in routes:
            forwarder = Forwarder(socket_path)
            server = await asyncio.start_server(forwarder.handle, host, port, backlog=1024)
            forwarders.append(forwarder)
            servers.append(server)
            log(f"listening on {host}:{port} -> {socket_path}")
        await stop.wait()
    finally:
        for server in servers:
            server.close()
        await asyncio.gather(*(forwarder.stop() for forwarder in forwarders))
    log("stopped")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--route",
        type=parse_route,
        action="append",
        default=[],
        help="HOST:PORT=SOCKET: listen on HOST:PORT, forward to SOCKET (repeatable)",
    )
    parser.add_argument("--listen", type=parse_listen, help="with --socket: one more route")
    parser.add_argument("--socket", help="the Unix socket --listen forwards to")
    args = parser.parse_args()
    routes: list[Route] = list(args.route)
    if args.socket:
        routes.append((args.listen or ("127.0.0.1", 8788), args.socket))
    elif args.listen:
        parser.error("--listen needs --socket")
    if not routes:
        parser.error("nothing to forward: give --route HOST:PORT=SOCKET or --socket")
    listens = [listen for listen, _ in routes]
    if len(set(listens)) != len(listens):
        parser.error("two routes listen on the same HOST:PORT")
    try:
        asyncio.run(main(routes))
    except OSError as exc:  # a port that cannot be bound
        log(f"cannot listen: {exc}")
        sys.exit(1)


if __name__ == "__main__":
    cli()
