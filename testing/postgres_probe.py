"""A PostgreSQL client in a page of Python's standard library, for Workers that have ``python3``
and no driver (the Worker image today): run in a Worker, it connects to ``$DATABASE_URL`` over
the real wire protocol (v3: startup, trust / cleartext / md5 authentication, one simple query)
and prints each row's columns joined by ``|``; exits non-zero with the server's message on an
error. Tests write :data:`PROBE` into a Worker as a file and run ``python3 probe.py "SQL"``.
"""

from __future__ import annotations

PROBE = r"""import hashlib
import os
import socket
import struct
import sys
from urllib.parse import unquote, urlsplit

url = urlsplit(os.environ["DATABASE_URL"])
user, password = unquote(url.username or ""), unquote(url.password or "")
try:
    sock = socket.create_connection((url.hostname, url.port or 5432), timeout=10)
except OSError as exc:
    sys.exit(f"cannot connect to {url.hostname}:{url.port or 5432}: {exc}")


def read(size):
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            sys.exit("the server closed the connection")
        data += chunk
    return data


def receive():
    head = read(5)
    return head[:1], read(struct.unpack("!I", head[1:])[0] - 4)


def send(kind, payload):
    sock.sendall(kind + struct.pack("!I", len(payload) + 4) + payload)


def fail(data):
    fields = {part[:1]: part[1:] for part in data.split(b"\0") if part}
    sys.exit("error: " + fields.get(b"M", data).decode(errors="replace"))


startup = struct.pack("!I", 3 << 16) + b"".join(
    key + b"\0" + value.encode() + b"\0"
    for key, value in ((b"user", user), (b"database", url.path.lstrip("/")))
) + b"\0"
sock.sendall(struct.pack("!I", len(startup) + 4) + startup)
while True:
    kind, data = receive()
    if kind == b"R":
        code = struct.unpack("!I", data[:4])[0]
        if code == 3:
            send(b"p", password.encode() + b"\0")
        elif code == 5:
            inner = hashlib.md5(password.encode() + user.encode()).hexdigest().encode()
            send(b"p", b"md5" + hashlib.md5(inner + data[4:8]).hexdigest().encode() + b"\0")
        elif code != 0:
            sys.exit(f"unsupported authentication method {code}")
    elif kind == b"E":
        fail(data)
    elif kind == b"Z":
        break
send(b"Q", sys.argv[1].encode() + b"\0")
while True:
    kind, data = receive()
    if kind == b"D":
        count, at, row = struct.unpack("!H", data[:2])[0], 2, []
        for _ in range(count):
            size = struct.unpack("!i", data[at : at + 4])[0]
            at += 4
            row.append("" if size < 0 else data[at : at + size].decode())
            at += max(size, 0)
        print("|".join(row))
    elif kind == b"E":
        fail(data)
    elif kind == b"Z":
        break
send(b"X", b"")
"""
