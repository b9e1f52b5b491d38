"""Is an app up: its health URL asked over HTTP until it answers 2xx or time runs out; when its
TLS certificate runs out."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import httpx
from cryptography import x509

# How often a health URL is asked while the app is not up yet.
HEALTH_INTERVAL_S = 0.5


async def check_health(
    url: str,
    within_s: float,
    on_wait: Callable[[str], object] = lambda problem: None,
    *,
    connect_to: str | None = None,
    ca_pem: str | None = None,
    any_status: bool = False,
) -> str | None:
    """None once ``url`` answers 2xx (``any_status``: any status below 500, for an app that
    declares no health path: it serves HTTP); else, after ``within_s``, what went wrong last.
    ``on_wait`` hears each problem before the next try (an activity heartbeats with it).

    ``connect_to``: the address to reach the URL's host at (a name no DNS here knows yet), as
    curl's ``--resolve``: TLS still checks the certificate for the URL's name. ``ca_pem``: the
    only CA trusted (a server edge's own), else the system's."""
    deadline = time.monotonic() + within_s
    problem = "no answer"
    request_url = httpx.URL(url)
    extensions: dict[str, Any] = {}
    headers: dict[str, str] = {}
    if connect_to:
        name = request_url.host
        request_url = request_url.copy_with(host=connect_to)
        extensions["sni_hostname"] = name
        headers["Host"] = name if request_url.port is None else f"{name}:{request_url.port}"
    async with httpx.AsyncClient(timeout=5.0, verify=tls_context(ca_pem)) as client:
        while True:
            try:
                response = await client.get(request_url, headers=headers, extensions=extensions)
                if response.is_success or (any_status and response.status_code < 500):
                    return None
                problem = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if time.monotonic() >= deadline:
                return problem
            on_wait(problem)
            await asyncio.sleep(HEALTH_INTERVAL_S)


@functools.lru_cache(maxsize=64)
def tls_context(ca_pem: str | None = None) -> ssl.SSLContext:
    """The client context trusting ``ca_pem`` alone, else the system's CAs: made once each
    (making one reads the CA store, ~20 ms; checks of hundreds of apps share it)."""
    if ca_pem:
        return ssl.create_default_context(cadata=ca_pem)
    return ssl.create_default_context()


@functools.cache
def _reading_context() -> ssl.SSLContext:
    """A client context that verifies nothing: for reading a certificate's dates only."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class Certificate(NamedTuple):
    not_before: datetime
    not_after: datetime

    def expiring(self, now: datetime, within: timedelta) -> bool:
        """Whether it runs out within ``within``, or within the last third of its own lifetime
        when that is shorter: a short-lived certificate (an edge's internal one lasts hours) is
        renewed when a third of it is left, so only one past that has failed to renew."""
        lifetime = self.not_after - self.not_before
        return self.not_after - now < min(within, lifetime / 3)

    def days_left(self, now: datetime) -> float:
        return round((self.not_after - now).total_seconds() / 86400, 2)


async def served_certificate(
    url: str, *, connect_to: str | None = None, timeout_s: float = 5.0
) -> Certificate | None:
    """The validity of the certificate served at the https ``url`` (reached at ``connect_to``
    when given, named by the URL's host); None for an http URL or when nothing answers TLS. Not
    verified here: what matters is when it runs out, whoever signed it."""
    parsed = httpx.URL(url)
    if parsed.scheme != "https" or not parsed.host:
        return None
    context = _reading_context()
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(
                connect_to or parsed.host,
                parsed.port or 443,
                ssl=context,
                server_hostname=parsed.host,
            ),
            timeout_s,
        )
    except (OSError, TimeoutError, ssl.SSLError):
        return None
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    if not der:
        return None
    certificate = x509.load_der_x509_certificate(der)
    return Certificate(certificate.not_valid_before_utc, certificate.not_valid_after_utc)
