"""Is an app up: its health URL asked over HTTP until it answers 2xx or time runs out."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import Any

import httpx

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
    verify: ssl.SSLContext | bool = True
    if ca_pem:
        verify = ssl.create_default_context(cadata=ca_pem)
    async with httpx.AsyncClient(timeout=5.0, verify=verify) as client:
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
