"""The egress proxy: what a sealed Worker meets when something in it reaches for the internet.

A Worker has no network. Its forwarder exposes this proxy on ``127.0.0.1:3128`` and the Worker's
``HTTP_PROXY``/``HTTPS_PROXY`` point there, so ``pip`` given a URL, ``git clone https://...`` or
``curl`` ask it instead of failing with a bare connection error. It tunnels ``CONNECT host:port``
and forwards absolute-form plain-HTTP requests (``GET http://host/path``), but only to the hosts
the operator allows (``ORCHESTRATOR_EGRESS_ALLOWLIST``); any other host gets a ``403`` that says
so and names the setting. Every request, allowed or not, is logged with its task.

One ``EgressProxy`` per task, served on ``egress.sock`` beside the task's gateway socket and
opened and closed with it (``gateway.server``). Written on asyncio streams, with h11 reading and
writing HTTP/1.1: an ASGI server cannot hand over the connection a ``CONNECT`` tunnels.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import urlsplit

import h11

from core.logging import get_logger

log = get_logger("gateway.egress")

SOCKET_NAME = "egress.sock"
SETTING = "ORCHESTRATOR_EGRESS_ALLOWLIST"
# A request line and headers longer than this are refused (431) before anything is dialled.
MAX_HEAD_BYTES = 16 * 1024
# A client that has not sent a whole request head in this long is dropped (408).
HEAD_TIMEOUT_S = 30.0
CHUNK = 64 * 1024
# Headers meant for the hop to this proxy, never passed on (RFC 9110 7.6.1); ``host`` is set
# again from the URL asked for.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"upgrade",
        b"host",
    }
)
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


class BadRequest(Exception):
    """A request this proxy cannot act on; the message is the answer's body."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def normal_host(host: str) -> str | None:
    """``host`` as the allowlist compares it (lower case, no trailing dot, an IP address in its
    canonical form), or None when it is neither a host name nor an IP address."""
    host = host.strip().lower().removesuffix(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).compressed
    labels = host.split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return None
    return host


def allowlist_entry(entry: str) -> str:
    """One entry of the allowlist setting, normalised: a host name, an IP address, or
    ``*.example.com`` (every name under example.com, not example.com itself)."""
    wildcard = entry.strip().startswith("*.")
    host = normal_host(entry.strip().removeprefix("*.") if wildcard else entry)
    if host is None or (wildcard and _is_ip(host)):
        raise ValueError(
            f"{SETTING}: {entry.strip()!r} is not a host name, an IP address or *.domain "
            "(no scheme, port or path)"
        )
    return f"*.{host}" if wildcard else host


def parse_allowlist(value: str | Iterable[str]) -> list[str]:
    """The setting's value (comma-separated, or a list) as normalised entries; empty ones are
    skipped, a bad one raises ``ValueError`` naming it."""
    entries = value.split(",") if isinstance(value, str) else value
    return [allowlist_entry(entry) for entry in entries if entry.strip()]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Allowlist:
    """The hosts Workers may reach: exact names or addresses, and ``*.domain`` wildcards."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        normal = parse_allowlist(entries)
        self.exact = frozenset(e for e in normal if not e.startswith("*."))
        # "*.example.com" matches what ends in ".example.com".
        self.suffixes = tuple(e[1:] for e in normal if e.startswith("*."))

    def allows(self, host: str) -> bool:
        name = normal_host(host)
        if name is None:
            return False
        return name in self.exact or (not _is_ip(name) and name.endswith(self.suffixes))


@dataclass(frozen=True)
class Target:
    """Where a request asks to go: a tunnel (``CONNECT``) or one plain-HTTP request."""

    method: str
    host: str  # normalised
    port: int
    path: bytes = b""  # origin-form, for a plain-HTTP request

    @property
    def tunnel(self) -> bool:
        return self.method == "CONNECT"

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if (not self.tunnel and self.port == 80) else f"{host}:{self.port}"


def parse_target(request: h11.Request) -> Target:
    """Where ``request`` goes, or ``BadRequest`` saying what a proxy request looks like."""
    method = request.method.decode("ascii", "replace")
    raw = request.target.decode("ascii", "replace")
    if method == "CONNECT":
        host, sep, port = raw.rpartition(":")
        port_number = _port_of(port if sep else "", raw)  # first: "pypi.org" lacks the port
        return Target(method, _host_of(host, raw), port_number)
    if not raw.lower().startswith("http://"):
        if raw.lower().startswith("https://"):
            raise BadRequest(f"{method} {raw}: an https URL goes through CONNECT host:443")
        raise BadRequest(
            f"{method} {raw}: this is an HTTP proxy; ask for an absolute URL "
            "(GET http://host/path) or CONNECT host:port"
        )
    url = urlsplit(raw)
    try:
        url_port = 80 if url.port is None else url.port
    except ValueError:  # not a number, or past 65535
        url_port = 0
    if not 0 < url_port < 65536:
        raise BadRequest(f"{raw}: the port is not a number from 1 to 65535")
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    return Target(method, _host_of(url.hostname or "", raw), url_port, path.encode())


def _host_of(host: str, raw: str) -> str:
    name = normal_host(host)
    if name is None:
        raise BadRequest(f"{raw}: {host!r} is not a host name or an IP address")
    return name


def _port_of(port: str, raw: str) -> int:
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise BadRequest(f"CONNECT {raw}: expected host:port with a port from 1 to 65535")
    return int(port)


def answer(status: int, body: str, reason: str | None = None) -> bytes:
    """A whole response that ends the connection, with a short plain-text body; the reason
    phrase is the status's own unless given."""
    data = body.encode() + b"\n"
    reason = HTTPStatus(status).phrase if reason is None else reason
    reason = reason.encode("ascii", "replace").decode().replace("\r", " ").replace("\n", " ")
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(data)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + data


