"""An HTTPS server on loopback with a certificate of the test's choosing (for example one that
runs out tomorrow), answering 200 to every GET."""

from __future__ import annotations

import contextlib
import ssl
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(name: str, not_before: datetime, not_after: datetime) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for ``name``, valid between the two times."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        # Its own authority: a client trusts it by taking it as its only CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"status": "ok"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def https_server(
    name: str, *, expires_in: timedelta, lifetime: timedelta
) -> Iterator[tuple[int, str]]:
    """Serve HTTPS on 127.0.0.1 with a certificate for ``name`` that runs out ``expires_in``
    from now and was issued ``lifetime`` before that; yields the port and the certificate
    (PEM: a client trusting it as its CA verifies the server)."""
    now = datetime.now(UTC)
    cert, key = self_signed(name, now + expires_in - lifetime, now + expires_in)
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "cert.pem").write_bytes(cert)
        (Path(directory) / "key.pem").write_bytes(key)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(Path(directory) / "cert.pem", Path(directory) / "key.pem")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], cert.decode()
    finally:
        server.shutdown()
        server.server_close()