def refusal(target: Target) -> bytes:
    message = (
        f"egress to {target.host} refused: the host is not in the egress allowlist of this "
        f"orchestrator; an operator may add it to {SETTING}"
    )
    # The reason phrase says it too: some clients show only the status line of a refused
    # CONNECT (pip: "Tunnel connection failed: 403 <reason>"; git not even the reason).
    return answer(403, message, f"{target.host} is not in the egress allowlist ({SETTING})")


class EgressProxy:
    """The proxy of one task: ``start`` it on a bound Unix socket, ``stop`` it with the task."""

    def __init__(self, task_id: str, allowlist: Allowlist, connect_timeout: float = 10.0) -> None:
        self.task_id = task_id
        self.allowlist = allowlist
        self.connect_timeout = connect_timeout
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_unix_server(self.handle, sock=sock, limit=CHUNK)

    def serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def stop(self) -> None:
        """Stop listening and end the open tunnels (a Worker's next try meets a closed socket,
        as it does for the gateway)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=5)

    # --- one client connection ------------------------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, h11.ProtocolError):
            pass  # the client went away or broke HTTP mid-way: nothing left to tell it
        except asyncio.CancelledError:
            # stop(): the connection ends here. Not re-raised: asyncio's streams (3.11) report a
            # handler that ends cancelled as an error in a callback.
            pass
        except Exception:
            log.exception("egress proxy failed", task_id=self.task_id)
        finally:
            self._connections.discard(task)
            await _close(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        try:
            async with asyncio.timeout(HEAD_TIMEOUT_S):
                request = await _next_event(client, reader, MAX_HEAD_BYTES)
            if not isinstance(request, h11.Request):
                return  # closed before asking anything
            target = parse_target(request)
        except TimeoutError:
            await self._bad(writer, BadRequest("no complete request head in time", 408))
            return
        except h11.RemoteProtocolError as exc:
            hint = exc.error_status_hint
            message = f"request head over {MAX_HEAD_BYTES} bytes" if hint == 431 else str(exc)
            await self._bad(writer, BadRequest(f"malformed request: {message}", hint))
            return
        except BadRequest as exc:
            await self._bad(writer, exc)
            return
        fields: dict[str, object] = {"task_id": self.task_id, "method": target.method}
        fields |= {"host": target.host, "port": target.port}
        if not self.allowlist.allows(target.host):
            log.warning("egress refused", outcome="refused", **fields)
            await _send(writer, refusal(target))
            return
        upstream = await self._dial(target, writer, fields)
        if upstream is None:
            return
        log.info("egress allowed", outcome="allowed", **fields)
        started = time.monotonic()
        sent, received = 0, 0
        try:
            if target.tunnel:
                sent, received = await self._tunnel(client, reader, writer, *upstream)
            else:
                sent, received = await self._forward(
                    request, target, client, reader, writer, *upstream
                )
        finally:
            await _close(upstream[1])
            log.info(
                "egress done",
                seconds=round(time.monotonic() - started, 3),
                bytes_sent=sent,
                bytes_received=received,
                **fields,
            )

    async def _bad(self, writer: asyncio.StreamWriter, exc: BadRequest) -> None:
        log.warning(
            "egress bad request",
            outcome="bad request",
            task_id=self.task_id,
            status=exc.status,
            error=str(exc)[:300],
        )
        await _send(writer, answer(exc.status, str(exc)))

    async def _dial(
        self, target: Target, writer: asyncio.StreamWriter, fields: Mapping[str, object]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A connection to the allowed host, or None once the client has been told why not."""
        where = f"{target.host}:{target.port}"
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(target.host, target.port, limit=CHUNK),
                self.connect_timeout,
            )
        except TimeoutError:
            status = 504
            message = f"egress to {where} allowed, but no connection in {self.connect_timeout:g}s"
        except OSError as exc:
            status = 502
            message = f"egress to {where} allowed, but the connection failed: {exc}"
        log.warning("egress failed", outcome="unreachable", error=message, **fields)
        await _send(writer, answer(status, message))
        return None

    async def _tunnel(
        self,
        client: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream_r: asyncio.StreamReader,
        upstream_w: asyncio.StreamWriter,
    ) -> tuple[int, int]:
        """Answer the CONNECT, then copy bytes both ways until both sides have ended."""
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        early, _ = client.trailing_data  # what the client sent after its CONNECT (a TLS hello)
        if early:
            upstream_w.write(early)
        sent, received = await asyncio.gather(_pipe(reader, upstream_w), _pipe(upstream_r, writer))
        return len(early) + sent, received

    async def _forward(
        self,
        request: h11.Request,
        target: Target,
        client: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream_r: asyncio.StreamReader,
        upstream_w: asyncio.StreamWriter,
    ) -> tuple[int, int]:
        """One plain-HTTP request to the host, its answer back; the connection ends after it
        (a next request on it could name another host)."""
        upstream = h11.Connection(h11.CLIENT)
        headers = [(b"host", target.authority.encode())]
        headers += [*_end_to_end(request.headers), (b"connection", b"close")]
        upstream_w.write(
            upstream.send(h11.Request(method=request.method, target=target.path, headers=headers))
        )
        body = asyncio.create_task(_send_body(client, reader, upstream, upstream_w))
        try:
            received = await _relay_response(upstream, upstream_r, client, writer)
        finally:
            body.cancel()  # the answer is complete (or failed): no more of the request matters
            (sent,) = await asyncio.gather(body, return_exceptions=True)
        return (sent if isinstance(sent, int) else 0), received


def _end_to_end(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The headers meant for the origin: without the hop-by-hop ones, nor those the request's
    ``Connection`` header names."""
    pairs = list(headers)
    named = {
        token.strip().lower()
        for name, value in pairs
        if name == b"connection"
        for token in value.split(b",")
    }
    return [(name, value) for name, value in pairs if name not in HOP_BY_HOP | named]


async def _send_body(
    client: h11.Connection,
    reader: asyncio.StreamReader,
    upstream: h11.Connection,
    upstream_w: asyncio.StreamWriter,
) -> int:
    """The request's body, from the client to the host, framed again by h11. When the client
    breaks off, the connection to the host is closed, which ends the wait for its answer."""
    sent = 0
    try:
        while True:
            event = await _next_event(client, reader)
            if isinstance(event, h11.Data):
                sent += len(event.data)
                upstream_w.write(upstream.send(event))
            elif isinstance(event, h11.EndOfMessage):
                upstream_w.write(upstream.send(h11.EndOfMessage()))
            else:  # the client closed before its body ended
                raise ConnectionResetError("the client ended its request early")
            await upstream_w.drain()
            if isinstance(event, h11.EndOfMessage):
                return sent
    except (ConnectionError, OSError, h11.ProtocolError):
        upstream_w.close()
        raise


async def _relay_response(
    upstream: h11.Connection,
    upstream_r: asyncio.StreamReader,
    client: h11.Connection,
    writer: asyncio.StreamWriter,
) -> int:
    """The host's answer, back to the client (framed for the client's HTTP version)."""
    received = 0
    while True:
        event = await _next_event(upstream, upstream_r)
        if isinstance(event, h11.InformationalResponse | h11.Response):
            headers = [*_end_to_end(event.headers), (b"connection", b"close")]
            kind = type(event)
            event = kind(status_code=event.status_code, headers=headers, reason=event.reason)
        elif isinstance(event, h11.Data):
            received += len(event.data)
        elif isinstance(event, h11.EndOfMessage):
            event = h11.EndOfMessage()
        else:  # the host closed before it answered
            raise ConnectionResetError("the host closed the connection without an answer")
        writer.write(client.send(event))
        await writer.drain()
        if isinstance(event, h11.EndOfMessage):
            return received


async def _next_event(
    conn: h11.Connection, reader: asyncio.StreamReader, size: int = CHUNK
) -> object:
    """The next h11 event, reading ``size`` bytes at a time as long as it needs more (h11
    refuses an unfinished head past its limit, so a head is read in pieces no longer)."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await reader.read(size))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """Copy until EOF, then pass the EOF on (a half-close); returns the bytes copied."""
    copied = 0
    try:
        while data := await reader.read(CHUNK):
            copied += len(data)
            writer.write(data)
            await writer.drain()  # never hold more than one chunk per direction
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass
    return copied


async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        writer.write(data)
        await writer.drain()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()
